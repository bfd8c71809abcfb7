"""Input readers (datatrove ``BaseDiskReader`` subclasses) that survive bad input.

One reader per input of the pipeline YAML. Formats: ``jsonl`` (one JSON object per line), ``json`` (a JSON
array of records, or a record list at ``records_path``), ``text`` (plain text, split into documents at lines
matching ``doc_separator``), ``html`` (one page per file), ``warc`` (HTML responses of WARC files) and
``files`` (each file one document, e.g. source code).

A bad record — a line that is not JSON, invalid UTF-8, a record without text, an empty or gigantic
document — is skipped, counted under ``malformed:<why>`` in the funnel's ``read`` row and listed with its
file and line in ``malformed/``. Nothing in the input can end the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger

from skyloom.data.pipeline.base import Funnel, atomic_write_json

FORMATS = ("jsonl", "json", "text", "html", "warc", "files")


@dataclass
class InputConfig:
    """One input of the pipeline."""

    path: str
    format: Literal["jsonl", "json", "text", "html", "warc", "files"] = "jsonl"
    name: str | None = None  # label in reports (default: source)
    source: str | None = None  # metadata.source of every document (default: name or folder name)
    glob: str | None = None  # e.g. "*.jsonl" or "**/*.html.gz"; default: every file under path
    kind: Literal["text", "code"] = "text"
    language: str | None = None  # a known language for every document (skips nothing; langid still runs)
    text_key: str = "text"
    text_keys: list[str] = field(default_factory=list)  # several fields joined with a blank line
    id_key: str = "id"
    records_path: str | None = None  # json format: dotted path to the record list (e.g. "data")
    doc_separator: str | None = None  # text format: regex of a line that starts a new document
    min_chars: int = 1
    max_chars: int = 5_000_000  # bigger documents are malformed ("gigantic"), not loaded into a model
    limit: int = -1  # documents per task, for quick runs
    on_invalid_utf8: Literal["skip", "replace"] = "skip"
    preprocess: Literal["none", "wikitext"] = "none"  # wikitext: undo WikiText's tokenisation (" @-@ " …)
    # files: task r reads files r, r+T, … (datatrove's sharding); records: every task reads every file and
    # keeps records r, r+T, … (balanced tasks when there are fewer files than tasks)
    shard: Literal["files", "records"] = "files"

    def validate(self) -> None:
        from skyloom.config import ConfigError

        if self.format == "text" and self.doc_separator:
            try:
                re.compile(self.doc_separator)
            except re.error as err:
                raise ConfigError("doc_separator", f"not a regular expression: {err}") from err
        if self.max_chars <= 0:
            raise ConfigError("max_chars", "must be positive")

    @property
    def label(self) -> str:
        return self.name or self.source or os.path.basename(os.path.normpath(self.path))


_WT_JOINERS = re.compile(r" @([-,.])@ ")
_WT_SPACE_BEFORE = re.compile(r" ([,.;:!?)\]}%'])")
_WT_SPACE_AFTER = re.compile(r"([(\[{$]) ")
_WT_HEADING = re.compile(r"^\s*=+\s*(.*?)\s*=+\s*$")


def detokenize_wikitext(text: str) -> str:
    """WikiText's tokenised form back to running text: joiners, punctuation spacing, ``= Heading =`` lines."""
    lines = []
    for line in text.split("\n"):
        m = _WT_HEADING.match(line)
        if m:
            line = m.group(1)
        line = _WT_JOINERS.sub(r"\1", line)
        line = line.replace(" 's", "'s").replace(" n't", "n't").replace("<unk>", "")
        line = re.sub(r" {2,}", " ", line)
        line = _WT_SPACE_BEFORE.sub(r"\1", line)
        line = _WT_SPACE_AFTER.sub(r"\1", line)
        lines.append(re.sub(r" {2,}", " ", line).strip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


_HTTP_CONTENT_TYPE = re.compile(rb"(?im)^content-type:[ \t]*([^\r\n;]*)")


def _get_path(obj: Any, dotted: str | None) -> Any:
    if not dotted:
        return obj
    for part in dotted.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        else:
            return None
    return obj


class SourceReader(BaseDiskReader):
    """Reads one configured input; see module docstring."""

    name = "📥 Source"

    def __init__(self, cfg: InputConfig, funnel_dir: str, malformed_dir: str):
        import fsspec  # noqa: F401  (datatrove's DataFolder needs it; fail early with a clear name)

        path = cfg.path
        glob = cfg.glob
        if os.path.isfile(path):  # a single file
            glob = os.path.basename(path)
            path = os.path.dirname(path) or "."
        super().__init__(
            path,
            glob_pattern=glob,
            recursive=True,
            limit=cfg.limit,
            text_key=cfg.text_key,
            id_key=cfg.id_key,
            add_file_path=False,
        )
        self.cfg = cfg
        self.label = f"read:{cfg.label}"
        self.source = cfg.source or cfg.name or os.path.basename(os.path.normpath(cfg.path))
        self.funnel_dir = funnel_dir
        self.malformed_dir = malformed_dir
        self._funnel: Funnel | None = None
        self._malformed: list[dict[str, Any]] = []
        self._rank, self._world, self._seen, self._taken = 0, 1, 0, 0  # _taken: documents handed on (limit)
        self._lines_read = 0  # jsonl: lines of the current file read so far (names where a bad .gz broke off)

    def _mine(self) -> bool:
        """Record-level sharding: is the next record this task's?"""
        if self.cfg.shard != "records":
            return True
        self._seen += 1
        return (self._seen - 1) % self._world == self._rank

    # ------------------------------------------------------------------ bookkeeping
    def _key(self) -> tuple[str, str]:
        return (self.cfg.language or "?", self.source)

    def _bad(self, filepath: str, line: int, reason: str, detail: str = "", chars: int = 0) -> None:
        self._funnel.add_in(self._key(), chars)
        self._funnel.add_drop(self._key(), f"malformed:{reason}", chars)
        self.stat_update(f"malformed_{reason}")
        if len(self._malformed) < 100_000:
            self._malformed.append(
                {
                    "file": self.data_folder.resolve_paths(filepath),
                    "line": line,
                    "reason": reason,
                    "detail": detail[:300],
                    "step": self.label,
                }
            )

    def _doc(self, filepath: str, line: int, text: Any, doc_id: Any, extra: dict[str, Any]) -> Document | None:
        if not isinstance(text, str):
            self._bad(filepath, line, "missing_text", f"no string field {self.cfg.text_key!r}")
            return None
        n = len(text)
        if len(text.strip()) < self.cfg.min_chars:
            self._bad(filepath, line, "empty", chars=n)
            return None
        if n > self.cfg.max_chars:
            self._bad(filepath, line, "gigantic", f"{n:,} chars > max_chars {self.cfg.max_chars:,}", chars=n)
            return None
        if self.cfg.preprocess == "wikitext":
            text = detokenize_wikitext(text)
        md = {"source": self.source, "file": self.data_folder.resolve_paths(filepath), "line": line}
        if self.cfg.kind == "code":
            md["kind"] = "code"
        if self.cfg.language:
            md["language"] = self.cfg.language
        md.update({k: v for k, v in extra.items() if v is not None and k not in ("text", "metadata")})
        self._funnel.add_in(self._key(), n)
        self._funnel.add_out(self._key(), n)
        rel = (
            os.path.relpath(self.data_folder.resolve_paths(filepath), self.data_folder.path)
            if self.data_folder.is_local()
            else filepath
        )
        return Document(text=text, id=str(doc_id) if doc_id is not None else f"{self.source}/{rel}/{line}", metadata=md)

    # ------------------------------------------------------------------ formats
    def _decode(self, raw: bytes, filepath: str, line: int) -> str | None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            if self.cfg.on_invalid_utf8 == "replace":
                self.stat_update("utf8_repaired")
                return raw.decode("utf-8", errors="replace")
            self._bad(filepath, line, "invalid_utf8", str(err), chars=len(raw))
            return None

    def _record_text(self, rec: dict[str, Any]) -> Any:
        if self.cfg.text_keys:
            parts = [rec.get(k) for k in self.cfg.text_keys]
            if not all(isinstance(p, str) for p in parts if p is not None):
                return None
            return "\n\n".join(p for p in parts if p)
        return rec.get(self.cfg.text_key)

    def _from_record(self, rec: Any, filepath: str, line: int) -> Document | None:
        if not isinstance(rec, dict):
            self._bad(filepath, line, "not_an_object", type(rec).__name__)
            return None
        text = self._record_text(rec)
        extra = {
            k: v
            for k, v in rec.items()
            if k not in (self.cfg.text_key, *self.cfg.text_keys, self.cfg.id_key)
            and isinstance(v, (str, int, float, bool))
        }
        md = rec.get("metadata")
        if isinstance(md, dict):
            extra.update({k: v for k, v in md.items() if isinstance(v, (str, int, float, bool))})
        return self._doc(filepath, line, text, rec.get(self.cfg.id_key), extra)

    def _read_jsonl(self, filepath: str) -> Iterator[Document]:
        import orjson

        with self.data_folder.open(filepath, "rb", compression="infer") as f:
            for i, raw in enumerate(f, start=1):
                self._lines_read = i
                if not raw.strip() or not self._mine():
                    continue
                text = self._decode(raw, filepath, i)
                if text is None:
                    continue
                try:
                    rec = orjson.loads(text)
                except orjson.JSONDecodeError as err:
                    self._bad(filepath, i, "bad_json", str(err), chars=len(text))
                    continue
                doc = self._from_record(rec, filepath, i)
                if doc is not None:
                    yield doc

    def _read_json(self, filepath: str) -> Iterator[Document]:
        import orjson

        with self.data_folder.open(filepath, "rb", compression="infer") as f:
            raw = f.read()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            self._bad(filepath, 0, "bad_json", str(err), chars=len(raw))
            return
        records = _get_path(data, self.cfg.records_path)
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list):
            self._bad(filepath, 0, "no_records", f"no list at {self.cfg.records_path!r}")
            return
        for i, rec in enumerate(records, start=1):
            if not self._mine():
                continue
            doc = self._from_record(rec, filepath, i)
            if doc is not None:
                yield doc

    def _read_text(self, filepath: str) -> Iterator[Document]:
        with self.data_folder.open(filepath, "rb", compression="infer") as f:
            raw = f.read()
        text = self._decode(raw, filepath, 0)
        if text is None:
            return
        if not self.cfg.doc_separator:
            if not self._mine():
                return
            doc = self._doc(filepath, 1, text, None, {})
            if doc is not None:
                yield doc
            return
        sep = re.compile(self.cfg.doc_separator)
        start_line, buf = 1, []
        for i, line in enumerate(text.split("\n"), start=1):
            if sep.match(line) and "".join(buf).strip():
                doc = self._doc(filepath, start_line, "\n".join(buf).strip("\n"), None, {}) if self._mine() else None
                if doc is not None:
                    yield doc
                start_line, buf = i, []
            buf.append(line)
        if "".join(buf).strip() and self._mine():
            doc = self._doc(filepath, start_line, "\n".join(buf).strip("\n"), None, {})
            if doc is not None:
                yield doc

    def _read_html(self, filepath: str) -> Iterator[Document]:
        from skyloom.data.pipeline.extract import decode_html

        if not self._mine():
            return
        with self.data_folder.open(filepath, "rb", compression="infer") as f:
            raw = f.read()
        if len(raw) > self.cfg.max_chars:
            self._bad(filepath, 1, "gigantic", f"{len(raw):,} bytes", chars=len(raw))
            return
        html = decode_html(raw)
        doc = self._doc(filepath, 1, html, None, {"content_type": "html"})
        if doc is not None:
            yield doc

    def _read_warc(self, filepath: str) -> Iterator[Document]:
        """HTML responses of a WARC file; ``line`` is the response record's number. The HTTP head is split off
        here (not by fastwarc) so that a record cut short — fastwarc hands it over with fewer bytes than its
        Content-Length — is caught and reported as ``truncated_record``."""
        from fastwarc.warc import ArchiveIterator, WarcRecordType

        from skyloom.data.pipeline.extract import decode_html

        with self.data_folder.open(filepath, "rb", compression="infer") as f:
            try:
                records = ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=False)
                for i, record in enumerate(records, start=1):
                    if not self._mine():
                        continue
                    if record.content_length > self.cfg.max_chars:
                        self._bad(
                            filepath, i, "gigantic", f"{record.content_length:,} bytes", chars=record.content_length
                        )
                        continue
                    block = record.reader.read()
                    if len(block) < record.content_length:
                        self._bad(
                            filepath,
                            i,
                            "truncated_record",
                            f"{len(block):,} of {record.content_length:,} bytes",
                            chars=len(block),
                        )
                        continue
                    head, sep, raw = block.partition(b"\r\n\r\n")
                    if not sep:
                        head, sep, raw = block.partition(b"\n\n")
                    m = _HTTP_CONTENT_TYPE.search(head)
                    ctype = m.group(1).decode("latin-1").lower() if m else ""
                    if ctype and "html" not in ctype:
                        continue
                    html = decode_html(raw)
                    headers = record.headers
                    doc = self._doc(
                        filepath,
                        i,
                        html,
                        headers.get("WARC-Record-ID"),
                        {
                            "content_type": "html",
                            "url": headers.get("WARC-Target-URI"),
                            "date": headers.get("WARC-Date"),
                        },
                    )
                    if doc is not None:
                        yield doc
            except Exception as err:  # a corrupt WARC: keep what was read
                self._bad(filepath, -1, "bad_warc", f"{type(err).__name__}: {err}")

    def _read_files(self, filepath: str) -> Iterator[Document]:
        if not self._mine():
            return
        with self.data_folder.open(filepath, "rb", compression="infer") as f:
            raw = f.read()
        text = self._decode(raw, filepath, 1)
        if text is None:
            return
        ext = os.path.splitext(filepath[:-3] if filepath.endswith(".gz") else filepath)[1].lstrip(".").lower()
        doc = self._doc(filepath, 1, text, None, {"path": filepath, "extension": ext})
        if doc is not None:
            yield doc

    def _limit_reached(self) -> bool:
        return self.cfg.limit != -1 and self._taken >= self.cfg.limit

    def read_file(self, filepath: str) -> DocumentsPipeline:
        """Stops as soon as `limit` documents were handed on: datatrove's loop only notices the limit after
        drawing one more document, which this reader would already have counted in the funnel."""
        if self._limit_reached():
            return
        reader = getattr(self, f"_read_{self.cfg.format}")
        self._lines_read = 0
        try:
            for doc in reader(filepath):
                yield doc
                self._taken += 1
                if self._limit_reached():
                    return
        except Exception as err:  # unreadable/corrupt file (bad gzip, zlib errors …): report, go on
            # jsonl: the line where reading broke off (what came before it was read); other formats: unknown
            line = self._lines_read + 1 if self.cfg.format == "jsonl" else -1
            logger.warning(f"{self.label}: cannot read {filepath} (line {line}): {err}")
            self._bad(filepath, line, "unreadable_file", f"{type(err).__name__}: {err}")

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self._funnel = Funnel()
        self._malformed = []
        self._rank, self._world, self._seen, self._taken = rank, world_size, 0, 0
        if self.cfg.shard == "records":  # every task lists every file; _mine() picks the records
            yield from super().run(data, 0, 1)
        else:
            yield from super().run(data, rank, world_size)
        safe = re.sub(r"[^\w.-]+", "_", self.label)
        atomic_write_json(
            os.path.join(self.funnel_dir, f"{rank:05d}_{safe}.json"), {"label": self.label, **self._funnel.to_dict()}
        )
        atomic_write_json(os.path.join(self.malformed_dir, f"{rank:05d}_{safe}.json"), self._malformed)
