"""`skyloom tokenizer stats`: how well a tokenizer compresses real text, and how fast it encodes.

Per file: characters/token (the report's measure of Chinese efficiency), bytes/token, tokens per
whitespace word (meaningful for English), the share of byte-fallback tokens (characters the vocabulary
lacks), the unknown-token rate, round-trip failures (decode(encode(x)) ≠ x) and encode throughput with
`tokenizers` batch encoding.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from skyloom.tokenizer.loading import TextTokenizer
from skyloom.tokenizer.text import BYTE_TOKEN, han_share


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """A tokenizer directory, a `tokenizer.json`, or a SentencePiece `.model` (converted on the fly)."""
    p = Path(path)
    if p.suffix == ".model" and p.is_file():
        from tokenizers import Tokenizer

        from skyloom.tokenizer import spm

        model = spm.read_model(p)
        tok = Tokenizer.from_str(json.dumps(spm.to_tokenizer_json(model, str(p))))
        return TextTokenizer(tok, spm.special_pieces(model), p)
    return TextTokenizer.from_dir(p)


@dataclass
class FileStats:
    name: str
    documents: int
    characters: int
    bytes: int
    tokens: int
    words: int
    byte_fallback_tokens: int
    unknown_tokens: int
    roundtrip_failures: int
    seconds: float
    han_share: float

    @property
    def chars_per_token(self) -> float:
        return self.characters / max(self.tokens, 1)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)

    @property
    def tokens_per_word(self) -> float | None:
        """Only for mostly non-Chinese text: whitespace words mean nothing in Chinese."""
        return self.tokens / self.words if self.words and self.han_share < 0.1 else None

    @property
    def byte_fallback_share(self) -> float:
        return self.byte_fallback_tokens / max(self.tokens, 1)

    @property
    def unknown_rate(self) -> float:
        return self.unknown_tokens / max(self.tokens, 1)

    @property
    def chars_per_second(self) -> float:
        return self.characters / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in (
            "chars_per_token",
            "bytes_per_token",
            "tokens_per_word",
            "byte_fallback_share",
            "unknown_rate",
            "chars_per_second",
        ):
            out[key] = getattr(self, key)
        return out


def _special_ids(tok: TextTokenizer) -> tuple[set[int], int | None]:
    vocab = tok.tokenizer.get_vocab(with_added_tokens=True)
    byte_ids = {i for t, i in vocab.items() if BYTE_TOKEN.fullmatch(t)}
    unk = None
    model_unk = getattr(tok.tokenizer.model, "unk_token", None)
    for name in (model_unk, tok.special_tokens.get("unk_token")):
        if name and name in vocab:
            unk = vocab[name]
            break
    return byte_ids, unk


def measure(
    tok: TextTokenizer, texts: Sequence[str], name: str = "", batch_size: int = 1024, check_roundtrip: bool = True
) -> FileStats:
    """Statistics of `tok` on `texts` (the throughput is that of `encode_batch` over all of them)."""
    texts = list(texts)
    byte_ids, unk = _special_ids(tok)
    if texts:
        tok.encode_batch(texts[: min(8, len(texts))])  # warm-up: thread pool, caches
    started = time.perf_counter()
    encoded: list[list[int]] = []
    for i in range(0, len(texts), batch_size):
        encoded.extend(tok.encode_batch(texts[i : i + batch_size]))
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in encoded)
    fallback = sum(1 for ids in encoded for t in ids if t in byte_ids) if byte_ids else 0
    unknown = sum(ids.count(unk) for ids in encoded) if unk is not None else 0
    failures = sum(1 for text, ids in zip(texts, encoded) if tok.decode(ids) != text) if check_roundtrip else 0
    characters = sum(len(t) for t in texts)
    return FileStats(
        name=name,
        documents=len(texts),
        characters=characters,
        bytes=sum(len(t.encode("utf-8")) for t in texts),
        tokens=tokens,
        words=sum(len(t.split()) for t in texts),
        byte_fallback_tokens=fallback,
        unknown_tokens=unknown,
        roundtrip_failures=failures,
        seconds=seconds,
        han_share=han_share("".join(texts[:2000])) if texts else 0.0,
    )


COLUMNS = ("docs", "chars", "tokens", "chars/tok", "bytes/tok", "tok/word", "bytefb%", "unk%", "rt-fail", "kchar/s")


def format_row(label: str, s: FileStats) -> list[str]:
    tpw = f"{s.tokens_per_word:.3f}" if s.tokens_per_word is not None else "-"
    return [
        label,
        f"{s.documents:,}",
        f"{s.characters:,}",
        f"{s.tokens:,}",
        f"{s.chars_per_token:.3f}",
        f"{s.bytes_per_token:.3f}",
        tpw,
        f"{100 * s.byte_fallback_share:.2f}",
        f"{100 * s.unknown_rate:.2f}",
        str(s.roundtrip_failures),
        f"{s.chars_per_second / 1e3:,.0f}",
    ]


def format_table(rows: list[list[str]], header: Sequence[str]) -> str:
    widths = [max(len(r[i]) for r in [list(header), *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)
