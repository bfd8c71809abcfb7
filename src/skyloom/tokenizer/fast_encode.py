"""Batch encoding for skyloom's own tokenizers: the same ids as `tokenizers`, about twice as fast per core once
its cache has seen a few MB of text (benchmarks/bench_tokenizer.py --speed-only).

Why: `tokenizers` spends most of its time per piece of text (normalized strings, alignments, `Encoding`
objects), not in BPE, and most pieces of real text were seen before. This path

1. cuts each document into the pieces skyloom's pre-tokenizer makes (`PRETOKENIZE_PATTERN` + single digits),
   with Python's `re` and an equivalent pattern that is exact on a vetted character set (ASCII, Latin, Greek,
   Cyrillic, Han, kana, CJK and fullwidth punctuation, common symbols and emoji; a test compares it with the
   Oniguruma split for every such character) -- a document holding any other character is encoded whole by
   `tokenizers`, as before;
2. cuts pieces further between two characters that no vocabulary entry holds side by side: a BPE merge only
   ever creates an entry, so none can join across such a point, and the lowest-rank-first order of merges on
   one side does not depend on the other side -- so the ids of the parts, joined, are the ids of the piece.
   Chinese runs fall apart into word-sized parts this way, which repeat;
3. looks every part up in a cache (part -> ids); only parts never seen go through `tokenizers` (no
   pre-tokenizer, one BPE word each, batched).

It applies only where all of that holds: no normalizer, exactly skyloom's pre-tokenizer, a BPE model without
dropout, `ignore_merges`, affixes or unknown-token fusing that could fire (byte fallback with all 256 byte
tokens), no truncation/padding, and only special added tokens (never matched: `encode_special_tokens`).
`FastEncoder.for_tokenizer` returns None otherwise. The Python part runs on one core; the misses use
`tokenizers`' thread pool.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from itertools import accumulate, chain

from skyloom.tokenizer.text import HAN_BLOCKS

# Blocks whose assigned letters, numbers, punctuation and symbols are vetted against the Oniguruma split.
SAFE_BLOCKS = (
    (0x20, 0x7E),  # ASCII printable
    (0xA1, 0x24F),  # Latin-1 supplement, Latin extended A/B
    (0x370, 0x4FF),  # Greek, Cyrillic
    (0x2010, 0x2027),  # dashes, quotes, bullets, ellipsis
    (0x2030, 0x205E),  # per mille, primes, ※ …
    (0x2100, 0x27BF),  # letterlike, number forms, arrows, math, technical, ①, box drawing, shapes, dingbats
    (0x3001, 0x30FF),  # CJK punctuation, kana
    (0xFF01, 0xFFEF),  # fullwidth and halfwidth forms
    (0xFFFD, 0xFFFD),  # replacement character
    (0x1F300, 0x1FAFF),  # emoji and pictographs
)
# Characters whose case folding relates them to the contraction letters (ſ ~ s, K ~ k, ı/İ ~ i): left out.
UNVETTED = {0x130, 0x131, 0x17F, 0x212A, 0x212B}
WHITESPACE = " \t\n\r\u3000"
CACHE_LIMIT = 1 << 18  # parts kept before the cache starts afresh (~40 MB; 1 M Chinese characters hold ~32 k)


def _class(chars: list[str]) -> str:
    """A regex character class body listing `chars` as ranges."""
    codes = sorted(set(map(ord, chars)))
    out, i = [], 0
    while i < len(codes):
        j = i
        while j + 1 < len(codes) and codes[j + 1] == codes[j] + 1:
            j += 1
        a, b = chr(codes[i]), chr(codes[j])
        out.append(re.escape(a) if i == j else f"{re.escape(a)}-{re.escape(b)}")
        i = j + 1
    return "".join(out)


@lru_cache(maxsize=1)
def patterns() -> tuple[re.Pattern, re.Pattern]:
    """(a search for any character outside the vetted set, the piece pattern) -- Python `re`."""
    letters, numbers, others, han = [], [], [], []
    for first, last in SAFE_BLOCKS:
        for code in range(first, last + 1):
            if code in UNVETTED:
                continue
            kind = unicodedata.category(chr(code))[0]
            {"L": letters, "N": numbers, "P": others, "S": others}.get(kind, []).append(chr(code))
    for first, last in HAN_BLOCKS:
        han += [chr(c) for c in range(first, last + 1) if unicodedata.category(chr(c)) == "Lo"]
    space = re.escape(WHITESPACE)
    unsafe = re.compile(f"[^{_class(letters + numbers + others + han)}{space}]")
    lt, nm, ot, hn = _class(letters), _class(numbers), _class(others), _class(han)
    # PRETOKENIZE_PATTERN alternative by alternative, each class spelled out over the vetted set
    piece = re.compile(
        r"'(?i:[sdmt]|ll|ve|re)"
        f"|[{ot} \\t\\u3000]?[{lt}]+"  # [^\r\n\p{L}\p{N}]?[\p{L}&&[^Han]]+
        f"| ?[{hn}]+"
        f"|[{nm}]"  # \p{N}; the Digits pre-tokenizer then has nothing left to split
        f"| ?[{ot}]+[\\r\\n]*"  # ?[^\s\p{L}\p{N}]+[\r\n]*
        f"|[{space}]*[\\r\\n]+"
        f"|[{space}]+(?![^{space}])"
        f"|[{space}]+"
    )
    return unsafe, piece


def _encode_batch(tokenizer):
    """`encode_batch_fast` (ids without offsets, tokenizers ≥ 0.20) or `encode_batch`."""
    return getattr(tokenizer, "encode_batch_fast", None) or tokenizer.encode_batch


def _is_skyloom_pre_tokenizer(node: dict | None) -> bool:
    from skyloom.tokenizer.base import pre_tokenizer_json

    return node == pre_tokenizer_json()


class FastEncoder:
    """The cached, pre-split encoder of one tokenizer (see the module docstring)."""

    def __init__(self, tokenizer, doc: dict):
        import numpy as np
        from tokenizers import Tokenizer

        self.tokenizer = tokenizer
        bare = dict(doc, pre_tokenizer=None, added_tokens=[])  # one BPE word per input string
        self.bare = Tokenizer.from_str(json.dumps(bare))
        self.unsafe, self.piece = patterns()
        pairs = {(ord(t[i]) << 21) | ord(t[i + 1]) for t in doc["model"]["vocab"] for i in range(len(t) - 1)}
        # linked[h]: some entry may hold a pair hashing to h (a superset of the pairs: collisions only cut less)
        self.linked = np.zeros(1 << HASH_BITS, dtype=bool)
        self.linked[_hash(np.array(sorted(pairs), dtype=np.uint64))] = True
        # a single character in the vocabulary is its own id (no merge applies to one symbol)
        self.single = {t: [i] for t, i in doc["model"]["vocab"].items() if len(t) == 1}
        self.cache: dict[str, list[int]] = dict(self.single)
        # two characters: BPE has one pair to consider -- merged if that merge exists, else the two characters
        vocab = doc["model"]["vocab"]
        halves = (m.split(" ", 1) if isinstance(m, str) else m for m in doc["model"]["merges"])
        self.pair_merges = {a + b: vocab[a + b] for a, b in halves if len(a) == 1 and len(b) == 1}

    @classmethod
    def for_tokenizer(cls, tokenizer) -> FastEncoder | None:
        """The fast encoder for a `tokenizers.Tokenizer`, or None where it could change an id."""
        doc = json.loads(tokenizer.to_str())
        model = doc.get("model") or {}
        byte_tokens = all(f"<0x{b:02X}>" in model.get("vocab", {}) for b in range(256))
        if (
            doc.get("normalizer") is not None
            or not _is_skyloom_pre_tokenizer(doc.get("pre_tokenizer"))
            or model.get("type") != "BPE"
            or model.get("dropout") not in (None, 0.0)
            or model.get("ignore_merges")
            or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix")
            or (model.get("fuse_unk") and not (model.get("byte_fallback") and byte_tokens))
            or doc.get("truncation") is not None
            or doc.get("padding") is not None
            or not all(t.get("special") for t in doc.get("added_tokens") or [])
            or not getattr(tokenizer, "encode_special_tokens", False)
        ):
            return None
        return cls(tokenizer, doc)

    def split(self, texts: Sequence[str]) -> tuple[list[str], list[int]]:
        """All texts cut into the parts encoded independently (pieces, then at unlinked pairs), in order, and
        the index in that list where each text's parts end."""
        import numpy as np

        joined = "".join(texts)
        if not joined:
            return [], [0] * len(texts)
        lengths = map(len, chain.from_iterable(map(self.piece.findall, texts)))
        ends = np.fromiter(accumulate(lengths), dtype=np.int64)
        codes = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
        wide = codes.astype(np.uint64)
        linked = self.linked[_hash((wide[:-1] << np.uint64(21)) | wide[1:])]
        boundary = np.zeros(len(joined) + 1, dtype=bool)
        boundary[ends] = True
        boundary[1:-1] |= ~linked
        cuts = np.flatnonzero(boundary[1:-1]) + 1
        # a NUL (never in a vetted text) at every cut, then one C-level str.split
        parts = np.insert(codes, cuts, 0).tobytes().decode("utf-32-le").split("\x00")
        bounds = np.concatenate(([0], cuts, [len(joined)]))
        doc_ends = np.searchsorted(bounds, np.fromiter(accumulate(map(len, texts)), dtype=np.int64), side="left")
        return parts, doc_ends.tolist()

    def _learn(self, missing: list[str]) -> None:
        """Encode parts never seen (one pre-split sequence: one BPE word each) into the cache."""
        single, merged, rest = self.single, self.pair_merges, []
        for part in missing:
            if len(part) == 2 and part[0] in single and part[1] in single:
                pair = merged.get(part)
                self.cache[part] = [pair] if pair is not None else single[part[0]] + single[part[1]]
            else:
                rest.append(part)
        if not rest:
            return
        missing = rest
        encoding = self.bare.encode(missing, is_pretokenized=True, add_special_tokens=False)
        found: list[list[int]] = [[] for _ in missing]
        for token_id, word in zip(encoding.ids, encoding.word_ids):
            found[word].append(token_id)
        self.cache.update(zip(missing, found))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        out: list[list[int] | None] = [None] * len(texts)
        fast_at, fast_texts, slow_at, slow_texts = [], [], [], []
        for i, text in enumerate(texts):
            if self.unsafe.search(text) is None:
                fast_at.append(i)
                fast_texts.append(text)
            else:
                slow_at.append(i)
                slow_texts.append(text)
        if fast_texts:
            if len(self.cache) > CACHE_LIMIT:
                self.cache = dict(self.single)
            parts, doc_ends = self.split(fast_texts)
            ids = list(map(self.cache.get, parts))
            if None in ids:
                self._learn(list({p for p, found in zip(parts, ids) if found is None}))
                ids = list(map(self.cache.__getitem__, parts))
            start = 0
            for i, end in zip(fast_at, doc_ends):
                out[i] = list(chain.from_iterable(ids[start:end]))
                start = end
        if slow_texts:
            for i, enc in zip(slow_at, _encode_batch(self.tokenizer)(slow_texts, add_special_tokens=False)):
                out[i] = enc.ids
        return out  # type: ignore[return-value]


HASH_BITS = 23  # 8 M slots for ~30-60 k linked pairs: a collision only makes a pair look linked (one cut fewer)


def _hash(keys):
    """Multiplicative hash of pair keys into HASH_BITS bits."""
    import numpy as np

    return (keys * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - HASH_BITS)
