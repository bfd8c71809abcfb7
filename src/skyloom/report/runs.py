"""Read what a run directory holds: one or more training sessions' metrics.jsonl, evaluation results, the funnel.

A RUN_DIR is either a single training run (`RUN_DIR/metrics.jsonl`) or a workspace of chained sessions
(`skyloom demo`: `RUN_DIR/demo.json` names them in order, each in `RUN_DIR/runs/<session>/`; otherwise every
`RUN_DIR/runs/*/` or `RUN_DIR/*/` holding a metrics.jsonl, in the order they started). A session whose
config.yaml has `train.init_from` continues the previous one, so its steps and tokens are drawn after it.
Lines of kinds the report does not know (e.g. `{"kind": "eval", "round": 3, "accuracy": 0.41}`) are kept and
plotted as generic series; unreadable lines are counted, never fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KNOWN_KINDS = ("train", "val", "event")


@dataclass
class Session:
    name: str
    directory: Path
    records: list[dict[str, Any]]
    config: dict[str, Any]
    step_offset: int = 0
    token_offset: int = 0
    bad_lines: int = 0

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]

    @property
    def train(self) -> list[dict[str, Any]]:
        return [r for r in self.of("train") if isinstance(r.get("step"), (int, float))]

    @property
    def last_step(self) -> int:
        steps = [int(r["step"]) for r in self.records if isinstance(r.get("step"), (int, float))]
        return max(steps, default=0)

    @property
    def last_tokens(self) -> int:
        toks = [int(r["tokens"]) for r in self.records if isinstance(r.get("tokens"), (int, float))]
        return max(toks, default=0)

    @property
    def continues(self) -> bool:
        return bool((self.config.get("train") or {}).get("init_from"))


@dataclass
class RunData:
    directory: Path
    sessions: list[Session]
    ppl: dict[str, Any] | None = None
    leakage: dict[str, Any] | None = None
    samples: dict[str, Any] | None = None  # eval/samples.json (the demo): what each session's model writes
    funnel_md: str | None = None
    phases: dict[str, Any] = field(default_factory=dict)

    @property
    def other_kinds(self) -> list[str]:
        kinds = {r.get("kind") for s in self.sessions for r in s.records}
        return sorted(k for k in kinds if isinstance(k, str) and k not in KNOWN_KINDS)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Records of a metrics.jsonl and the number of lines that were not JSON objects."""
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def _read_config(directory: Path) -> dict[str, Any]:
    import yaml

    path = directory / "config.yaml"
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _session_dirs(run_dir: Path) -> list[tuple[str, Path]]:
    if (run_dir / "metrics.jsonl").is_file():
        return [(run_dir.name, run_dir)]
    demo = run_dir / "demo.json"
    if demo.is_file():
        names = json.loads(demo.read_text(encoding="utf-8")).get("sessions", [])
        found = [(n, run_dir / "runs" / n) for n in names if (run_dir / "runs" / n / "metrics.jsonl").is_file()]
        if found:
            return found
    candidates = [p.parent for p in sorted(run_dir.glob("runs/*/metrics.jsonl"))] or [
        p.parent for p in sorted(run_dir.glob("*/metrics.jsonl"))
    ]

    def started(d: Path) -> float:
        recs, _ = read_metrics(d / "metrics.jsonl")
        times = [r["time"] for r in recs if isinstance(r.get("time"), (int, float))]
        return min(times, default=(d / "metrics.jsonl").stat().st_mtime)

    return [(d.name, d) for d in sorted(candidates, key=started)]


def load_run(run_dir: str | Path) -> RunData:
    """Everything the report shows, read from `run_dir` (see the module docstring)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such run directory")
    sessions = []
    for name, d in _session_dirs(root):
        records, bad = read_metrics(d / "metrics.jsonl")
        sessions.append(Session(name, d, records, _read_config(d), bad_lines=bad))
    if not sessions:
        raise FileNotFoundError(f"{root}: no metrics.jsonl here, in runs/*/ or in */ — not a run directory")
    for prev, s in zip(sessions, sessions[1:]):
        if s.continues:
            s.step_offset = prev.step_offset + prev.last_step
            s.token_offset = prev.token_offset + prev.last_tokens
    data = RunData(root, sessions)
    for base in (root / "eval", root):
        if data.ppl is None and (base / "ppl.json").is_file():
            data.ppl = json.loads((base / "ppl.json").read_text(encoding="utf-8"))
        if data.leakage is None and (base / "leakage.json").is_file():
            data.leakage = json.loads((base / "leakage.json").read_text(encoding="utf-8"))
        if data.samples is None and (base / "samples.json").is_file():
            data.samples = json.loads((base / "samples.json").read_text(encoding="utf-8"))
    if (root / "pipeline" / "funnel.md").is_file():
        data.funnel_md = (root / "pipeline" / "funnel.md").read_text(encoding="utf-8")
    for p in sorted((root / "phases").glob("*.json")):
        try:
            data.phases[p.stem] = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
    return data
