"""Reading documents from the files people have: JSON lines, Parquet, CSV, plain text (optionally gzipped).

Shared by tokenizer training, tokenizer statistics and packing. A document is one JSON line / Parquet row /
CSV row (its text field), or a whole text file. Malformed input — bad JSON or UTF-8, a record without string text
(`{"text": null}` included), a `.gz` that is truncated, corrupt or not gzip at all — stops with an error naming
the file and line (or row) and the key, rather than being skipped silently; callers that may skip bad records
say so and count. Reading is streaming, and `SizeGuard` bounds what one document may cost (see there).
"""

from __future__ import annotations

import codecs
import csv
import glob
import gzip
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

LINE_SUFFIXES = (".jsonl", ".json", ".ndjson")
TEXT_SUFFIXES = (".txt", ".text", ".md")
KNOWN_SUFFIXES = LINE_SUFFIXES + TEXT_SUFFIXES + (".parquet", ".csv")


class InputError(ValueError):
    """A record that cannot be read; the message starts with `file:line:`."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line, self.detail = str(path), line, message
        super().__init__(f"{path}:{line}: {message}" if line is not None else f"{path}: {message}")

    def __reduce__(self):  # picklable, so it survives a trip through a worker process
        return type(self), (self.path, self.line, self.detail)


def file_format(path: str | Path) -> str:
    """'lines' (JSON lines), 'text' (the whole file is one document), 'parquet' or 'csv'; gzip looked through."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(LINE_SUFFIXES):
        return "lines"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    raise InputError(path, None, f"unknown input type (expected one of {', '.join(KNOWN_SUFFIXES)}, optionally .gz)")


def is_gzip(path: str | Path) -> bool:
    return str(path).lower().endswith(".gz")


def expand_inputs(specs: Sequence[str | Path]) -> list[Path]:
    """Files named directly, by glob, or by directory (its known-type files, recursively, sorted)."""
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and _known(f))
            if not found:
                raise InputError(p, None, "directory holds no readable input files")
            out.extend(found)
        elif p.is_file():
            file_format(p)  # refuses unknown types early
            out.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(spec), recursive=True) if Path(m).is_file())
            if not matches:
                raise InputError(spec, None, "no such file, directory or glob match")
            out.extend(m for m in matches if _known(m))
    return out


def _known(path: Path) -> bool:
    try:
        file_format(path)
        return True
    except InputError:
        return False


def record_text(record: object, fields: Sequence[str], path: str | Path, line: int) -> str:
    """The document text of one record: the listed fields that hold a string, joined by a newline.

    A null field counts as absent, so with several fields a record may lack some; but a record with no string
    in any of them (`{"text": null}`) is malformed, not an empty document: null is a missing value, not text."""
    if not isinstance(record, dict):
        raise InputError(path, line, f"expected a JSON object, got {type(record).__name__}")
    parts = []
    for name in fields:
        value = record.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(path, line, f"field '{name}' is {type(value).__name__}, expected a string")
        parts.append(value)
    if not parts:
        present = [name for name in fields if name in record]
        if present:
            names = " / ".join(repr(name) for name in present)
            raise InputError(
                path,
                line,
                f"field {names} is null, expected a string"
                if len(present) == 1
                else f"fields {names} are null, expected a string",
            )
        keys = ", ".join(list(record)[:12])
        raise InputError(path, line, f"no field {' / '.join(repr(f) for f in fields)} (keys: {keys})")
    return "\n".join(parts)


def parse_record(raw: bytes, path: str | Path, line: int) -> Any:
    """One JSON line's record, whatever it holds; bad JSON or UTF-8 → `InputError` naming file:line."""
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise InputError(path, line, "not valid UTF-8") from None
    except json.JSONDecodeError as err:
        raise InputError(path, line, f"not valid JSON ({err.msg} at column {err.colno})") from None


def parse_line(raw: bytes, fields: Sequence[str], path: str | Path, line: int) -> str | None:
    """One JSON line → its text; None for a blank line."""
    if not raw.strip():
        return None
    return record_text(parse_record(raw, path, line), fields, path, line)


def read_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of a file, decompressed when its name ends in `.gz`. A damaged `.gz` (cut short,
    not gzip, corrupt) raises `InputError` naming the file and the line where reading stopped, after the lines
    before it. For readers that give records their own meaning (evaluation sets, validation sets)."""
    with gzip.open(path, "rb") if is_gzip(path) else open(path, "rb") as f:
        number = 0
        while True:
            number += 1
            try:
                raw = f.readline()
            except _GZIP_ERRORS as err:
                raise _gzip_error(path, number, err) from None
            if not raw:
                return
            yield number, raw


def read_text_file(path: str | Path, errors: str = "strict") -> str:
    """A whole file as text with universal newlines, like `open(path, encoding="utf-8").read()` (gzip looked
    through, see `read_lines`); with errors="strict" invalid UTF-8 is an `InputError` naming the file and line."""
    data = b"".join(raw for _, raw in read_lines(path))
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as err:
        raise InputError(path, data[: err.start].count(b"\n") + 1, "not valid UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def iter_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed record) for every non-blank line of a JSON-lines file (gzip looked through); bad
    JSON, bad UTF-8 or a damaged .gz names file:line."""
    for number, raw in read_lines(path):
        if raw.strip():
            yield number, parse_record(raw, path, number)


def line_number_at(path: str | Path, offset: int) -> int:
    """1-based number of the line starting at byte `offset` (only computed when an error needs it)."""
    count = 0
    with open(path, "rb") as f:
        remaining = offset
        while remaining > 0:
            block = f.read(min(remaining, 1 << 24))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count + 1


@dataclass
class Document:
    """A document and where it came from (file, 1-based line or row)."""

    text: str
    path: str
    line: int


OnError = Callable[[InputError], None] | None

DEFAULT_MAX_DOC_CHARS = 1_000_000


@dataclass
class SizeGuard:
    """The per-document size limit (`--max-doc-chars`) and what it did.

    Why: encoding one document costs `tokenizers` and jieba many times its size in memory (a 50 MB line
    peaked at 4.5-6 GB), so one gigantic document — a minified dump, a base64 blob, a concatenated corpus —
    could take the machine down. So:

    * a record (JSON line, CSV or Parquet row) longer than `max_chars` characters is SKIPPED and counted,
      never split: a record is one document whose boundaries matter (packing ends each with EOS), records
      that big are junk far more often than text, and a JSON line cannot be parsed without holding all of
      it. A JSON line longer than `max_line_bytes` is not even parsed: it is read in blocks and dropped, so
      memory stays bounded however long the line;
    * a text file (a whole file is one document) longer than `max_chars` is SPLIT into documents of at most
      `max_chars` characters, at line ends (a longer single line is cut), and read streaming: such a file
      is a book or a corpus dump whose pieces are good text.
    """

    max_chars: int = DEFAULT_MAX_DOC_CHARS
    skipped: list[str] = field(default_factory=list)  # "FILE:LINE: size" of each over-long record
    split: list[str] = field(default_factory=list)  # "FILE: N documents" of each text file split

    def __post_init__(self) -> None:
        if self.max_chars <= 0:
            from skyloom.config import ConfigError

            raise ConfigError("--max-doc-chars", f"must be positive, got {self.max_chars}")

    @property
    def max_line_bytes(self) -> int:
        """No JSON line holding at most `max_chars` characters of text is longer (12 bytes is the longest
        spelling of one character, an escaped surrogate pair), plus room for the record's other fields."""
        return 12 * self.max_chars + (1 << 16)

    def skip(self, path: str | Path, line: int, size: str) -> None:
        self.skipped.append(f"{path}:{line}: {size} > --max-doc-chars {self.max_chars:,}")


def iter_documents(
    path: str | Path,
    fields: Sequence[str] = ("text",),
    start: int = 0,
    end: int | None = None,
    on_error: OnError = None,
    guard: SizeGuard | None = None,
) -> Iterator[Document]:
    """Documents of one file; `start`/`end` select a slice: bytes for uncompressed JSON lines (lines that
    *begin* inside [start, end)), row groups for Parquet. Other types are read whole (start must be 0).

    A malformed record raises `InputError` naming file and line — or, with `on_error`, is handed to it and
    skipped (the caller counts and reports it). A `.gz` that cannot be decompressed is one malformed input
    at the line where reading failed; what came before it is kept, the rest of the file is lost. `guard`
    (default: a `SizeGuard()` of its own) skips or splits over-long documents and records them."""
    guard = SizeGuard() if guard is None else guard
    fmt = file_format(path)
    if fmt == "lines":
        if is_gzip(path):
            if start or end is not None:
                raise ValueError(f"{path}: gzip files are read whole")
            yield from _iter_gzip_lines(Path(path), fields, on_error, guard)
        else:
            yield from _iter_line_range(Path(path), fields, start, end, on_error, guard)
    elif fmt == "text":
        if start:
            raise ValueError(f"{path}: text files are read whole")
        yield from _iter_text(Path(path), on_error, guard)
    elif fmt == "csv":
        yield from _iter_csv(Path(path), fields, on_error, guard)
    else:
        yield from _iter_parquet(Path(path), fields, start, end, on_error, guard)


def _handle(err: InputError, on_error: OnError) -> None:
    if on_error is None:
        raise err
    on_error(err)


# What a damaged .gz raises while being read: BadGzipFile (not gzip, bad CRC), EOFError (cut short), zlib.error.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _gzip_error(path: str | Path, line: int, err: Exception) -> InputError:
    if isinstance(err, EOFError):
        what = "truncated gzip file (it ends before its end-of-stream marker)"
    elif "Not a gzipped file" in str(err):
        what = "not a gzip file, though its name ends in .gz"
    else:
        what = f"corrupt gzip data ({err})"
    return InputError(path, line, f"{what}; nothing from this line on can be read")


def _read_line(f: IO[bytes], limit: int) -> tuple[bytes | None, int]:
    """The next line of `f` and its size in bytes ((b"", 0) at the end). A line over `limit` bytes comes as
    (None, size): it is read in blocks and dropped, never held whole."""
    raw = f.readline(limit + 1)
    if len(raw) <= limit or raw.endswith(b"\n"):
        return raw, len(raw)
    size = len(raw)
    while not raw.endswith(b"\n"):
        raw = f.readline(1 << 16)
        if not raw:
            break
        size += len(raw)
    return None, size


def _line_text(raw: bytes | None, size: int, fields, path, locate: Callable[[], int], guard: SizeGuard) -> str | None:
    """The text of one JSON line; None for a blank line or an over-long document (recorded in `guard`).
    `locate()` gives the line number, computed only when a message needs it."""
    if raw is None:
        guard.skip(path, locate(), f"a line of {size:,} bytes")
        return None
    try:
        text = parse_line(raw, fields, path, 0)
    except InputError as err:
        raise InputError(path, locate(), err.detail) from None
    if text is not None and len(text) > guard.max_chars:
        guard.skip(path, locate(), f"{len(text):,} characters")
        return None
    return text


def _iter_gzip_lines(path: Path, fields, on_error: OnError, guard: SizeGuard) -> Iterator[Document]:
    with gzip.open(path, "rb") as f:
        number = 0
        while True:
            number += 1
            try:
                raw, size = _read_line(f, guard.max_line_bytes)
            except _GZIP_ERRORS as err:
                _handle(_gzip_error(path, number, err), on_error)
                return
            if not size:
                return
            try:
                text = _line_text(raw, size, fields, path, lambda n=number: n, guard)
            except InputError as err:
                _handle(err, on_error)
                continue
            if text is not None:
                yield Document(text, str(path), number)


def _iter_line_range(
    path: Path, fields, start: int, end: int | None, on_error: OnError, guard: SizeGuard
) -> Iterator[Document]:
    end = path.stat().st_size if end is None else end
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            _read_line(f, 0)  # finish the line that started before `start`; it belongs to the previous slice
        pos = f.tell()
        # Line numbers inside a slice are only worth counting (a scan of the file up to `start`) for a message.
        number: int | None = 1 if pos == 0 else None
        while pos < end:
            raw, size = _read_line(f, guard.max_line_bytes)
            if not size:
                break
            locate = lambda n=number, p=pos: n if n is not None else line_number_at(path, p)  # noqa: E731
            try:
                text = _line_text(raw, size, fields, path, locate, guard)
            except InputError as err:
                _handle(err, on_error)
                text = None
            if text is not None:
                yield Document(text, str(path), number if number is not None else 0)
            if number is not None:
                number += 1
            pos = f.tell()


def _iter_text(path: Path, on_error: OnError, guard: SizeGuard) -> Iterator[Document]:
    """The file as one document — or, past `guard.max_chars`, as pieces cut at line ends (see `SizeGuard`),
    read in blocks of at most `max_chars` bytes so that no more than a piece is ever held. Invalid UTF-8 or a
    damaged .gz ends the file there: the piece being read is dropped, pieces before it are kept."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts: list[str] = []
    size, first, number, pieces = 0, 1, 1, 0
    with gzip.open(path, "rb") if is_gzip(path) else open(path, "rb") as f:
        while True:
            try:
                block = f.readline(guard.max_chars)  # at most max_chars bytes: at most max_chars characters
                text = decoder.decode(block, final=not block)
            except _GZIP_ERRORS as err:
                _handle(_gzip_error(path, number, err), on_error)
                break
            except UnicodeDecodeError:
                _handle(InputError(path, number, "not valid UTF-8"), on_error)
                break
            if parts and size + len(text) > guard.max_chars:
                pieces += 1
                yield Document("".join(parts), str(path), first)
                parts, size, first = [], 0, number
            if text:
                parts.append(text)
                size += len(text)
            if not block:
                if pieces:
                    pieces += 1
                    yield Document("".join(parts), str(path), first)
                else:
                    yield Document("".join(parts), str(path), 1)
                break
            number += block.count(b"\n")
    if pieces:
        guard.split.append(f"{path}: {pieces} documents of at most {guard.max_chars:,} characters")


def _iter_csv(path: Path, fields, on_error: OnError, guard: SizeGuard) -> Iterator[Document]:
    opener = (
        gzip.open(path, "rt", encoding="utf-8", newline="")
        if is_gzip(path)
        else open(path, encoding="utf-8", newline="")
    )
    with opener as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                try:
                    text = record_text(row, fields, path, reader.line_num)
                except InputError as err:
                    _handle(err, on_error)
                    continue
                if len(text) > guard.max_chars:
                    guard.skip(path, reader.line_num, f"{len(text):,} characters")
                    continue
                yield Document(text, str(path), reader.line_num)
        except UnicodeDecodeError:
            _handle(InputError(path, reader.line_num + 1, "not valid UTF-8"), on_error)
        except csv.Error as err:
            _handle(InputError(path, reader.line_num, f"malformed CSV: {err}"), on_error)
        except _GZIP_ERRORS as err:
            _handle(_gzip_error(path, reader.line_num + 1, err), on_error)


def parquet_row_groups(path: str | Path) -> list[int]:
    """Rows per row group (the unit a Parquet file is split by)."""
    pq = pyarrow_parquet()
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def pyarrow_parquet():
    """`pyarrow.parquet`, or an ImportError saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading Parquet needs pyarrow: pip install 'skyloom[data]' (or pyarrow)") from None
    return pq


def _iter_parquet(
    path: Path, fields, start: int, end: int | None, on_error: OnError, guard: SizeGuard
) -> Iterator[Document]:
    pq = pyarrow_parquet()
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    columns = [f for f in fields if f in names]
    if not columns:
        raise InputError(
            path, None, f"no column {' / '.join(repr(f) for f in fields)} (columns: {', '.join(sorted(names))})"
        )
    groups = range(start, pf.metadata.num_row_groups if end is None else end)
    row = sum(pf.metadata.row_group(i).num_rows for i in range(start))
    for g in groups:
        for record in pf.read_row_group(g, columns=columns).to_pylist():
            row += 1
            try:
                text = record_text(record, columns, path, row)
            except InputError as err:
                _handle(err, on_error)
                continue
            if len(text) > guard.max_chars:
                guard.skip(path, row, f"{len(text):,} characters")
                continue
            yield Document(text, str(path), row)


def iter_texts(
    paths: Sequence[str | Path],
    fields: Sequence[str] = ("text",),
    max_bytes: int | None = None,
    guard: SizeGuard | None = None,
) -> Iterator[str]:
    """Texts of every document of every file, in order; stops after about `max_bytes` of text. Over-long
    documents are skipped or split by `guard` (see `SizeGuard`) and recorded there."""
    guard = SizeGuard() if guard is None else guard
    seen = 0
    for path in expand_inputs(paths):
        for doc in iter_documents(path, fields, guard=guard):
            yield doc.text
            if max_bytes is not None:
                seen += len(doc.text.encode("utf-8"))
                if seen >= max_bytes:
                    return
