"""Extending a BPE vocabulary with Chinese characters, Chinese words and reserved specials — ids kept.

This is the report's procedure (§3.3): an existing vocabulary (LLaMA's there) gains frequent Chinese
characters and multi-character words, then reserved special symbols, to an exact total size.

New entries become real BPE vocabulary entries with merges, not "added tokens":

* Added tokens are cut out of the text *before* normalization and pre-tokenization, by longest match.
  With a SentencePiece-style base (a "▁" prepended to every segment) that breaks the round trip
  ("你好world" would come back as "你好 world"), and 33k added tokens make `transformers` slow to load
  and treat every one as a special-ish token. Merges keep the base pipeline untouched.
* A merge only fires if both halves are in the vocabulary, so every new entry is made reachable: a
  character needs nothing more in a character-level (byte-fallback) base, a two-character word needs its two
  characters, and a longer word needs a split into two existing entries. Where no such split exists, the
  missing half is added first as a *helper* (a Chinese substring, counted in the same row of the breakdown,
  reported separately). In a byte-level base (GPT-2 style) characters are built from bytes the same way.
* New merges rank after all base merges — the base's segmentation of anything it could already represent
  (all English text) is unchanged — and among themselves by frequency, so where words overlap BPE prefers
  the more frequent one, as a frequency-ordered dictionary segmenter would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from skyloom.tokenizer.text import is_chinese_char_or_symbol, is_han


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table used by ByteLevel pre-tokenizers."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _components(node: dict | None, kind: str) -> Iterable[dict]:
    """Every component of a (possibly Sequence) normalizer / pre-tokenizer / decoder."""
    if not node:
        return
    yield node
    for key in ("normalizers", "pretokenizers", "pre_tokenizers", "decoders", "processors"):
        for child in node.get(key) or ():
            yield from _components(child, kind)


@dataclass
class BaseTokenizer:
    """A tokenizer to extend: its tokenizer.json document and the special tokens it already names."""

    doc: dict
    specials: dict[str, str]
    source: str
    kind: str  # "trained", "tokenizer.json" or "sentencepiece"


def load_base(path: str | Path) -> BaseTokenizer:
    """A SentencePiece `.model`, a `tokenizer.json`, or a directory holding either."""
    p = Path(path)
    if p.is_dir():
        if (p / "tokenizer.json").is_file():
            p = p / "tokenizer.json"
        else:
            models = sorted(p.glob("*.model"))
            if len(models) != 1:
                raise FileNotFoundError(f"{path}: no tokenizer.json and not exactly one SentencePiece .model")
            p = models[0]
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such tokenizer file")
    if p.suffix == ".model":
        from skyloom.tokenizer import spm

        model = spm.read_model(p)
        return BaseTokenizer(spm.to_tokenizer_json(model, str(p)), spm.special_pieces(model), str(p), "sentencepiece")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{p}: not a tokenizer.json ({err})") from None
    if not isinstance(doc, dict) or "model" not in doc:
        raise ValueError(f"{p}: not a tokenizer.json (no 'model')")
    specials: dict[str, str] = {}
    config = p.parent / "tokenizer_config.json"
    if config.is_file():
        cfg = json.loads(config.read_text(encoding="utf-8"))
        for key in ("unk_token", "bos_token", "eos_token", "pad_token"):
            value = cfg.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                specials[key] = value
    return BaseTokenizer(doc, specials, str(p), "tokenizer.json")


@dataclass
class Addition:
    """New entries of one row of the breakdown, in id order."""

    entries: list[str] = field(default_factory=list)  # the entries asked for (characters / words)
    helpers: list[str] = field(default_factory=list)  # substrings added only to make an entry reachable
    origin: dict[str, str] = field(default_factory=dict)  # entry -> corpus / frequency_list / jieba_fill
    first_id: int | None = None
    last_id: int | None = None

    @property
    def size(self) -> int:
        return len(self.entries) + len(self.helpers)


class VocabExtender:
    """Adds entries to a BPE tokenizer.json document, appending ids after the base's last id."""

    def __init__(self, base: BaseTokenizer):
        from tokenizers import Tokenizer

        doc = json.loads(json.dumps(base.doc))  # private copy
        model = doc.get("model") or {}
        if model.get("type") != "BPE":
            raise ValueError(
                f"{base.source}: only BPE tokenizers can be extended with merges (this one is {model.get('type')})"
            )
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise ValueError(f"{base.source}: BPE with subword prefixes/suffixes is not supported")
        self.source = base.source
        self.doc = doc
        self.vocab: dict[str, int] = dict(model["vocab"])
        self.merges: list[list[str]] = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in model["merges"]]
        self.added = {t["content"]: t["id"] for t in doc.get("added_tokens") or []}
        ids = set(self.vocab.values()) | set(self.added.values())
        self.base_size = max(ids) + 1 if ids else 0
        if len(ids) != self.base_size:
            raise ValueError(
                f"{base.source}: token ids are not contiguous 0..{self.base_size - 1} "
                f"({self.base_size - len(ids)} missing)"
            )
        self.byte_level = any(c.get("type") == "ByteLevel" for c in _components(doc.get("pre_tokenizer"), "pre"))
        self._byte_map = bytes_to_unicode() if self.byte_level else None
        self._pipeline = Tokenizer.from_str(json.dumps(doc))
        self.next_id = self.base_size
        self.new_merges: list[list[str]] = []
        self.new_tokens: list[str] = []
        self.new_specials: list[tuple[str, int]] = []

    # --- what an entry looks like inside this vocabulary ------------------------------------------------
    def atoms(self, text: str) -> list[str]:
        """The symbols BPE starts from: characters, or byte characters in a byte-level vocabulary."""
        if self._byte_map is not None:
            return [self._byte_map[b] for b in text.encode("utf-8")]
        return list(text)

    def token(self, text: str) -> str:
        return "".join(self.atoms(text))

    def has(self, text: str) -> bool:
        tok = self.token(text)
        return tok in self.vocab or text in self.added

    def usable(self, text: str) -> bool:
        """Whether the base's normalizer and pre-tokenizer leave `text` whole, so an entry for it can fire."""
        normalized = text
        if self._pipeline.normalizer is not None:
            normalized = self._pipeline.normalizer.normalize_str(text)
        pieces = [normalized]
        if self._pipeline.pre_tokenizer is not None:
            pieces = [p for p, _ in self._pipeline.pre_tokenizer.pre_tokenize_str(normalized)]
        return len(pieces) == 1 and pieces[0].endswith(self.token(text))

    # --- planning merges ----------------------------------------------------------------------------
    def plan(self, text: str, count: Callable[[str], float] = lambda s: 0.0) -> list[tuple[str, str, str]] | None:
        """The (left, right, merged) merges to add so that `text` becomes one token, helpers first;
        [] if it already is one, None if impossible (an atom is not in the vocabulary)."""
        atoms = self.atoms(text)
        if any(a not in self.vocab for a in atoms):
            return None
        memo: dict[tuple[int, int], tuple[int, list[tuple[str, str, str]]]] = {}

        def best(i: int, j: int) -> tuple[int, list[tuple[str, str, str]]]:
            if (i, j) in memo:
                return memo[(i, j)]
            merged = "".join(atoms[i:j])
            if j - i == 1 or merged in self.vocab:
                memo[(i, j)] = (0, [])
                return memo[(i, j)]
            choice = None
            for k in range(i + 1, j):
                cost_l, plan_l = best(i, k)
                cost_r, plan_r = best(k, j)
                left, right = "".join(atoms[i:k]), "".join(atoms[k:j])
                # Fewest new entries; then halves that are frequent words; then the longer left half
                # (Chinese compounds are more often 2+1 than 1+2: 中国|人, 现代|化).
                key = (cost_l + cost_r + 1, -min(count(left), count(right)), -k)
                if choice is None or key < choice[0]:
                    choice = (key, plan_l + plan_r + [(left, right, merged)])
            memo[(i, j)] = (choice[0][0], choice[1])
            return memo[(i, j)]

        steps = best(0, len(atoms))[1]
        seen: set[str] = set()
        unique = []
        for step in steps:
            if step[2] not in seen:
                seen.add(step[2])
                unique.append(step)
        return unique

    def apply(self, steps: list[tuple[str, str, str]]) -> None:
        for left, right, merged in steps:
            self.vocab[merged] = self.next_id
            self.new_tokens.append(merged)
            self.next_id += 1
            self.new_merges.append([left, right])

    def add_atom(self, text: str) -> None:
        """A single character entry in a character-level vocabulary (no merge needed)."""
        self.vocab[text] = self.next_id
        self.new_tokens.append(text)
        self.next_id += 1

    def fill(
        self,
        row: Addition,
        budget: int,
        candidates: Iterable[tuple[str, str]],
        count: Callable[[str], float],
        resume: bool = False,
    ) -> None:
        """Add candidates (text, origin) in order until `budget` new ids are used; skips entries already
        present, unusable or unreachable, and ones whose helpers would overflow the budget. `resume`: the row
        already holds entries (its first id stays)."""
        if not (resume and row.first_id is not None):
            row.first_id = self.next_id
        candidates = iter(candidates)
        while row.size < budget:
            try:
                text, origin = next(candidates)
            except StopIteration:
                break
            if self.has(text) or not self.usable(text):
                continue
            if len(self.atoms(text)) == 1:
                self.add_atom(text)
            else:
                steps = self.plan(text, count)
                if not steps or len(steps) > budget - row.size:
                    continue
                self.apply(steps)
                row.helpers.extend(merged for _, _, merged in steps[:-1])
            row.entries.append(text)
            row.origin[text] = origin
        row.last_id = self.next_id - 1

    def fill_merges(
        self, row: Addition, budget: int, merges: Iterable[tuple[str, str]], is_word: Callable[[str], bool]
    ) -> None:
        """Add learned merges (left, right) in order until `budget` new ids are used. Both halves must already
        be entries (a merge whose half was skipped is skipped too); results that are words (`is_word`) count as
        entries, the rest (parts of words) as helpers. Only for character-level vocabularies."""
        row.first_id = self.next_id
        for left, right in merges:
            if row.size >= budget:
                break
            merged = left + right
            if self.has(merged) or not (self.has(left) and self.has(right)) or not self.usable(merged):
                continue
            self.apply([(left, right, merged)])
            if is_word(merged):
                row.entries.append(merged)
                row.origin[merged] = "corpus"
            else:
                row.helpers.append(merged)
        row.last_id = self.next_id - 1

    # --- specials -------------------------------------------------------------------------------------
    def special_id(self, content: str) -> int | None:
        if content in self.added:
            return self.added[content]
        return self.vocab.get(content)

    def add_special(self, content: str) -> int:
        existing = self.special_id(content)
        if existing is not None:
            return existing
        self.vocab[content] = self.next_id
        self.new_specials.append((content, self.next_id))
        self.next_id += 1
        return self.next_id - 1

    # --- result ---------------------------------------------------------------------------------------
    def document(self, unk_token: str | None) -> dict:
        doc = self.doc
        model = doc["model"]
        model["vocab"] = self.vocab
        model["merges"] = self.merges + self.new_merges
        if model.get("unk_token") is None and unk_token is not None and not self.byte_level:
            model["unk_token"] = unk_token
        added = list(doc.get("added_tokens") or [])
        known = {t["content"] for t in added}
        for content, token_id in self.new_specials:
            if content not in known:
                added.append(added_token_entry(content, token_id))
        doc["added_tokens"] = sorted(added, key=lambda t: t["id"])
        return doc

    def mark_special(self, content: str) -> None:
        """Make an existing vocabulary entry a special added token (so decoders can skip it)."""
        if content in self.added:
            return
        token_id = self.vocab[content]
        self.doc.setdefault("added_tokens", []).append(added_token_entry(content, token_id))
        self.added[content] = token_id


def character_candidate(text: str) -> bool:
    return is_chinese_char_or_symbol(text)


def han_count(entries: Iterable[str]) -> int:
    return sum(1 for e in entries if all(is_han(c) for c in e))


def added_token_entry(content: str, token_id: int, special: bool = True) -> dict:
    """A tokenizer.json `added_tokens` entry, matched verbatim; a special one is skipped by decoders."""
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": special,
    }
