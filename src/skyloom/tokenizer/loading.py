"""Load a tokenizer directory the way every stage uses it (packing, training, evaluation).

A tokenizer directory holds `tokenizer.json` (Hugging Face `tokenizers` format) and, usually,
`tokenizer_config.json` naming the special tokens (`bos_token`, `eos_token`, `pad_token`, `unk_token`),
as `transformers.PreTrainedTokenizerFast` expects. Checkpoints carry a copy so evaluation finds it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skyloom.tokenizer.fast_encode import FastEncoder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab_breakdown.json")
SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the special-token ids skyloom needs; no special tokens are added on encode."""

    def __init__(self, tokenizer, special_tokens: dict[str, str], source: Path):
        self.tokenizer = tokenizer
        # Text is text: a literal "</s>" or "<s>" inside a document is encoded as characters, never as the
        # special id (packing appends EOS itself). Same as `split_special_tokens` in transformers.
        self.tokenizer.encode_special_tokens = True
        self.source = source
        self.special_tokens = special_tokens
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        raw = (source / "tokenizer.json").read_bytes() if (source / "tokenizer.json").is_file() else b""
        self.tokenizer_id: str = hashlib.sha256(raw).hexdigest()[:16]
        self._fast: FastEncoder | None | bool = False  # False: not looked at yet

    @classmethod
    def from_dir(cls, path: str | Path) -> TextTokenizer:
        """Open a tokenizer directory (or a `tokenizer.json` file directly)."""
        from tokenizers import Tokenizer

        p = Path(path)
        directory = p.parent if p.is_file() else p
        file = p if p.is_file() else p / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no tokenizer.json (train one with `skyloom tokenizer train`)")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{file}: cannot load tokenizer: {err}") from None
        special: dict[str, str] = {}
        cfg_file = directory / "tokenizer_config.json"
        if cfg_file.is_file():
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            for key in SPECIAL_KEYS:
                value = cfg.get(key)
                if isinstance(value, dict):
                    value = value.get("content")
                if isinstance(value, str):
                    special[key] = value
        return cls(tok, special, directory)

    def _special_id(self, key: str) -> int | None:
        token = self.special_tokens.get(key)
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def eos_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def bos_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def pad_id(self) -> int | None:
        return self._special_id("pad_token")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], fast: bool = True) -> list[list[int]]:
        """Ids of many texts. `fast`: skyloom's own tokenizers go through `FastEncoder` (same ids, about twice the
        speed per core once warm: pre-split, cached pieces; one core); others, and `fast=False`, through
        `tokenizers`' batch encoding in parallel (RAYON_NUM_THREADS threads), offsets not computed."""
        if fast and self._fast is False:
            from skyloom.tokenizer.fast_encode import FastEncoder

            self._fast = FastEncoder.for_tokenizer(self.tokenizer)
        if fast and self._fast:
            return self._fast.encode_batch(list(texts))
        encode = getattr(self.tokenizer, "encode_batch_fast", None) or self.tokenizer.encode_batch  # tokenizers ≥ 0.20
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def copy_files_to(self, out_dir: str | Path) -> None:
        """Copy the tokenizer files next to a checkpoint so the checkpoint is self-contained."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            src = self.source / name
            if src.is_file():
                shutil.copyfile(src, out / name)
