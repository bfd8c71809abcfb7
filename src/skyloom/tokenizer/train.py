"""`skyloom tokenizer train`: base BPE (or an existing tokenizer) + Chinese extension + reserved specials.

The final size is exact: total = base + Chinese characters/symbols + Chinese words + reserved. With
`extend`, the base is the given tokenizer (its size is fixed, every id kept); otherwise a byte-fallback
BPE of `base_size` entries is trained on the inputs. The Chinese word count is whatever the total leaves.

When the corpus (plus any frequency list) does not hold enough distinct characters or words, the rest comes
from jieba's bundled dictionary in its frequency order (`fill="jieba"`, the default; the breakdown says how
many) — or training stops with the shortfall named (`fill="none"`).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from skyloom.config import ConfigError
from skyloom.progress import Progress
from skyloom.tokenizer.chinese import (
    Frequencies,
    count_frequencies,
    jieba_dictionary,
    learn_word_merges,
    rank,
    read_frequency_list,
    whole_digit_sets,
)
from skyloom.tokenizer.corpus import DEFAULT_MAX_DOC_CHARS, SizeGuard, iter_texts
from skyloom.tokenizer.extend import Addition, BaseTokenizer, VocabExtender, load_base
from skyloom.tokenizer.text import BYTE_TOKEN, is_chinese_char_or_symbol, is_han, is_han_word

ROW_BASE = "Latin based words & subwords"
ROW_CHARS = "Chinese characters & Unicode symbols"
ROW_WORDS = "Chinese words"
ROW_RESERVED = "Reserved symbols"


@dataclass
class TrainSettings:
    inputs: list[str]
    out: str
    fields: list[str] = field(default_factory=lambda: ["text"])
    total: int = 65536
    base_size: int = 32000
    chinese_chars: int = 8000
    chinese_words: int | None = None  # None: whatever the total leaves
    reserved: int = 17
    # the characters row also takes full-width digits/letters (１９９８, ＡＢＣ) by count; False: the former
    # choice (Han, non-ASCII punctuation/symbols), which left them to 3 byte tokens each -- kept to reproduce it
    fullwidth_chars: bool = True
    extend: str | None = None
    freq_lists: list[str] = field(default_factory=list)
    freq_list_weight: float = 1.0
    # jieba's bundled dictionary frequencies as one more frequency list, scaled so that its multi-character words
    # total the corpus' word (or run) count: generic words the training text lacks (experiments/tokenizer_variants.py)
    jieba_list: bool = False
    fill: Literal["jieba", "none"] = "jieba"
    min_word_count: int = 2
    # "count": most frequent words first (the report's wording); "savings": by count × (characters − 1), the
    # tokens a word saves over character-by-character encoding, so long frequent words are not crowded out;
    # "bpe": BPE merges learned on the counted words (each the pair that saves the most tokens given the
    # entries before it; words and parts of words, no separate helpers) -- chinese.learn_word_merges;
    # "bpe-runs": the same merges learned on whole Han runs instead of jieba's words (no jieba): entries may then
    # be phrases or span two words -- measured 5% more Chinese per token (experiments/tokenizer_variants.py).
    word_rank: Literal["count", "savings", "bpe", "bpe-runs"] = "count"
    character_coverage: float = 0.9995
    min_frequency: int = 2
    max_token_length: int = 16
    jieba_hmm: bool = True
    workers: int = 0  # 0: one per CPU
    max_bytes: int | None = None
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS  # longer documents skipped (records) or split (text files)
    bos_token: str = "<s>"
    eos_token: str = "</s>"
    unk_token: str = "<unk>"
    pad_token: str = "<pad>"
    progress: bool = True


@dataclass
class Sizes:
    base: int
    chars: int
    words: int
    reserved: int

    @property
    def total(self) -> int:
        return self.base + self.chars + self.words + self.reserved


def resolve_sizes(s: TrainSettings, base_size: int | None = None) -> Sizes:
    """The four row sizes; `base_size` is the size of the tokenizer being extended, if any."""
    base = base_size if base_size is not None else s.base_size
    for key, value in (("--chinese-chars", s.chinese_chars), ("--reserved", s.reserved), ("--base-size", base)):
        if value < 0:
            raise ConfigError(key, f"must be ≥ 0, got {value}")
    words = s.total - base - s.chinese_chars - s.reserved
    if s.chinese_words is not None and s.chinese_words != words:
        raise ConfigError(
            "--chinese-words",
            f"{base} + {s.chinese_chars} + {s.chinese_words} + {s.reserved} = "
            f"{base + s.chinese_chars + s.chinese_words + s.reserved}, "
            f"not --total {s.total}",
        )
    if words < 0:
        raise ConfigError(
            "--total",
            f"{s.total} is smaller than base {base} + Chinese characters {s.chinese_chars} + reserved {s.reserved}",
        )
    if s.reserved < 4 and base_size is None:
        raise ConfigError(
            "--reserved", f"a new tokenizer needs at least 4 reserved ids (unk, bos, eos, pad), got {s.reserved}"
        )
    return Sizes(base, s.chinese_chars, words, s.reserved)


def _char_progress(enabled: bool, desc: str) -> Progress:
    """Progress over characters (a callable taking the amount read) when asked for, a no-op otherwise."""
    return Progress(desc=desc, unit="char", unit_scale=True, leave=False, enabled=enabled)


def _log(settings: TrainSettings, message: str) -> None:
    if settings.progress:
        print(message, file=sys.stderr, flush=True)


def _candidates(
    ranked: list[tuple[str, float, str]], fill: Callable[[], tuple[str, ...]] | None, keep: Callable[[str], bool]
) -> Iterator[tuple[str, str]]:
    """Ranked corpus/list entries, then (only if the consumer gets that far) the fill entries."""
    seen = set()
    for entry, _, origin in ranked:
        seen.add(entry)
        yield entry, origin
    for entry in fill() if fill else ():
        if entry not in seen and keep(entry):
            yield entry, "jieba_fill"


def _jieba_list(freqs: Frequencies, freq_list_weight: float) -> Counter:
    """jieba's dictionary (characters and words) scaled so that, after `freq_list_weight`, its multi-character
    words weigh as much as the corpus' counted words: the list fills gaps without outvoting the corpus."""
    listed = jieba_dictionary()[2]
    listed_words = sum(c for w, c in listed.items() if len(w) > 1)
    corpus_words = sum(freqs.words.values())
    if not listed_words or not corpus_words:
        return Counter()
    scale = corpus_words / listed_words
    return Counter({w: c * scale / freq_list_weight for w, c in listed.items()})


def _row(category: str, addition: Addition | None = None, **extra) -> dict:
    row: dict = {"category": category}
    if addition is not None:
        origins = Counter(addition.origin[e] for e in addition.entries)
        row.update(
            size=addition.size,
            first_id=addition.first_id,
            last_id=addition.last_id,
            entries=len(addition.entries),
            helpers=len(addition.helpers),
            from_corpus=origins["corpus"],
            from_frequency_list=origins["frequency_list"],
            from_jieba_fill=origins["jieba_fill"],
        )
    row.update(extra)
    return row


def _base_composition(vocab: dict[str, int], base_size: int) -> dict:
    byte_tokens = han = 0
    for token, token_id in vocab.items():
        if token_id >= base_size:
            continue
        if BYTE_TOKEN.fullmatch(token):
            byte_tokens += 1
        elif any(is_han(c) for c in token):
            han += 1
    return {
        "byte_fallback_tokens": byte_tokens,
        "tokens_with_chinese": han,
        "other_tokens": base_size - byte_tokens - han,
    }


def train_tokenizer(s: TrainSettings, freqs: Frequencies | None = None, base: BaseTokenizer | None = None) -> dict:
    """Build and write the tokenizer directory; returns the vocabulary breakdown.

    `freqs` (the counts of `s.inputs`) and `base` (a base already trained on them) skip those steps, so an
    experiment that varies only the Chinese layout counts and trains once (experiments/tokenizer_variants.py)."""
    started = time.time()
    if not s.inputs:
        raise ConfigError("INPUT", "give at least one input file")
    if not 0 < s.character_coverage <= 1:
        raise ConfigError("--character-coverage", f"must be in (0, 1], got {s.character_coverage}")
    workers = s.workers or (os.cpu_count() or 1)
    if base is None and s.extend:
        base = load_base(s.extend)
    if base is not None and (s.extend or base.kind != "trained"):
        probe = VocabExtender(base)
        sizes = resolve_sizes(s, probe.base_size)
    else:
        sizes = resolve_sizes(s)
    user: Counter = Counter()
    for path in s.freq_lists:
        user.update(read_frequency_list(path))

    guard = SizeGuard(s.max_doc_chars)  # what the first reading skipped or split; the second reads the same
    texts = lambda g=None: iter_texts(s.inputs, s.fields, s.max_bytes, g or SizeGuard(s.max_doc_chars))  # noqa: E731
    segment = sizes.words > 0
    if freqs is None:
        _log(s, f"counting characters{' and jieba words' if segment else ''} ({workers} workers)")
        bar = _char_progress(s.progress, "count")
        runs = s.word_rank == "bpe-runs"
        freqs = count_frequencies(
            texts(guard),
            workers=workers if segment and not runs else 1,
            hmm=s.jieba_hmm,
            progress=bar,
            segment=segment,
            runs=runs,
        )
        bar.close()
    _log(
        s,
        f"  {freqs.documents:,} documents, {freqs.characters:,} characters, "
        f"{sum(1 for c in freqs.chars if is_han(c)):,} distinct Chinese characters, "
        f"{len(freqs.words):,} distinct words",
    )
    if guard.skipped or guard.split:
        _log(
            s,
            f"  --max-doc-chars {s.max_doc_chars:,}: {len(guard.skipped):,} over-long documents skipped, "
            f"{len(guard.split):,} text file(s) split",
        )
    if freqs.characters == 0:
        raise ConfigError("INPUT", "the inputs hold no text")
    if s.jieba_list:
        user.update(_jieba_list(freqs, s.freq_list_weight))

    if base is None:
        from skyloom.tokenizer.base import alphabet_size, train_base

        alphabet = alphabet_size(freqs.chars, s.character_coverage)
        if sizes.base < 256 + alphabet:  # the BPE trainer keeps the whole alphabet, whatever the size asked
            raise ConfigError(
                "--base-size",
                f"must be at least {256 + alphabet:,} (the 256 byte tokens + the "
                f"{alphabet:,} characters of the base alphabet, which "
                f"--character-coverage {s.character_coverage} keeps), got {sizes.base:,}; "
                f"raise it or lower --character-coverage",
            )
        _log(s, f"training the base BPE: {sizes.base:,} entries (256 bytes, alphabet ≤ {alphabet})")
        bar = _char_progress(s.progress, "base BPE")
        doc = train_base(texts(), sizes.base, alphabet, s.min_frequency, s.max_token_length, on_text=bar)
        bar.close()
        base = BaseTokenizer(doc, {}, "trained on the inputs", "trained")
    ext = VocabExtender(base)
    assert ext.base_size == sizes.base

    def count(text: str) -> float:
        return float(freqs.words.get(text, 0) or (freqs.chars.get(text, 0) if len(text) == 1 else 0))

    fill_chars = (lambda: jieba_dictionary()[0]) if s.fill == "jieba" else None
    fill_words = (lambda: jieba_dictionary()[1]) if s.fill == "jieba" else None
    char_keep = lambda e: len(e) == 1 and is_chinese_char_or_symbol(e, s.fullwidth_chars)  # noqa: E731
    chars_row, words_row = Addition(), Addition()
    ext.fill(
        chars_row,
        sizes.chars,
        _candidates(
            rank(whole_digit_sets(freqs.chars, char_keep), user, s.freq_list_weight, char_keep), fill_chars, char_keep
        ),
        count,
    )
    if chars_row.size != sizes.chars:
        raise ConfigError(
            "--chinese-chars",
            f"only {chars_row.size} of {sizes.chars} Chinese characters/symbols "
            f"could be added (corpus + lists{' + jieba fill' if fill_chars else ''}"
            f" exhausted); give more text or a --freq-list, or lower it",
        )
    runs = s.word_rank == "bpe-runs"  # freqs.words holds Han runs; most occur once, their pairs repeat
    corpus_words = Counter({w: c for w, c in freqs.words.items() if runs or c >= s.min_word_count})
    if s.word_rank not in ("count", "savings", "bpe", "bpe-runs"):
        raise ConfigError("--word-rank", f"must be 'count', 'savings', 'bpe' or 'bpe-runs', got {s.word_rank!r}")
    value = (lambda e, c: c * (len(e) - 1)) if s.word_rank == "savings" else None
    ranked_words = rank(corpus_words, user, s.freq_list_weight, is_han_word, value)
    if s.word_rank in ("bpe", "bpe-runs"):
        if ext.byte_level:
            raise ConfigError("--word-rank", f"'{s.word_rank}' needs a character-level base (this one is byte-level)")
        weighted = {w: c for w, c, _ in ranked_words}
        known = set(weighted) if not runs else set(jieba_dictionary()[2]) | {w for w, c in weighted.items() if c > 1}
        # 30% more merges than ids: some are skipped (a half outside the characters row, or already an entry)
        ext.fill_merges(
            words_row, sizes.words, learn_word_merges(weighted, int(sizes.words * 1.3) + 100), known.__contains__
        )
    # the count/savings ranking -- and, for "bpe", whatever the merges left of the budget (jieba fill last)
    ext.fill(words_row, sizes.words, _candidates(ranked_words, fill_words, is_han_word), count, resume=True)
    if words_row.size != sizes.words:
        raise ConfigError(
            "--chinese-words",
            f"only {words_row.size} of {sizes.words} Chinese words could be "
            f"added (corpus + lists{' + jieba fill' if fill_words else ''} "
            f"exhausted); give more text or a --freq-list, or change the sizes",
        )

    # Reserved block: the special tokens the base lacks, then spares, to exactly `reserved` new ids.
    first_reserved = ext.next_id
    names = {
        key: base.specials.get(key) or getattr(s, key) for key in ("unk_token", "bos_token", "eos_token", "pad_token")
    }
    missing = [key for key, content in names.items() if ext.special_id(content) is None]
    if len(missing) > sizes.reserved:
        raise ConfigError(
            "--reserved",
            f"{sizes.reserved} reserved ids cannot hold the missing special tokens {[names[k] for k in missing]}",
        )
    special_ids = {}
    for key, content in names.items():
        if ext.special_id(content) is not None:
            ext.mark_special(content)
        special_ids[key] = ext.add_special(content)
    spares: list[str] = []
    index = 0
    while ext.next_id - first_reserved < sizes.reserved:
        name = f"<reserved_{index}>"
        index += 1
        if ext.special_id(name) is None:
            ext.add_special(name)
            spares.append(name)
    doc = ext.document(names["unk_token"])
    if ext.next_id != sizes.total:
        raise AssertionError(f"vocabulary has {ext.next_id} ids, expected {sizes.total}")

    from skyloom.tokenizer.files import write_tokenizer_dir

    breakdown = {
        "format": "skyloom-vocab-breakdown",
        "version": 1,
        "total": sizes.total,
        "rows": [
            _row(
                ROW_BASE,
                size=sizes.base,
                first_id=0,
                last_id=sizes.base - 1,
                source=base.source,
                kind=base.kind,
                **_base_composition(ext.vocab, sizes.base),
            ),
            _row(
                ROW_CHARS,
                chars_row,
                han=sum(1 for e in chars_row.entries if is_han(e)),
                symbols=sum(1 for e in chars_row.entries if not is_han(e)),
            ),
            _row(
                ROW_WORDS,
                words_row,
                by_length=dict(
                    sorted(Counter(str(len(e)) for e in words_row.entries).items(), key=lambda kv: int(kv[0]))
                ),
            ),
            {
                "category": ROW_RESERVED,
                "size": sizes.reserved,
                "first_id": first_reserved,
                "last_id": ext.next_id - 1,
                "tokens": {content: token_id for content, token_id in ext.new_specials},
            },
        ],
        "special_tokens": {key: {"content": names[key], "id": special_ids[key]} for key in names},
        "settings": {
            "inputs": [str(p) for p in s.inputs],
            "fields": s.fields,
            "extend": s.extend,
            "freq_lists": s.freq_lists,
            "freq_list_weight": s.freq_list_weight,
            "jieba_list": s.jieba_list,
            "fill": s.fill,
            "fullwidth_chars": s.fullwidth_chars,
            "min_word_count": s.min_word_count,
            "word_rank": s.word_rank,
            "character_coverage": s.character_coverage,
            "min_frequency": s.min_frequency,
            "max_token_length": s.max_token_length,
            "jieba_hmm": s.jieba_hmm,
        },
        "corpus": {
            "documents": freqs.documents,
            "characters": freqs.characters,
            "han_characters": sum(c for ch, c in freqs.chars.items() if is_han(ch)),
            "distinct_words": len(freqs.words),
            "max_doc_chars": s.max_doc_chars,
            "over_long_skipped": len(guard.skipped),
            "text_files_split": len(guard.split),
        },
        "seconds": round(time.time() - started, 1),
    }
    write_tokenizer_dir(s.out, doc, {k: names[k] for k in names}, spares, breakdown)
    _log(s, f"wrote {Path(s.out)} ({sizes.total:,} entries) in {time.time() - started:.0f} s")
    return breakdown
