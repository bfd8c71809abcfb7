"""`skyloom tokenizer train|stats|convert`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Literal

from skyloom.commandline import add_command, add_config_arguments, add_group, option
from skyloom.tokenizer.corpus import DEFAULT_MAX_DOC_CHARS

TRAIN_DESCRIPTION = """\
Train a bilingual byte-fallback BPE tokenizer the Skywork way (report §3.3, Table 2):

  1. base vocabulary: a BPE with byte fallback (<0x00>..<0xFF>) and single-digit numbers, trained on the
     non-Chinese part of INPUT (Latin words, code, punctuation) -- or, with --extend, an existing
     tokenizer.json or SentencePiece .model (e.g. LLaMA's or Mistral's), every id kept;
  2. the N most frequent Chinese characters and symbols, full-width digits/letters included (--chinese-chars);
  3. the most frequent Chinese multi-character words, counted with jieba on INPUT (plus --freq-list),
     as many as the total leaves (--chinese-words);
  4. reserved specials <unk> <s> </s> <pad> (those the base lacks) and spares <reserved_N> (--reserved).

The size is exact: --total = base + chars + words + reserved (defaults 32,000 + 8,000 + 25,519 + 17 =
65,536). If INPUT lacks enough distinct Chinese characters/words, jieba's bundled dictionary fills the rest
in its frequency order (--fill jieba), or training stops naming the shortfall (--fill none).

Writes OUT/tokenizer.json, tokenizer_config.json, special_tokens_map.json (loadable by tokenizers and
transformers.PreTrainedTokenizerFast) and vocab_breakdown.json (the rows of Table 2).

examples:
  skyloom tokenizer train corpus/*.jsonl --out tok/ --field text
  skyloom tokenizer train zh.jsonl en.txt --out tok-mistral/ --extend mistral-7b-v0.1.model
  skyloom tokenizer train data/ --out tok-small/ --total 4000 --base-size 1500 --chinese-chars 1000
"""

EXTEND_DESCRIPTION = """\
Extend an existing tokenizer with Chinese entries -- the report's own procedure (§3.3: LLaMA's vocabulary +
8,000 Chinese characters + ~25k Chinese words + 17 reserved = 65,536). Same as `skyloom tokenizer train
--extend BASE`: every id of BASE is kept and its segmentation of text it already covered (English) is
unchanged; new entries are BPE merges ranked after the base's, so Chinese characters and frequent jieba words
(counted on INPUT, plus --freq-list) become single tokens; then the missing specials and spare reserved ids.
--total is exact: --chinese-words defaults to what BASE, --chinese-chars and --reserved leave.

examples:
  skyloom tokenizer extend mistral-7b-v0.1.model zh_corpus/ --out tok-mistral-zh/
  skyloom tokenizer extend llama/tokenizer.model zh.jsonl --out tok/ --total 40000 --chinese-chars 4000
"""

STATS_DESCRIPTION = """\
Measure a tokenizer on text files: characters/token, bytes/token, tokens per whitespace word (English),
share of byte-fallback tokens, unknown-token rate, round-trip failures and encode throughput (tokenizers
batch encoding, --threads threads). TOKENIZER and --vs accept a tokenizer directory, a tokenizer.json or a
SentencePiece .model. With --vs both are shown per file, with the ratio OTHER/TOKENIZER.

examples:
  skyloom tokenizer stats tok/ data/zh_*.jsonl wikitext2/test.txt
  skyloom tokenizer stats tok/ zh_tech.jsonl --vs mistral-7b-v0.1.model --threads 1
"""


_MAX_DOC_CHARS_HELP = (
    "longest document: longer records are skipped and counted, longer text files split, "
    "so one gigantic line cannot exhaust memory (default: %(default)s)"
)


@dataclass(kw_only=True)
class VocabOptions:
    """Options shared by `tokenizer train` and `tokenizer extend` (their defaults are TrainSettings'; a test
    keeps the two equal)."""

    out: str = option(flags=("--out", "-o"), required=True, help="output tokenizer directory")
    fields: list[str] | None = option(
        None,
        flags=("--field",),
        append=True,
        metavar="NAME",
        help="JSON/Parquet/CSV field holding text; repeat to join several (default: text)",
    )
    total: int = option(65536, help="exact final vocabulary size")
    chinese_chars: int = option(8000, help="Chinese characters/symbols to add")
    chinese_words: int | None = option(
        None, help="Chinese words to add (default: what --total leaves; if given, must add up)"
    )
    reserved: int = option(17, help="new reserved ids: missing specials + spares")
    freq_lists: list[str] = option(
        [],
        flags=("--freq-list",),
        append=True,
        metavar="FILE",
        help="extra 'entry count' lines (jieba dict format) added to the corpus counts",
    )
    freq_list_weight: float = option(1.0, help="multiplier for --freq-list counts")
    jieba_list: bool = option(
        False,
        help="also count jieba's bundled dictionary frequencies, scaled so its words weigh as much as the corpus' "
        "(generic words the input lacks; with --word-rank bpe-runs --chinese-chars 6000: the most Chinese per "
        "token on unseen news, docs/tokenizer.md)",
    )
    fill: Literal["jieba", "none"] = option(
        "jieba", choices=("jieba", "none"), help="what supplies entries the corpus lacks"
    )
    min_word_count: int = option(2, help="corpus words seen fewer times are not candidates")
    word_rank: Literal["count", "savings", "bpe", "bpe-runs"] = option(
        "count",
        choices=("count", "savings", "bpe", "bpe-runs"),
        help="word selection: by count; by count x (characters - 1), the tokens saved; 'bpe': merges "
        "learned on the counted words, each the one saving the most tokens given those before it; 'bpe-runs': "
        "the same on whole Han runs, no jieba (entries may be phrases; the most Chinese per token)",
    )
    no_hmm: bool = option(False, help="jieba without its HMM for unseen words")
    workers: int = option(0, help="processes for jieba segmentation (0: one per CPU)")
    max_bytes: int | None = option(None, help="read at most about this much text")
    max_doc_chars: int = option(DEFAULT_MAX_DOC_CHARS, metavar="N", help=_MAX_DOC_CHARS_HELP)
    bos_token: str = option("<s>", help="BOS token (the base's own is kept)")
    eos_token: str = option("</s>", help="EOS token (the base's own is kept)")
    unk_token: str = option("<unk>", help="UNK token (the base's own is kept)")
    pad_token: str = option("<pad>", help="PAD token (the base's own is kept)")
    quiet: bool = option(False, flags=("--quiet", "-q"), help="no progress output")


_INPUTS_HELP = "text files: .jsonl/.json lines, .parquet, .csv, .txt (optionally .gz), dirs or globs"


@dataclass(kw_only=True)
class TokenizerTrainConfig(VocabOptions):
    """`skyloom tokenizer train`'s arguments."""

    inputs: list[str] = option(positional=True, nargs="+", metavar="INPUT", help=_INPUTS_HELP)
    base_size: int = option(
        32000, help="base BPE entries incl. 256 byte tokens (ignored with --extend: the base's size)"
    )
    extend: str | None = option(
        None,
        metavar="BASE",
        help="extend this tokenizer.json / SentencePiece .model / "
        "directory instead of training a base (= tokenizer extend)",
    )
    character_coverage: float = option(
        0.9995, help="share of non-Chinese character occurrences the base alphabet covers (rest: bytes)"
    )
    min_frequency: int = option(2, help="minimum pair count for a base BPE merge")
    max_token_length: int = option(16, help="longest base BPE token (characters)")


@dataclass(kw_only=True)
class TokenizerExtendConfig(VocabOptions):
    """`skyloom tokenizer extend`'s arguments."""

    extend: str = option(
        positional=True,
        metavar="BASE",
        help="the tokenizer to extend: a tokenizer.json, a SentencePiece model or a directory holding one",
    )
    inputs: list[str] = option(positional=True, nargs="+", metavar="INPUT", help=_INPUTS_HELP)


@dataclass
class TokenizerStatsConfig:
    """`skyloom tokenizer stats`'s arguments."""

    tokenizer: str = option(
        positional=True, metavar="TOKENIZER", help="a tokenizer directory, a tokenizer.json or a SentencePiece .model"
    )
    files: list[str] = option(positional=True, nargs="+", metavar="FILE", help="text files to measure on")
    vs: str | None = option(None, metavar="OTHER", help="a second tokenizer to compare side by side")
    fields: list[str] | None = option(
        None, flags=("--field",), append=True, metavar="NAME", help="text field (default: text)"
    )
    threads: int | None = option(
        None, help="encoder threads (RAYON_NUM_THREADS; 1 gives a per-core figure); default: all cores"
    )
    max_docs: int | None = option(None, help="use at most this many documents per file")
    max_doc_chars: int = option(DEFAULT_MAX_DOC_CHARS, metavar="N", help=_MAX_DOC_CHARS_HELP)
    json: bool = option(False, help="print JSON instead of a table")


@dataclass
class TokenizerConvertConfig:
    """`skyloom tokenizer convert`'s arguments."""

    source: str = option(positional=True, metavar="MODEL", help="a SentencePiece .model (or tokenizer.json)")
    out: str = option(positional=True, metavar="OUT", help="tokenizer directory to write")


def register(sub) -> None:
    group = add_group(sub, "tokenizer", "train, extend, measure and convert tokenizers")

    p = add_command(
        group, "train", "train a bilingual BPE tokenizer with a Chinese vocabulary extension", TRAIN_DESCRIPTION
    )
    add_config_arguments(p, TokenizerTrainConfig)
    p.set_defaults(handler=_train)
    p = add_command(
        group,
        "extend",
        "extend an existing tokenizer (tokenizer.json / SentencePiece .model) with "
        "Chinese characters, words and reserved ids, every existing id kept",
        EXTEND_DESCRIPTION,
    )
    add_config_arguments(p, TokenizerExtendConfig)
    p.set_defaults(handler=_train)

    p = add_command(group, "stats", "compression and speed of a tokenizer on text files", STATS_DESCRIPTION)
    add_config_arguments(p, TokenizerStatsConfig)
    p.set_defaults(handler=_stats)

    p = add_command(
        group,
        "convert",
        "write a SentencePiece .model (or tokenizer.json) as a tokenizer directory",
        "Convert a SentencePiece .model into a tokenizer directory (tokenizer.json with every id kept,\n"
        "tokenizer_config.json, special_tokens_map.json) that skyloom and transformers load.",
    )
    add_config_arguments(p, TokenizerConvertConfig)
    p.set_defaults(handler=_convert)


def _fail(err: Exception) -> int:
    print(f"skyloom: error: {err}", file=sys.stderr)
    return 2


def _train(args: argparse.Namespace) -> int:
    from skyloom.tokenizer.corpus import InputError
    from skyloom.tokenizer.train import TrainSettings, train_tokenizer

    base_options = {
        key: getattr(args, key)
        for key in ("base_size", "character_coverage", "min_frequency", "max_token_length")
        if hasattr(args, key)
    }
    settings = TrainSettings(
        inputs=args.inputs,
        out=args.out,
        fields=args.fields or ["text"],
        total=args.total,
        chinese_chars=args.chinese_chars,
        chinese_words=args.chinese_words,
        reserved=args.reserved,
        extend=args.extend,
        freq_lists=args.freq_lists,
        freq_list_weight=args.freq_list_weight,
        jieba_list=args.jieba_list,
        fill=args.fill,
        min_word_count=args.min_word_count,
        word_rank=args.word_rank,
        **base_options,
        jieba_hmm=not args.no_hmm,
        workers=args.workers,
        max_bytes=args.max_bytes,
        max_doc_chars=args.max_doc_chars,
        bos_token=args.bos_token,
        eos_token=args.eos_token,
        unk_token=args.unk_token,
        pad_token=args.pad_token,
        progress=not args.quiet,
    )
    try:
        breakdown = train_tokenizer(settings)
    except (InputError, FileNotFoundError, ValueError) as err:
        from skyloom.config import ConfigError

        if isinstance(err, ConfigError):
            raise
        return _fail(err)
    print(f"{'category':<40} {'size':>8}")
    for row in breakdown["rows"]:
        print(f"{row['category']:<40} {row['size']:>8,}")
    print(f"{'Total':<40} {breakdown['total']:>8,}")
    corpus = breakdown["corpus"]
    if corpus["over_long_skipped"] or corpus["text_files_split"]:
        print(
            f"(--max-doc-chars {args.max_doc_chars:,}: {corpus['over_long_skipped']:,} over-long documents "
            f"skipped, {corpus['text_files_split']:,} text file(s) split)"
        )
    words = breakdown["rows"][2]
    if words["helpers"]:
        print(f"({words['helpers']:,} of the word entries are sub-word helpers that make longer words reachable)")
    return 0


def _stats(args: argparse.Namespace) -> int:
    if args.threads:
        os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before the encoder's thread pool starts
    from skyloom.tokenizer.corpus import InputError, SizeGuard, expand_inputs, iter_documents
    from skyloom.tokenizer.stats import COLUMNS, format_row, format_table, load_tokenizer, measure

    try:
        SizeGuard(args.max_doc_chars)  # refuses a limit ≤ 0 before any work
        tokenizers = [("A", args.tokenizer, load_tokenizer(args.tokenizer))]
        if args.vs:
            tokenizers.append(("B", args.vs, load_tokenizer(args.vs)))
        files = expand_inputs(args.files)
        results = []
        guards = []
        for path in files:
            texts = []
            guard = SizeGuard(args.max_doc_chars)
            for doc in iter_documents(path, args.fields or ["text"], guard=guard):
                texts.append(doc.text)
                if args.max_docs and len(texts) >= args.max_docs:
                    break
            per = {label: measure(tok, texts, path.name) for label, _, tok in tokenizers}
            results.append((path, per))
            guards.append(guard)
    except (InputError, FileNotFoundError, ValueError) as err:
        return _fail(err)
    if args.json:
        print(
            json.dumps(
                {
                    "tokenizers": {
                        label: {"path": str(p), "vocab_size": tok.vocab_size} for label, p, tok in tokenizers
                    },
                    "max_doc_chars": args.max_doc_chars,
                    "files": [
                        {
                            "file": str(path),
                            **{label: s.as_dict() for label, s in per.items()},
                            "over_long_skipped": len(g.skipped),
                            "split": bool(g.split),
                        }
                        for (path, per), g in zip(results, guards)
                    ],
                },
                indent=1,
            )
        )
        return 0
    for label, path, tok in tokenizers:
        print(f"{label}: {path} ({tok.vocab_size:,} entries)")
    rows = []
    for path, per in results:
        for label, s in per.items():
            rows.append(format_row(f"{path.name} [{label}]" if args.vs else path.name, s))
        if args.vs:
            a, b = per["A"], per["B"]
            rows.append(
                [
                    "  B/A",
                    "",
                    "",
                    f"{b.tokens / max(a.tokens, 1):.3f}",
                    f"{b.chars_per_token / a.chars_per_token:.3f}" if a.tokens else "-",
                    f"{b.bytes_per_token / a.bytes_per_token:.3f}" if a.tokens else "-",
                    "",
                    "",
                    "",
                    "",
                    f"{b.chars_per_second / a.chars_per_second:.2f}" if a.chars_per_second else "-",
                ]
            )
    print(format_table(rows, ("file", *COLUMNS)))
    skipped, split = sum(len(g.skipped) for g in guards), sum(len(g.split) for g in guards)
    if skipped or split:
        print(
            f"(--max-doc-chars {args.max_doc_chars:,}: {skipped:,} over-long documents skipped, "
            f"{split:,} text file(s) split)"
        )
    threads = os.environ.get("RAYON_NUM_THREADS", "all")
    print(f"(throughput: tokenizers encode_batch, {threads} thread(s); tok/word only for mostly non-Chinese text)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from skyloom.tokenizer.extend import load_base
    from skyloom.tokenizer.files import write_tokenizer_dir

    try:
        base = load_base(args.source)
    except (FileNotFoundError, ValueError) as err:
        return _fail(err)
    write_tokenizer_dir(args.out, base.doc, base.specials, [])
    print(f"wrote {args.out}")
    return 0
