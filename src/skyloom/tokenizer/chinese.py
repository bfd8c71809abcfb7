"""Frequencies of Chinese characters and multi-character words: what the vocabulary extension adds.

The report adds the most frequent Chinese characters and ~25k frequent multi-character words to a Latin
base vocabulary. Here characters are counted directly and words with `jieba` segmentation of the Han runs
of the training corpus (in parallel processes; jieba is the slow part), optionally merged with a
user-supplied frequency list. When a corpus is too small to supply enough distinct entries, jieba's own
dictionary (its word frequencies, shipped inside the wheel) is the deterministic fill.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

from skyloom.tokenizer.text import HAN_RUN, is_chinese_char_or_symbol, is_han_word


@dataclass
class Frequencies:
    """Character and word counts (corpus and/or lists), plus a few totals for the report."""

    chars: Counter = field(default_factory=Counter)  # every character (callers pick the ones they want)
    words: Counter = field(default_factory=Counter)  # multi-character Han words
    documents: int = 0
    characters: int = 0

    def update(self, other: Frequencies) -> None:
        self.chars.update(other.chars)
        self.words.update(other.words)
        self.documents += other.documents
        self.characters += other.characters


_JIEBA_READY = False


def _jieba():
    global _JIEBA_READY
    import jieba

    if not _JIEBA_READY:
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _JIEBA_READY = True
    return jieba


def count_batch(texts: list[str], hmm: bool = True, segment: bool = True, runs: bool = False) -> Frequencies:
    """Counts for a batch of documents (runs in a worker process); `segment=False` counts characters only;
    `runs=True` counts whole Han runs (≥ 2 characters) as the "words", without jieba."""
    jieba = _jieba() if segment and not runs else None
    out = Frequencies(documents=len(texts))
    for text in texts:
        out.characters += len(text)
        out.chars.update(text)
        if runs:
            out.words.update(run for run in HAN_RUN.findall(text) if len(run) > 1)
        if jieba is None:
            continue
        for run in HAN_RUN.findall(text):
            if len(run) < 2:
                continue
            for word in jieba.cut(run, HMM=hmm):
                if len(word) > 1:
                    out.words[word] += 1
    return out


def _batches(texts: Iterable[str], max_chars: int = 1 << 16, max_docs: int = 1024) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= max_chars or len(batch) >= max_docs:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def count_frequencies(
    texts: Iterable[str],
    workers: int = 1,
    hmm: bool = True,
    progress=None,
    segment: bool = True,
    runs: bool = False,
) -> Frequencies:
    """Character and jieba word counts (or, `runs=True`, Han run counts) over `texts`; `workers` > 1 segments
    in that many processes.

    `progress(n_chars)` is called as batches finish. Results do not depend on `workers`."""
    total = Frequencies()
    fn = partial(count_batch, hmm=hmm, segment=segment, runs=runs)
    if workers <= 1:
        for batch in _batches(texts):
            part = fn(batch)
            total.update(part)
            if progress:
                progress(part.characters)
        return total
    import multiprocessing as mp

    # spawn, never fork: forking a process whose torch/OpenMP/rayon threads are running can deadlock
    # (seen in the full test suite). Each worker loads jieba's dictionary once.
    # The pool reads `texts` in its task thread; an input error there must reach the caller, not a worker.
    failure: list[BaseException] = []

    def feed() -> Iterator[list[str]]:
        try:
            yield from _batches(texts)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the submitted batches finish
            failure.append(e)

    with mp.get_context("spawn").Pool(workers) as pool:
        for part in pool.imap_unordered(fn, feed(), chunksize=1):
            total.update(part)
            if progress:
                progress(part.characters)
    if failure:
        raise failure[0]
    return total


def read_frequency_list(path: str | Path) -> Counter:
    """A user frequency list: one `entry count` per line (jieba's dict.txt format works: extra columns are
    ignored); `#` starts a comment. Entries may be characters or words."""
    counts: Counter = Counter()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 2:
                raise ValueError(f"{path}:{number}: expected 'entry count', got {line[:60]!r}")
            try:
                count = float(parts[1])
            except ValueError:
                raise ValueError(f"{path}:{number}: count {parts[1]!r} is not a number") from None
            if count < 0:
                raise ValueError(f"{path}:{number}: negative count {count}")
            counts[parts[0]] += count
    return counts


@lru_cache(maxsize=1)
def jieba_dictionary() -> tuple[tuple[str, ...], tuple[str, ...], dict[str, int]]:
    """jieba's bundled dictionary: (characters by frequency, Han words by frequency, frequencies)."""
    jieba = _jieba()
    freq: dict[str, int] = {}
    with jieba.get_dict_file() as f:
        for raw in f:
            parts = raw.decode("utf-8").split()
            if len(parts) >= 2 and parts[1].isdigit():
                freq[parts[0]] = freq.get(parts[0], 0) + int(parts[1])
    ranked = sorted(freq, key=lambda w: (-freq[w], w))
    chars = tuple(w for w in ranked if len(w) == 1 and is_chinese_char_or_symbol(w))
    words = tuple(w for w in ranked if is_han_word(w))
    return chars, words, freq


def whole_digit_sets(chars: Counter, keep) -> Counter:
    """`chars` with each non-ASCII set of ten decimal digits (full-width ０-９, ...) counted as one: every digit of
    a set that `keep` accepts gets the set's total count, so the ten enter the characters row together.

    A digit's own frequency says little about the next text (a corpus that writes years has ０１２９ but few ３s);
    leaving the rest out costs 3 byte tokens per digit (5% of the tokens on held-out news, measured)."""
    totals: Counter = Counter()
    for ch, count in chars.items():
        if len(ch) == 1 and ord(ch) > 127 and unicodedata.decimal(ch, None) is not None and keep(ch):
            totals[ord(ch) - unicodedata.decimal(ch)] += count
    out = Counter(chars)
    for zero, total in totals.items():
        for digit in map(chr, range(zero, zero + 10)):
            if keep(digit):
                out[digit] = total
    return out


def rank(corpus: Counter, user: Counter, weight: float, keep, value=None) -> list[tuple[str, float, str]]:
    """Candidates by combined count (corpus + weight × user list), ties by text: (entry, count, origin).
    `value(entry, count)`, if given, orders by that instead of the count (e.g. characters saved)."""
    combined: dict[str, float] = {}
    origin: dict[str, str] = {}
    for entry, count in corpus.items():
        if count > 0 and keep(entry):
            combined[entry] = float(count)
            origin[entry] = "corpus"
    for entry, count in user.items():
        if count > 0 and keep(entry):
            combined[entry] = combined.get(entry, 0.0) + weight * count
            origin.setdefault(entry, "frequency_list")
    score = combined if value is None else {e: value(e, c) for e, c in combined.items()}
    ranked = sorted(combined, key=lambda e: (-score[e], e))
    return [(e, combined[e], origin[e]) for e in ranked]


def learn_word_merges(words: dict[str, float], merges: int, min_count: int = 2) -> list[tuple[str, str]]:
    """Up to `merges` BPE merges learned on Chinese words weighted by their counts, in the order learned.

    Each merge joins the adjacent pair that occurs most often across the counted words, i.e. the entry that
    saves the most tokens given the ones before it; words are never joined across, so every merge yields a
    word or a part of one. The halves of each merge are single characters or earlier merges, so an extension
    that adds them in this order needs no helpers."""
    from tokenizers import Tokenizer, models, trainers

    weighted = {w: int(round(c)) for w, c in words.items() if len(w) > 1 and round(c) >= 1}
    if not weighted or merges <= 0:
        return []
    alphabet = {ch for w in weighted for ch in w}
    tok = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(
        vocab_size=len(alphabet) + merges, min_frequency=min_count, show_progress=False, special_tokens=[]
    )

    def repeated() -> Iterator[list[str]]:  # the trainer counts words itself: each word once per occurrence
        batch: list[str] = []
        for word in sorted(weighted):
            batch.extend([word] * weighted[word])
            if len(batch) >= 65536:
                yield batch
                batch = []
        yield batch

    tok.train_from_iterator(repeated(), trainer=trainer)
    learned = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in learned][:merges]
