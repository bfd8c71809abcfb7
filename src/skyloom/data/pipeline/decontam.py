"""Decontamination: n-gram overlap with benchmark items (GPT-3 style 13-grams; units are words for English
and characters for Chinese).

Each benchmark field of each record (e.g. a GSM8K ``question``, a C-Eval ``question``) is one *unit*; a
document contaminates a unit when it contains at least ``min_overlap`` of that unit's n-grams. Units
shorter than ``n`` units are skipped (too short to be evidence), and n-grams shared by more than
``max_items_per_ngram`` units (templates such as "how many … does she have left") are not evidence either.
Matching documents are dropped (``mode: drop``, reason ``contaminated:<benchmark>``) or kept with
``metadata.contaminated = [benchmarks]`` (``mode: flag``); either way the counts per benchmark are reported.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from skyloom.data.pipeline.base import SkyFilter
from skyloom.data.pipeline.text import ngram_keys, unit_hashes, units


@dataclass
class BenchmarkConfig:
    name: str
    path: str  # a file or a glob (e.g. ../shared/data/cmmlu/test/*.csv)
    fields: list[str] = field(default_factory=lambda: ["question"])
    format: Literal["auto", "jsonl", "json", "csv"] = "auto"
    records_path: str | None = None  # json: dotted path to the record list


@dataclass
class DecontamConfig:
    benchmarks: list[BenchmarkConfig] = field(default_factory=list)
    n: int = 13
    min_overlap: float = 0.5
    max_items_per_ngram: int = 10
    mode: Literal["drop", "flag"] = "drop"

    def validate(self) -> None:
        from skyloom.config import ConfigError

        if not self.benchmarks:
            raise ConfigError("benchmarks", "list at least one benchmark (name, path, fields)")
        if self.n < 3:
            raise ConfigError("n", "must be ≥ 3")
        if not 0 < self.min_overlap <= 1:
            raise ConfigError("min_overlap", "must be within (0, 1]")


def ngram_hashes(text: str, n: int) -> np.ndarray:
    """Distinct 64-bit keys of unit n-grams."""
    us = units(text)
    if len(us) < n:
        return np.zeros(0, dtype=np.uint64)
    return np.unique(ngram_keys(unit_hashes(us), n))


def _records(b: BenchmarkConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    paths = sorted(glob.glob(b.path)) if any(c in b.path for c in "*?[") else [b.path]
    if not paths or not all(os.path.isfile(p) for p in paths):
        raise FileNotFoundError(f"benchmark {b.name!r}: no file at {b.path}")
    for path in paths:
        fmt = b.format
        if fmt == "auto":
            fmt = {".csv": "csv", ".json": "json"}.get(os.path.splitext(path)[1], "jsonl")
        with open(path, encoding="utf-8-sig") as f:
            raw = f.read()
        if fmt == "csv":
            for i, row in enumerate(csv.DictReader(io.StringIO(raw))):
                yield f"{os.path.basename(path)}:{i + 2}", row
        elif fmt == "jsonl":
            for i, line in enumerate(raw.splitlines()):
                if line.strip():
                    yield f"{os.path.basename(path)}:{i + 1}", json.loads(line)
        else:
            data = json.loads(raw)
            for part in (b.records_path or "").split(".") if b.records_path else []:
                data = data[part]
            for i, rec in enumerate(data):
                yield f"{os.path.basename(path)}:{i}", rec


class BenchmarkIndex:
    """n-gram hash → units; built once per task from the benchmark files."""

    def __init__(self, cfg: DecontamConfig):
        self.cfg = cfg
        self.unit_names: list[tuple[str, str]] = []  # (benchmark, "file:line/field")
        self.unit_sizes: list[int] = []
        owners: dict[int, list[int]] = defaultdict(list)
        for b in cfg.benchmarks:
            for where, rec in _records(b):
                for fld in b.fields:
                    val = rec.get(fld) if isinstance(rec, dict) else None
                    if not isinstance(val, str):
                        continue
                    hs = ngram_hashes(val, cfg.n)
                    if len(hs) == 0:
                        continue
                    uid = len(self.unit_names)
                    self.unit_names.append((b.name, f"{where}/{fld}"))
                    self.unit_sizes.append(len(hs))
                    for h in hs.tolist():
                        owners[h].append(uid)
        common = {h for h, us in owners.items() if len(us) > cfg.max_items_per_ngram}
        self.owners = {h: us for h, us in owners.items() if h not in common}
        self.keys = np.array(sorted(self.owners), dtype=np.uint64)
        # a unit's size counts only its informative n-grams
        informative = np.zeros(len(self.unit_sizes), np.int64)
        for us in self.owners.values():
            for u in us:
                informative[u] += 1
        self.informative = informative
        self.units_per_benchmark = defaultdict(int)
        for name, _ in self.unit_names:
            self.units_per_benchmark[name] += 1

    def matches(self, text: str) -> dict[str, list[str]]:
        """benchmark → matched units (``file:line/field``)."""
        hs = ngram_hashes(text, self.cfg.n)
        if len(hs) == 0 or len(self.keys) == 0:
            return {}
        pos = np.searchsorted(self.keys, hs)
        pos[pos >= len(self.keys)] = 0
        hit = hs[self.keys[pos] == hs]
        if len(hit) == 0:
            return {}
        counts: dict[int, int] = defaultdict(int)
        for h in hit.tolist():
            for u in self.owners[h]:
                counts[u] += 1
        out: dict[str, list[str]] = defaultdict(list)
        for u, c in counts.items():
            if self.informative[u] and c / self.informative[u] >= self.cfg.min_overlap:
                name, where = self.unit_names[u]
                out[name].append(where)
        return dict(out)


class Decontaminate(SkyFilter):
    name = "🧫 Decontamination"
    default_reason = "contaminated"

    def __init__(self, cfg: DecontamConfig):
        super().__init__()
        self.cfg = cfg
        self._index: BenchmarkIndex | None = None

    def setup(self) -> None:
        if self._index is None:
            self._index = BenchmarkIndex(self.cfg)

    def filter(self, doc) -> bool | tuple[bool, str]:
        found = self._index.matches(doc.text)
        if not found:
            return True
        for name, where in sorted(found.items()):
            self.count(f"docs:{name}")
            self.count(f"items:{name}", len(where))
        doc.metadata["contaminated"] = sorted(found)
        doc.metadata["contaminated_items"] = [w for ws in found.values() for w in ws][:20]
        if self.cfg.mode == "flag":
            return True
        return False, f"contaminated:{sorted(found)[0]}"
