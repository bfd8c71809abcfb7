"""Training the base vocabulary: a byte-fallback BPE over the non-Chinese part of a bilingual corpus.

Table 2's first row is "Latin based words & subwords": LLaMA's vocabulary, trained on mostly-Latin text.
skyloom trains its own base on whatever mix it is given, but leaves the Han characters out of the base
trainer's view (each document is cut at its Han runs and the pieces are counted separately), so the base
spends its entries on Latin words, code, numbers, punctuation and whitespace — Chinese characters and
words come from the extension, by frequency, exactly as in the report.

The layout follows LLaMA: the 256 byte tokens `<0x00>`…`<0xFF>` come first, then the trained entries;
characters outside the trained alphabet (below `character_coverage`) fall back to their UTF-8 bytes, so
nothing is ever unknown. Digits are always single tokens (a Digits pre-tokenizer).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from skyloom.tokenizer.text import HAN_RUN, PRETOKENIZE_PATTERN, is_han

BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def pre_tokenizer_json() -> dict:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PRETOKENIZE_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "Digits", "individual_digits": True},
        ],
    }


def decoder_json() -> dict:
    return {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}


def alphabet_size(char_counts: Counter, coverage: float) -> int:
    """How many of the most frequent non-Han characters cover `coverage` of all non-Han occurrences."""
    counts = sorted((c for ch, c in char_counts.items() if not is_han(ch)), reverse=True)
    total = sum(counts)
    if total == 0:
        return 0
    running = 0
    for i, c in enumerate(counts, 1):
        running += c
        if running >= coverage * total:
            return i
    return len(counts)


def non_han_fragments(texts: Iterable[str]) -> Iterator[list[str]]:
    """Batches of document fragments with the Han runs cut out (each fragment is pre-tokenized alone)."""
    batch: list[str] = []
    for text in texts:
        batch.extend(piece for piece in HAN_RUN.split(text) if piece)
        if len(batch) >= 4096:
            yield batch
            batch = []
    if batch:
        yield batch


def train_base(
    texts: Iterable[str],
    size: int,
    alphabet: int,
    min_frequency: int = 2,
    max_token_length: int | None = 16,
    show_progress: bool = False,
    on_text: Callable[[int], None] | None = None,
) -> dict:
    """A base tokenizer.json document with exactly `size` entries (256 bytes + alphabet + merges)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    if size <= 256:
        raise ValueError(f"base size {size} must exceed the 256 byte tokens")
    tok = Tokenizer(models.BPE(byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=size - 256,
        min_frequency=min_frequency,
        show_progress=show_progress,
        limit_alphabet=alphabet or None,
        max_token_length=max_token_length,
        special_tokens=[],
    )

    def batches():
        for batch in non_han_fragments(texts):
            if on_text:
                on_text(sum(len(t) for t in batch))
            yield batch

    tok.train_from_iterator(batches(), trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    learned = sorted(trained["vocab"].items(), key=lambda kv: kv[1])
    if len(learned) < size - 256:
        raise ValueError(
            f"the corpus supports only {len(learned) + 256} base entries (asked for {size}): "
            f"give more text, lower --base-size, or lower --min-frequency"
        )
    vocab = {tok_: i for i, tok_ in enumerate(BYTE_TOKENS)}
    for token, _ in learned:
        if token in vocab:
            raise ValueError(f"trained token {token!r} collides with a byte token")
        vocab[token] = len(vocab)
    merges = [m.split(" ", 1) if isinstance(m, str) else list(m) for m in trained["merges"]]
    return _skeleton(vocab, merges)


def _skeleton(vocab: dict[str, int], merges: list[list[str]]) -> dict:
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer_json(),
        "post_processor": None,
        "decoder": decoder_json(),
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": merges,
        },
    }


# --- the small byte-level BPE a recipe trains on the fly (train/prepare.py) ---------------------------------

BYTE_LEVEL_EOS = "<|endoftext|>"
BYTE_LEVEL_SPECIALS = [BYTE_LEVEL_EOS, "<|pad|>", "<|unk|>"]


def train_byte_level_bpe(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int, trained_on: Iterable[str] = ()
) -> Path:
    """A GPT-2-style byte-level BPE tokenizer directory (tokenizer.json + tokenizer_config.json) of `vocab_size`
    entries: digits split one by one, specials EOS `<|endoftext|>`, `<|pad|>`, `<|unk|>` first. Unlike
    `train_base` (the Table-2 base of `skyloom tokenizer train`) it needs no Chinese extension: small recipes
    name a few raw files and want a working tokenizer in seconds."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BYTE_LEVEL_SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / "tokenizer.json.tmp"
    tok.save(str(tmp))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": BYTE_LEVEL_EOS,
                "pad_token": "<|pad|>",
                "unk_token": "<|unk|>",
                "model_max_length": 1 << 20,
                "trained_on": [str(f) for f in trained_on][:50],
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )
    tmp.replace(out_dir / "tokenizer.json")
    return out_dir
