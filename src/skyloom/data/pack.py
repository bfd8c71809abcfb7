"""Packing: documents → token ids + EOS → token shards, one directory per source (`skyloom data pack`).

Work is planned before anything is tokenized: each source's files are cut into tasks of about
`shard_bytes` of input (byte ranges of uncompressed JSON-lines files, Parquet row groups, whole files for
gzip/text/CSV), and every task writes exactly one shard named by its index. The plan is saved next to the
shards (`pack_plan.json`), so

* parallel workers never write the same file (one task, one shard name);
* a re-run skips every task whose shard is finished (its metadata JSON exists — `write_shard` writes it
  last) and whose input files are unchanged (size, mtime): that is the resume, and after fixing a
  malformed file only the shards that read it are packed again;
* a re-run with a different tokenizer, text fields, shard size or --max-doc-chars is refused (or, with
  `overwrite`, starts the source afresh) instead of mixing two packings in one directory; a plan saved before
  --max-doc-chars existed (no `max_doc_chars`) was packed with no size limit, so its source is finished the
  same way, with a note (see `reconcile_plan`).

Counts are exact: each shard's metadata holds its tokens and documents, `index.json` sums them, and the
summary reports empty documents (skipped: an empty document would be a lone EOS), malformed records, and
documents over `max_doc_chars` (records skipped, text files split: see `SizeGuard`). A task that fails
leaves no temporary file behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from skyloom.data.shards import LAYOUTS, finalize_index, finished_shards, shard_files, shard_name, write_shard
from skyloom.tokenizer.corpus import (
    DEFAULT_MAX_DOC_CHARS,
    InputError,
    SizeGuard,
    expand_inputs,
    file_format,
    is_gzip,
    iter_documents,
)

PLAN_FILE = "pack_plan.json"
PLAN_FORMAT = "skyloom-pack-plan"


@dataclass
class Piece:
    """Part of one input file: a byte range (JSON lines), a row-group range (Parquet), or the whole file."""

    path: str
    start: int = 0
    end: int | None = None
    bytes: int = 0


@dataclass
class Task:
    source: str
    name: str
    pieces: list[Piece] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.pieces)


@dataclass
class SourceSpec:
    name: str
    files: list[Path]


def parse_sources(specs: Sequence[str]) -> list[SourceSpec]:
    """`NAME=PATH` (a file, directory or glob) or a bare PATH (named after the file's stem / the directory).
    Several specs with one name form one source, in the order given."""
    by_name: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name or os.sep in name:
            name, path = "", spec
        files = expand_inputs([path])
        if not name:
            p = Path(path)
            name = p.name if p.is_dir() else _stem(p)
        by_name.setdefault(name, []).extend(files)
    for name in by_name:
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"source name {name!r}: use letters, digits, '-', '_' or '.' (NAME=PATH sets it)")
    return [SourceSpec(name, files) for name, files in by_name.items()]


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json", ".ndjson", ".parquet", ".csv", ".txt", ".text", ".md"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name or "source"


def file_pieces(path: Path, shard_bytes: int) -> list[Piece]:
    """How one file is cut: byte ranges for JSON lines, row groups for Parquet, else the whole file."""
    size = path.stat().st_size
    fmt = file_format(path)
    if fmt == "lines" and not is_gzip(path) and size > shard_bytes:
        cuts = _line_aligned_cuts(path, size, shard_bytes)
        return [Piece(str(path), start, end, end - start) for start, end in zip(cuts, cuts[1:])]
    if fmt == "parquet":
        from skyloom.tokenizer.corpus import pyarrow_parquet

        meta = pyarrow_parquet().ParquetFile(path).metadata
        pieces, first, acc = [], 0, 0
        for g in range(meta.num_row_groups):
            acc += meta.row_group(g).total_byte_size
            if acc >= shard_bytes or g == meta.num_row_groups - 1:
                pieces.append(Piece(str(path), first, g + 1, acc))
                first, acc = g + 1, 0
        return pieces or [Piece(str(path), 0, 0, 0)]
    return [Piece(str(path), 0, None, size)]


def _line_aligned_cuts(path: Path, size: int, shard_bytes: int) -> list[int]:
    """Offsets 0 = c0 < c1 < … < size, each at the start of a line, about `shard_bytes` apart: every piece
    holds whole records (a line longer than `shard_bytes` makes one longer piece, never an empty one; trailing blank
    lines stay with the last records)."""
    cuts = [0]
    with open(path, "rb") as f:
        while cuts[-1] + shard_bytes < size:
            f.seek(cuts[-1] + shard_bytes - 1)
            f.readline()  # to the end of the line holding the byte before the nominal cut
            pos = f.tell()
            if pos >= size or (size - pos < shard_bytes and not f.read(size - pos).strip()):
                break  # nothing or only blank lines left: no piece (and no shard) without a document
            cuts.append(pos)
    cuts.append(size)
    return cuts


def plan_source(source: SourceSpec, shard_bytes: int) -> list[Task]:
    """Group the pieces of a source's files into tasks of about `shard_bytes` each."""
    tasks: list[Task] = []
    current: list[Piece] = []
    for path in source.files:
        for piece in file_pieces(path, shard_bytes):
            current.append(piece)
            if sum(p.bytes for p in current) >= shard_bytes:
                tasks.append(Task(source.name, f"{len(tasks):05d}", current))
                current = []
    if current:
        tasks.append(Task(source.name, f"{len(tasks):05d}", current))
    return tasks


def _stamp(path: str) -> list[int]:
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def _plan_document(
    source: SourceSpec,
    tasks: list[Task],
    tokenizer_id: str,
    fields: Sequence[str],
    shard_bytes: int,
    max_doc_chars: int,
    layout: str = "skyloom",
) -> dict:
    """The plan as saved: global settings, and per task its pieces with each file's (size, mtime)."""
    stamps = {str(p): _stamp(str(p)) for p in source.files}
    return {
        **({"layout": layout} if layout != "skyloom" else {}),  # absent: skyloom (plans from before --layout)
        "format": PLAN_FORMAT,
        "source": source.name,
        "tokenizer": tokenizer_id,
        "fields": list(fields),
        "shard_bytes": shard_bytes,
        "max_doc_chars": max_doc_chars,
        "tasks": [{"name": t.name, "pieces": [asdict(p) | {"stamp": stamps[p.path]} for p in t.pieces]} for t in tasks],
    }


GLOBAL_KEYS = ("format", "layout", "source", "tokenizer", "fields", "shard_bytes", "max_doc_chars")
# What a task's SizeGuard gets for a source packed with no size limit (`max_doc_chars: null` in its plan).
NO_SIZE_LIMIT = sys.maxsize // 16


def reconcile_plan(directory: Path, plan: dict, overwrite: bool) -> tuple[set[str], list[str]]:
    """Save `plan` and return (names of finished shards still valid, names of shards removed as stale).

    Settings that change every shard (tokenizer, fields, shard size, size guard) are refused unless `overwrite`; a task
    whose input files changed (or that no longer exists) loses its shard and is done again, so fixing one
    malformed file re-does only the shards that read it.

    A saved plan without `max_doc_chars` (or with null) comes from before --max-doc-chars: its shards were packed
    with no document size limit. Resuming it neither refuses (which would force a full re-pack) nor applies the
    limit to the rest (one directory, two rules): `plan["max_doc_chars"]` is set to None — the rest is packed
    with no limit, and the saved plan says so for later resumes — and a note names --overwrite, which re-packs
    the source with the limit."""
    path = directory / PLAN_FILE
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    finished = {shard_name(m) for m in finished_shards(directory)}
    stale: set[str] = set()
    if old is not None:
        unguarded = old.get("max_doc_chars") is None and not overwrite
        if unguarded:
            plan["max_doc_chars"] = None
        changed = [k for k in GLOBAL_KEYS if old.get(k) != plan.get(k)]
        if changed and not overwrite:
            raise ValueError(
                f"{directory}: already holds shards packed with a different "
                f"{', '.join(changed)}; use another --out, or --overwrite to re-pack this source"
            )
        if unguarded:
            print(
                f"note: {path} predates --max-doc-chars: its shards were packed with no document size limit, and "
                "the rest of this source is packed the same way (--overwrite re-packs it with the limit)",
                file=sys.stderr,
            )
        old_tasks = {} if changed else {t["name"]: t for t in old.get("tasks", [])}
        new_tasks = {t["name"]: t for t in plan["tasks"]}
        stale = {n for n in finished if old_tasks.get(n) is None or old_tasks[n] != new_tasks.get(n)}
    elif finished or any(directory.glob("shard_*")) or any(directory.glob("*.ds")):
        if not overwrite:
            raise ValueError(f"{directory}: holds shards but no {PLAN_FILE}; use another --out or --overwrite")
        stale = set(finished)
    if overwrite and old is None:
        stale = set(finished)
    directory.mkdir(parents=True, exist_ok=True)
    for name in stale:
        for file in shard_files(name):  # metadata first: a half-deleted shard reads as unfinished
            (directory / file).unlink(missing_ok=True)
    if stale:
        (directory / "index.json").unlink(missing_ok=True)
    tmp = path.with_name(PLAN_FILE + ".tmp")
    tmp.write_text(json.dumps(plan, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return finished - stale, sorted(stale)


# --- the work of one task (in a worker process) ---------------------------------------------------------

_WORKER: dict = {}


def _init_worker(tokenizer_dir: str, one_thread: bool) -> None:
    if one_thread:
        os.environ["RAYON_NUM_THREADS"] = "1"  # one encoder thread per worker process
    from skyloom.tokenizer.loading import TextTokenizer

    _WORKER["tokenizer"] = TextTokenizer.from_dir(tokenizer_dir)


@dataclass
class TaskResult:
    source: str
    name: str
    tokens: int = 0
    documents: int = 0
    characters: int = 0
    bytes: int = 0
    empty: int = 0
    malformed: list[str] = field(default_factory=list)
    over_long: list[str] = field(default_factory=list)  # records skipped for --max-doc-chars
    split: list[str] = field(default_factory=list)  # text files split for --max-doc-chars
    error: str | None = None


def encode_documents(texts: Iterable[str], tokenizer, batch_docs: int = 256) -> Iterator[np.ndarray]:
    """Each text's token ids followed by EOS, as uint32 — what a shard holds per document — encoded `batch_docs`
    texts at a time (the one place documents become shard contents: `skyloom data pack` and a recipe's raw
    sources alike)."""
    eos = tokenizer.eos_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.source} has no eos_token; cannot pack documents")
    batch: list[str] = []

    def flush() -> Iterator[np.ndarray]:
        for ids in tokenizer.encode_batch(batch):
            arr = np.empty(len(ids) + 1, dtype=np.uint32)
            arr[:-1] = ids
            arr[-1] = eos
            yield arr
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= batch_docs:
            yield from flush()
    if batch:
        yield from flush()


def run_task(
    task: Task,
    out: str,
    fields: Sequence[str],
    skip_malformed: bool,
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
    batch_docs: int = 256,
    layout: str = "skyloom",
) -> TaskResult:
    """Tokenize one task's documents (+EOS) and write its shard; a task that fails leaves no temporary file."""
    tok = _WORKER["tokenizer"]
    eos = tok.eos_id
    result = TaskResult(task.source, task.name, bytes=task.bytes)
    on_error = (lambda err: result.malformed.append(str(err))) if skip_malformed else None
    guard = SizeGuard(max_doc_chars, skipped=result.over_long, split=result.split)

    def texts() -> Iterator[str]:
        for piece in task.pieces:
            for doc in iter_documents(piece.path, fields, piece.start, piece.end, on_error=on_error, guard=guard):
                if not doc.text:
                    result.empty += 1
                    continue
                result.characters += len(doc.text)
                yield doc.text

    directory = Path(out) / task.source
    try:
        meta = write_shard(
            directory,
            task.name,
            encode_documents(texts(), tok, batch_docs),
            vocab_size=tok.vocab_size,
            source=task.source,
            tokenizer=tok.tokenizer_id,
            eos_id=eos,
            layout=layout,
            tokenizer_path=str((Path(tok.source) / "tokenizer.json").resolve()),
        )
    except Exception as err:
        # A failed task leaves no temporary file; an interrupted one (Ctrl-C, kill) may, and the next run
        # overwrites it.
        for file in shard_files(task.name):
            (directory / f"{file}.tmp").unlink(missing_ok=True)
        if not isinstance(err, InputError):
            raise
        result.error = str(err)
        return result
    result.tokens, result.documents = meta["tokens"], meta["documents"]
    return result


def _run_task_star(args) -> TaskResult:
    return run_task(*args)


# --- the whole job -------------------------------------------------------------------------------------


@dataclass
class PackSummary:
    sources: dict[str, dict]
    tasks_run: int
    tasks_skipped: int
    tasks_redone: int  # finished shards whose inputs changed, removed and written again
    tokens: int  # written by this run
    documents: int
    characters: int
    bytes: int
    empty: int
    malformed: list[str]
    over_long: list[str]  # records skipped for max_doc_chars
    split: list[str]  # text files split for max_doc_chars
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def pack(
    specs: Sequence[str] | Sequence[SourceSpec],
    tokenizer: str | Path,
    out: str | Path,
    fields: Sequence[str] = ("text",),
    workers: int = 1,
    shard_bytes: int = 64 << 20,
    skip_malformed: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    max_doc_chars: int = DEFAULT_MAX_DOC_CHARS,
    layout: str = "skyloom",
) -> PackSummary:
    """Pack every source; returns what this run did and each source's final index. Documents over
    `max_doc_chars` characters are skipped (records) or split (text files) and counted (see `SizeGuard`).
    `layout` "datatrove" writes each shard as datatrove's DocumentTokenizer would (`data.shards`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    from skyloom.tokenizer.loading import TextTokenizer

    if shard_bytes <= 0:
        raise ValueError(f"--shard-bytes must be positive, got {shard_bytes}")
    SizeGuard(max_doc_chars)  # refuses a limit ≤ 0 before any work
    tok = TextTokenizer.from_dir(tokenizer)
    if tok.eos_id is None:
        raise ValueError(
            f"{tokenizer}: the tokenizer names no eos_token (tokenizer_config.json); "
            f"packing appends EOS to every document"
        )
    sources = [s if isinstance(s, SourceSpec) else None for s in specs]
    if any(s is None for s in sources):
        sources = parse_sources([str(s) for s in specs])
    out = Path(out)
    pending: list[Task] = []
    limits: dict[str, int] = {}  # per source: its plan's max_doc_chars (a plan from before the guard: none)
    skipped = redone = 0
    for source in sources:
        tasks = plan_source(source, shard_bytes)
        directory = out / source.name
        plan = _plan_document(source, tasks, tok.tokenizer_id, fields, shard_bytes, max_doc_chars, layout)
        done, removed = reconcile_plan(directory, plan, overwrite)
        limits[source.name] = NO_SIZE_LIMIT if plan["max_doc_chars"] is None else plan["max_doc_chars"]
        redone += len(removed)
        for task in tasks:
            if task.name in done:
                skipped += 1
            else:
                pending.append(task)

    started = time.time()
    bar = None
    if progress and pending:
        from skyloom.progress import Progress

        bar = Progress(sum(t.bytes for t in pending), "pack", "B", unit_scale=True)
    results: list[TaskResult] = []
    jobs = [(t, str(out), list(fields), skip_malformed, limits[t.source], 256, layout) for t in pending]
    try:
        if workers <= 1 or len(pending) <= 1:
            _WORKER["tokenizer"] = tok
            iterator = map(_run_task_star, jobs)
            _consume(iterator, results, bar)
        else:
            import multiprocessing as mp

            # spawn, never fork: forking a process whose torch/OpenMP/rayon threads are running can deadlock.
            with mp.get_context("spawn").Pool(
                min(workers, len(pending)), initializer=_init_worker, initargs=(str(tok.source), True)
            ) as pool:
                _consume(pool.imap_unordered(_run_task_star, jobs), results, bar)
    except PackError:  # leaving the pool terminated the tasks still running: remove what they were writing
        _remove_temporary_files(out, pending)
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.time() - started

    indexes = {}
    for source in sources:
        directory = out / source.name
        if finished_shards(directory):
            index = finalize_index(directory)
            indexes[source.name] = {k: index[k] for k in ("tokens", "documents")} | {
                "shards": len(index["shards"]),
                "path": str(directory),
            }
    malformed = [m for r in results for m in r.malformed]
    return PackSummary(
        sources=indexes,
        tasks_run=len(results),
        tasks_skipped=skipped,
        tasks_redone=redone,
        tokens=sum(r.tokens for r in results),
        documents=sum(r.documents for r in results),
        characters=sum(r.characters for r in results),
        bytes=sum(r.bytes for r in results),
        empty=sum(r.empty for r in results),
        malformed=malformed,
        over_long=[m for r in results for m in r.over_long],
        split=[m for r in results for m in r.split],
        seconds=seconds,
    )


def _remove_temporary_files(out: Path, tasks: list[Task]) -> None:
    for task in tasks:
        for file in shard_files(task.name):  # write_shard's files, each written as NAME.tmp first
            (out / task.source / f"{file}.tmp").unlink(missing_ok=True)


def _consume(iterator, results: list[TaskResult], bar) -> None:
    for result in iterator:
        if result.error:
            raise PackError(
                f"{result.error}\n(shards finished so far are kept: fix the file, or pass "
                f"--skip-malformed, and run the command again; only unfinished shards and those "
                f"reading changed files are packed again)"
            )
        results.append(result)
        if bar is not None:
            bar.update(result.bytes)
            bar.set_postfix(tokens=f"{sum(r.tokens for r in results):,}")


class PackError(ValueError):
    """A task failed on bad input; finished shards are kept, so a fixed re-run resumes."""
