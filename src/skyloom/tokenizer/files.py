"""Writing a tokenizer directory that `tokenizers`, `transformers` and skyloom's `TextTokenizer` all load.

tokenizer.json            the Hugging Face `tokenizers` pipeline (normalizer, pre-tokenizer, BPE, decoder)
tokenizer_config.json     tokenizer_class PreTrainedTokenizerFast and the bos/eos/pad/unk token strings
special_tokens_map.json   the same special tokens, plus the spare reserved ones
vocab_breakdown.json      the rows of the report's Table 2 with their counts and id ranges
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_tokenizer_dir(
    out: str | Path, doc: dict, specials: dict[str, str], reserved: list[str], breakdown: dict | None = None
) -> Path:
    """Write the four files; `doc` is validated by loading it with `tokenizers` first."""
    from tokenizers import Tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_str(json.dumps(doc))
    tmp = out / "tokenizer.json.tmp"
    tok.save(str(tmp))
    os.replace(tmp, out / "tokenizer.json")
    added = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
        for t in doc.get("added_tokens") or []
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **{key: specials[key] for key in SPECIAL_KEYS if key in specials},
        "additional_special_tokens": reserved,
        # Text is text: a literal "</s>" inside a document is not the end-of-sequence id.
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
        "added_tokens_decoder": added,
    }
    _write_json(out / "tokenizer_config.json", config)
    _write_json(
        out / "special_tokens_map.json",
        {**{key: specials[key] for key in SPECIAL_KEYS if key in specials}, "additional_special_tokens": reserved},
    )
    if breakdown is not None:
        _write_json(out / "vocab_breakdown.json", breakdown)
    return out
