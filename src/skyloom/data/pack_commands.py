"""`skyloom data pack`: tokenize documents into token shards, one directory per source."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from skyloom.commandline import add_command, add_config_arguments, add_group, option
from skyloom.tokenizer.corpus import DEFAULT_MAX_DOC_CHARS


@dataclass
class PackConfig:
    """`skyloom data pack`'s arguments."""

    sources: list[str] = option(
        positional=True, nargs="+", metavar="SOURCE", help="NAME=PATH or PATH (file, directory, glob)"
    )
    tokenizer: str = option(
        flags=("--tokenizer", "-t"),
        required=True,
        help="tokenizer directory (tokenizer.json + tokenizer_config.json naming eos_token)",
    )
    out: str = option(flags=("--out", "-o"), required=True, help="output directory; one sub-directory per source")
    fields: list[str] | None = option(
        None,
        flags=("--field",),
        append=True,
        metavar="NAME",
        help="record field holding the text; repeat to join several with a newline (default: text)",
    )
    workers: int = option(0, help="processes (0: one per CPU)")
    shard_bytes: int = option(64 << 20, help="input bytes per task / shard")
    skip_malformed: bool = option(False, help="skip malformed records (listed with file:line) instead of stopping")
    max_doc_chars: int = option(
        DEFAULT_MAX_DOC_CHARS,
        metavar="N",
        help="longest document: longer records are skipped and counted, longer text files split (default: %(default)s)",
    )
    overwrite: bool = option(False, help="delete a source's existing shards when the plan changed, instead of refusing")
    layout: str = option(
        "skyloom",
        choices=("skyloom", "datatrove"),
        help="file names: skyloom (shard_*.bin) or datatrove (*_unshuffled.ds + .ds.index + .ds.metadata, as "
        "datatrove's DocumentTokenizer writes them); both train",
    )
    quiet: bool = option(False, flags=("--quiet", "-q"), help="no progress bar")


DESCRIPTION = """\
Tokenize documents (a text field of JSONL / Parquet / CSV records, or whole .txt files; .gz read through),
append EOS to each, and write token shards (the skyloom-tokens format: OUT/SOURCE/shard_*.bin + index.json)
with exact token and document counts.

SOURCE is NAME=PATH or a bare PATH (then named after the file stem or directory); PATH is a file, a
directory or a glob. Repeat a name to put several paths into one source.

--layout datatrove writes the same tokens under datatrove's names (NAME_unshuffled.ds, .ds.index,
.ds.metadata: what its DocumentTokenizer writes with shuffle_documents=False), readable by datatrove's
DatatroveFileDataset and DocumentTokenizerMerger; a folder tokenized by datatrove is itself a training source.

Inputs are cut into tasks of about --shard-bytes (byte ranges of JSONL files, Parquet row groups, whole
gzip/text files); each task writes one shard and tasks run in --workers processes. The plan is saved as
OUT/SOURCE/pack_plan.json: running the command again skips finished shards (resume after a crash or
Ctrl-C), packs again only shards whose input files changed, and refuses a different tokenizer, --field or
--shard-bytes (unless --overwrite). Empty documents are skipped and counted;
a malformed record (bad JSON or UTF-8, no string text, a damaged .gz) stops packing with its file and line,
or is skipped and listed with --skip-malformed. A document over --max-doc-chars characters is skipped and
counted (a record) or split at line ends (a whole text file), so one gigantic line cannot exhaust memory.

examples:
  skyloom data pack --tokenizer tok/ --out tokens/ wiki_en=data/wiki/ zh_web=data/zh/*.jsonl.gz
  skyloom data pack -t tok/ -o tokens/ data/zh_tech.jsonl --field text --workers 8
  skyloom data pack -t tok/ -o tokens/ --layout datatrove web=runs/skypile/main
"""


def register(sub) -> None:
    group = add_group(sub, "data", "data pipeline: clean, filter, pack")
    p = add_command(
        group, "pack", "tokenize documents into token shards (per source, parallel, resumable)", DESCRIPTION
    )
    add_config_arguments(p, PackConfig)
    p.set_defaults(handler=_pack)


def _pack(args: argparse.Namespace) -> int:
    from skyloom.data.pack import pack
    from skyloom.tokenizer.corpus import InputError

    workers = args.workers or (os.cpu_count() or 1)
    try:
        summary = pack(
            args.sources,
            args.tokenizer,
            args.out,
            fields=args.fields or ["text"],
            workers=workers,
            shard_bytes=args.shard_bytes,
            skip_malformed=args.skip_malformed,
            overwrite=args.overwrite,
            progress=not args.quiet,
            max_doc_chars=args.max_doc_chars,
            layout=args.layout,
        )
    except (InputError, FileNotFoundError, ValueError) as err:
        print(f"skyloom: error: {err}", file=sys.stderr)
        return 2
    for line in summary.malformed[:50]:
        print(f"skipped malformed record: {line}", file=sys.stderr)
    if len(summary.malformed) > 50:
        print(f"... and {len(summary.malformed) - 50} more malformed records", file=sys.stderr)
    print(f"{'source':<24} {'tokens':>14} {'documents':>11} {'shards':>7}  path")
    for name, info in summary.sources.items():
        print(f"{name:<24} {info['tokens']:>14,} {info['documents']:>11,} {info['shards']:>7}  {info['path']}")
    s = summary
    rate = (
        f"{s.tokens_per_second:,.0f} tokens/s, {s.characters / s.seconds / 1e6:.2f} M chars/s, "
        f"{s.bytes / s.seconds / 1e6:.1f} MB/s"
        if s.seconds > 0 and s.tasks_run
        else "nothing to do"
    )
    redone = f" ({s.tasks_redone} redone: inputs changed)" if s.tasks_redone else ""
    print(
        f"this run: {s.tasks_run} shard(s) written{redone}, {s.tasks_skipped} already finished; {s.tokens:,} tokens, "
        f"{s.documents:,} documents in {s.seconds:.1f} s ({rate}; {workers} workers)"
    )
    for line in s.over_long[:20]:
        print(f"skipped over-long document: {line}", file=sys.stderr)
    if s.empty or s.malformed or s.over_long:
        print(
            f"skipped: {s.empty:,} empty documents, {len(s.malformed):,} malformed records, "
            f"{len(s.over_long):,} over-long documents (> {args.max_doc_chars:,} characters)"
        )
    if s.split:
        print(
            f"split: {len(s.split):,} text file(s) longer than {args.max_doc_chars:,} characters, into documents "
            f"of at most that size"
        )
    return 0
