"""What every skyloom step shares: a datatrove filter base that never loses a drop reason, and the
accounting wrapper that counts documents and characters in/out of each step per (language, source).

Accounting is a wrapper, not a duty of each step, so datatrove's own steps (MinHash and exact-dedup
filters) are counted the same way as ours. Steps preserve document order and identity, so a document that
went in and did not come out before the next one that did was dropped; its reason is the
``filter_reason`` the step wrote into its metadata (or the step's default reason).

A document is counted in its (language, source) cell as it *leaves* the step (kept or dropped), so the
language identification row is already split by the language it found (e.g. ``ja`` pages dropped there),
and every cell balances on its own: docs_in = docs_out + dropped.
"""

from __future__ import annotations

import json
import os
import traceback
from collections import deque
from pathlib import Path
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.utils.logging import logger
from datatrove.utils.typeshelper import StatHints

REASON_KEY = "filter_reason"
UNKNOWN = "?"


def doc_key(doc: Document) -> tuple[str, str]:
    """The (language, source) cell a document is counted in."""
    md = doc.metadata
    return str(md.get("language") or UNKNOWN), str(md.get("source") or UNKNOWN)


def where(doc: Document) -> dict[str, Any]:
    """File and line (record number) a document came from, for error reports."""
    md = doc.metadata
    return {"file": md.get("file") or md.get("file_path"), "line": md.get("line"), "id": doc.id}


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True))
    os.replace(tmp, path)


class Funnel:
    """Counters for one step in one task: docs/chars in and out per (language, source), drops per reason."""

    def __init__(self):
        self.cells: dict[str, dict[str, Any]] = {}

    def _cell(self, key: tuple[str, str]) -> dict[str, Any]:
        k = f"{key[0]}\t{key[1]}"
        if k not in self.cells:
            self.cells[k] = {"docs_in": 0, "chars_in": 0, "docs_out": 0, "chars_out": 0, "dropped": {}}
        return self.cells[k]

    def add_in(self, key, chars: int) -> None:
        c = self._cell(key)
        c["docs_in"] += 1
        c["chars_in"] += chars

    def add_out(self, key, chars: int) -> None:
        c = self._cell(key)
        c["docs_out"] += 1
        c["chars_out"] += chars

    def add_drop(self, key, reason: str, chars: int) -> None:
        d = self._cell(key)["dropped"].setdefault(reason, {"docs": 0, "chars": 0})
        d["docs"] += 1
        d["chars"] += chars

    def to_dict(self) -> dict[str, Any]:
        return {"cells": self.cells}


class SkyFilter(BaseFilter):
    """A datatrove filter (``filter(doc) -> bool | (False, reason)``) whose reason always reaches the doc.

    A document that makes ``filter`` raise is dropped with reason ``error:<Type>`` and logged with its file
    and line, instead of crashing the whole task.
    """

    default_reason = "filtered"

    def __init__(self):
        super().__init__(exclusion_writer=None, batch_size=1)

    def setup(self) -> None:
        """Load models etc. once per task (after the step was shipped to its worker process)."""

    def count(self, name: str, value: int = 1) -> None:
        """A named counter for the run report (e.g. contaminated documents per benchmark)."""
        counters = self.__dict__.setdefault("counters", {})
        counters[name] = counters.get(name, 0) + value

    # Set by the pipeline builder from a step's `sources:` / `skip_sources:` keys: documents of other sources
    # pass the step untouched (e.g. web heuristics must not judge GSM8K-style STEM material).
    scope_sources: tuple[str, ...] = ()
    scope_skip_sources: tuple[str, ...] = ()

    def in_scope(self, doc: Document) -> bool:
        src = doc.metadata.get("source")
        if self.scope_sources and src not in self.scope_sources:
            return False
        return src not in self.scope_skip_sources

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.setup()
        self.counters = {}
        for doc in data:
            self.stat_update(StatHints.total)
            if not self.in_scope(doc):
                self.stat_update("out_of_scope", StatHints.forwarded)
                yield doc
                continue
            with self.track_time():
                try:
                    keep, reason = get_filter_result(self.filter(doc))
                except Exception as err:  # one bad document must not end the task
                    keep, reason = False, f"error:{type(err).__name__}"
                    logger.warning(f"{self.name}: {where(doc)}: {err}\n{traceback.format_exc(limit=3)}")
            if keep:
                self.stat_update(StatHints.forwarded)
                yield doc
            else:
                reason = reason or self.default_reason
                doc.metadata[REASON_KEY] = reason
                self.stat_update(StatHints.dropped, f"dropped_{reason}")


class Accounted(PipelineStep):
    """Wraps any order-preserving step; writes ``funnel/<stage>/<rank>_<label>.json`` when the task ends and,
    with ``rejects_dir``, every dropped document (with its reason) to ``<rejects_dir>/<label>/<rank>.jsonl.gz``.
    """

    type = "📊 - ACCOUNT"

    def __init__(
        self,
        inner: PipelineStep,
        label: str,
        funnel_dir: str,
        default_reason: str,
        rejects_dir: str | None = None,
        malformed_dir: str | None = None,
    ):
        super().__init__()
        self.inner = inner
        self.label = label
        self.name = f"{label} ({type(inner).__name__})"
        self.funnel_dir = funnel_dir
        self.default_reason = default_reason
        self.rejects_dir = rejects_dir
        self.malformed_dir = malformed_dir
        self.stats = inner.stats  # datatrove's own per-step stats stay those of the wrapped step

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        funnel = Funnel()
        pending: deque = deque()
        rejects = None
        malformed: list[dict[str, Any]] = []
        if self.rejects_dir:
            from skyloom.data.pipeline.writers import RejectsWriter

            rejects = RejectsWriter(os.path.join(self.rejects_dir, self.label))

        def feed():
            for doc in data:
                pending.append((doc, len(doc.text)))
                yield doc

        def drop(item):
            doc, n = item
            key = doc_key(doc)
            reason = doc.metadata.pop(REASON_KEY, None) or self.default_reason
            funnel.add_in(key, n)
            funnel.add_drop(key, reason, n)
            if reason.startswith(("malformed", "error:")):
                malformed.append({**where(doc), "step": self.label, "reason": reason})
            if rejects is not None:
                doc.metadata["drop_reason"] = reason
                doc.metadata["drop_step"] = self.label
                rejects.write(doc, rank)

        try:
            for out in self.inner.run(feed(), rank, world_size):
                while pending and pending[0][0] is not out:
                    drop(pending.popleft())
                key = doc_key(out)
                if pending:
                    funnel.add_in(key, pending.popleft()[1])
                # else: a step that creates documents — counted out, not in, so the books show the imbalance
                funnel.add_out(key, len(out.text))
                yield out
            while pending:
                drop(pending.popleft())
        finally:
            if rejects is not None:
                rejects.close()
        atomic_write_json(
            os.path.join(self.funnel_dir, f"{rank:05d}_{self.label}.json"),
            {"label": self.label, **funnel.to_dict(), "counters": dict(getattr(self.inner, "counters", {}) or {})},
        )
        if self.malformed_dir:
            atomic_write_json(os.path.join(self.malformed_dir, f"{rank:05d}_{self.label}.json"), malformed)
