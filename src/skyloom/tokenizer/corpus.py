"""Reading documents from the files people have: JSON lines, Parquet, CSV, plain text (optionally gzipped).

Shared by tokenizer training, tokenizer statistics and packing. A document is one JSON line / Parquet row /
CSV row (its text field), or a whole text file. Malformed input stops with an error naming the file and line
(or row) — and the key — rather than being skipped silently; callers that may skip bad records say so and count.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

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
    raise InputError(path, None, f"unknown input type (expected one of {', '.join(KNOWN_SUFFIXES)}, "
                                 f"optionally .gz)")


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
    """The document text of one record: the listed fields that are present, joined by a newline."""
    if not isinstance(record, dict):
        raise InputError(path, line, f"expected a JSON object, got {type(record).__name__}")
    parts = []
    for field in fields:
        value = record.get(field)
        if value is None:
            continue
        if not isinstance(value, str):
            raise InputError(path, line, f"field '{field}' is {type(value).__name__}, expected a string")
        parts.append(value)
    if not parts and not any(f in record for f in fields):
        keys = ", ".join(list(record)[:12])
        raise InputError(path, line, f"no field {' / '.join(repr(f) for f in fields)} (keys: {keys})")
    return "\n".join(parts)


def parse_line(raw: bytes, fields: Sequence[str], path: str | Path, line: int) -> str | None:
    """One JSON line → its text; None for a blank line."""
    if not raw.strip():
        return None
    try:
        record = json.loads(raw)
    except UnicodeDecodeError:
        raise InputError(path, line, "not valid UTF-8") from None
    except json.JSONDecodeError as err:
        raise InputError(path, line, f"not valid JSON ({err.msg} at column {err.colno})") from None
    return record_text(record, fields, path, line)


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


OnError = Optional[Callable[[InputError], None]]


def iter_documents(path: str | Path, fields: Sequence[str] = ("text",), start: int = 0,
                   end: int | None = None, on_error: OnError = None) -> Iterator[Document]:
    """Documents of one file; `start`/`end` select a slice: bytes for uncompressed JSON lines (lines that
    *begin* inside [start, end)), row groups for Parquet. Other types are read whole (start must be 0).

    A malformed record raises `InputError` naming file and line — or, with `on_error`, is handed to it and
    skipped (the caller counts and reports it)."""
    fmt = file_format(path)
    if fmt == "lines":
        if is_gzip(path):
            if start or end is not None:
                raise ValueError(f"{path}: gzip files are read whole")
            with gzip.open(path, "rb") as f:
                yield from _parse_lines(f, fields, path, on_error)
        else:
            yield from _iter_line_range(Path(path), fields, start, end, on_error)
    elif fmt == "text":
        if start:
            raise ValueError(f"{path}: text files are read whole")
        data = gzip.open(path, "rb").read() if is_gzip(path) else Path(path).read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            _handle(InputError(path, data.count(b"\n", 0, err.start) + 1, "not valid UTF-8"), on_error)
            return
        yield Document(text, str(path), 1)
    elif fmt == "csv":
        yield from _iter_csv(Path(path), fields, on_error)
    else:
        yield from _iter_parquet(Path(path), fields, start, end, on_error)


def _handle(err: InputError, on_error: OnError) -> None:
    if on_error is None:
        raise err
    on_error(err)


def _parse_lines(f: Iterable[bytes], fields, path, on_error: OnError) -> Iterator[Document]:
    for number, raw in enumerate(f, 1):
        try:
            text = parse_line(raw, fields, path, number)
        except InputError as err:
            _handle(err, on_error)
            continue
        if text is not None:
            yield Document(text, str(path), number)


def _iter_line_range(path: Path, fields, start: int, end: int | None, on_error: OnError) -> Iterator[Document]:
    end = path.stat().st_size if end is None else end
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()  # finish the line that started before `start`; it belongs to the previous slice
        pos = f.tell()
        # Line numbers inside a slice are only worth counting (a scan of the file up to `start`) for an error.
        number: int | None = 1 if pos == 0 else None
        while pos < end:
            raw = f.readline()
            if not raw:
                break
            try:
                text = parse_line(raw, fields, path, number or 0)
            except InputError as err:
                line = number if number is not None else line_number_at(path, pos)
                _handle(InputError(path, line, err.detail), on_error)
                text = None
            if text is not None:
                yield Document(text, str(path), number if number is not None else 0)
            if number is not None:
                number += 1
            pos = f.tell()


def _iter_csv(path: Path, fields, on_error: OnError) -> Iterator[Document]:
    opener = gzip.open(path, "rt", encoding="utf-8", newline="") if is_gzip(path) else \
        open(path, encoding="utf-8", newline="")
    with opener as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                try:
                    text = record_text(row, fields, path, reader.line_num)
                except InputError as err:
                    _handle(err, on_error)
                    continue
                yield Document(text, str(path), reader.line_num)
        except UnicodeDecodeError:
            _handle(InputError(path, reader.line_num + 1, "not valid UTF-8"), on_error)
        except csv.Error as err:
            _handle(InputError(path, reader.line_num, f"malformed CSV: {err}"), on_error)


def parquet_row_groups(path: str | Path) -> list[int]:
    """Rows per row group (the unit a Parquet file is split by)."""
    pq = _pyarrow_parquet()
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading Parquet needs pyarrow: pip install 'skyloom[data]' (or pyarrow)") from None
    return pq


def _iter_parquet(path: Path, fields, start: int, end: int | None, on_error: OnError) -> Iterator[Document]:
    pq = _pyarrow_parquet()
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    columns = [f for f in fields if f in names]
    if not columns:
        raise InputError(path, None, f"no column {' / '.join(repr(f) for f in fields)} "
                                     f"(columns: {', '.join(sorted(names))})")
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
            yield Document(text, str(path), row)


def iter_texts(paths: Sequence[str | Path], fields: Sequence[str] = ("text",),
               max_bytes: int | None = None) -> Iterator[str]:
    """Texts of every document of every file, in order; stops after about `max_bytes` of text."""
    seen = 0
    for path in expand_inputs(paths):
        for doc in iter_documents(path, fields):
            yield doc.text
            if max_bytes is not None:
                seen += len(doc.text.encode("utf-8"))
                if seen >= max_bytes:
                    return
