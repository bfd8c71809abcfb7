"""Text units shared by the steps: words for Latin-script text, characters for Chinese (and other CJK).

One tokenisation serves MinHash shingles, decontamination n-grams, the quality classifier's features and the
semantic embeddings, so a mixed English–Chinese page is handled without knowing its language first:
every CJK character is a unit, every run of letters/digits in other scripts is a unit.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

CJK_RANGES = (
    "\u3040-\u30ff"  # kana (Japanese pages are told apart by the language identifier)
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uac00-\ud7af"  # hangul syllables
)
_CJK_CHAR = re.compile(f"[{CJK_RANGES}]")
_UNIT = re.compile(f"[{CJK_RANGES}]|[^\\W_{CJK_RANGES}]+", re.UNICODE)
_SPACES = re.compile(r"\s+")


def cjk_count(text: str) -> int:
    return len(_CJK_CHAR.findall(text))


def cjk_fraction(text: str) -> float:
    """Share of CJK characters among non-space characters."""
    n = len(text) - text.count(" ") - text.count("\n")
    return cjk_count(text) / n if n > 0 else 0.0


def normalize(text: str) -> str:
    """NFKC, lower case, whitespace collapsed: what exact dedup and decontamination compare."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def units(text: str, lower: bool = True) -> list[str]:
    """Words (Latin etc.) and single characters (CJK), punctuation dropped."""
    if lower:
        text = text.lower()
    return _UNIT.findall(unicodedata.normalize("NFKC", text) if not text.isascii() else text)


def ngrams(seq: list[str], n: int) -> list[tuple[str, ...]]:
    if len(seq) < n:
        return []
    return list(zip(*(seq[i:] for i in range(n))))


def stable_hash64(s: str) -> int:
    """A 64-bit hash that is the same in every process and Python run (unlike hash())."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


@lru_cache(maxsize=1)
def _jieba():
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def words(text: str, language: str) -> list[str]:
    """Word list for the heuristics: jieba words for Chinese, whitespace words otherwise."""
    if language == "zh":
        # HMM off: unknown words stay split into characters — a third faster, same counts for the rules
        return [w for w in _jieba().lcut(text, HMM=False) if w.strip()]
    return text.split()


_P64 = 0x100000001B3


def unit_hashes(us: list[str]) -> np.ndarray:
    """xxh64 of each unit (uint64), hashing each distinct unit once."""
    import numpy as np
    import xxhash

    cache: dict[str, int] = {}
    get = cache.get
    out = np.empty(len(us), dtype=np.uint64)
    for i, u in enumerate(us):
        h = get(u)
        if h is None:
            h = cache[u] = xxhash.xxh64_intdigest(u.encode("utf-8"))
        out[i] = h
    return out


def ngram_keys(h: np.ndarray, n: int) -> np.ndarray:
    """64-bit keys of all n-grams of a unit-hash sequence (polynomial rolling combination, vectorised)."""
    import numpy as np

    length = len(h) - n + 1
    if length <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.zeros(length, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            acc = acc * np.uint64(_P64) + h[i : i + length]
    return acc
