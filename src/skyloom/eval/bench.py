"""Benchmarks by name — any task in the registry (`skyloom.eval.tasks`): `mmlu`, `ceval`, `cmmlu` (multiple
choice), `gsm8k` (generation), `gsm8k-chat`, `math-zh` (zero-shot in a chat template), and any registered one.

`--task NAME[:PATH]` — PATH is the benchmark's directory; without it the copy in the shared data folder
(`$SKYLOOM_SHARED_DATA`, default `../shared/data`) is used where one exists (C-Eval, CMMLU, GSM8K; MMLU
has none and needs a path).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyloom.eval.lm import LanguageModel, Sampling
from skyloom.eval.tasks import Task, TaskOptions, get_task
from skyloom.eval.textdata import shared_data_dir


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: Path

    @property
    def task(self) -> Task:
        return get_task(self.name)

    @property
    def kind(self) -> str:
        return self.task.kind


def parse_task(spec: str) -> TaskSpec:
    """`NAME` or `NAME:PATH` → TaskSpec for any registered task; unknown names and missing paths are named."""
    name, _, path = spec.partition(":")
    name = name.strip().lower()
    task = get_task(name)
    if path:
        return TaskSpec(name, Path(path))
    if task.default_path is None:
        raise ValueError(
            f"task {name!r} needs a path: --task {name}:PATH (its data file or folder; "
            "docs/evaluation.md lists each task's file layouts)"
        )
    return TaskSpec(name, shared_data_dir() / task.default_path)


def run_task(
    lm: LanguageModel,
    spec: TaskSpec,
    shots: int | None = None,
    limit: int | None = None,
    fmt: str = "letter",
    split: str | None = None,
    subjects: Sequence[str] | None = None,
    max_new_tokens: int = 256,
    sampling: Sampling | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one benchmark; (results JSON, per-item records)."""
    task = spec.task
    k = task.default_shots if shots is None else shots
    if k < 0:
        raise ValueError(f"shots must be ≥ 0, got {k}")
    options = TaskOptions(
        shots=k if task.takes_shots else 0,
        limit=limit,
        fmt=fmt,
        split=split,
        subjects=subjects,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
    )
    result, records = task.evaluate(lm, spec.path, options)
    if not task.takes_shots:
        result["shots_requested"] = k
        result["warnings"] = [f"{spec.name}: always zero-shot; --shots {k} is ignored"] if k else []
    return result, records


def write_records(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Per-item prompts and predictions as JSON lines (the exact prompts, reproducible and hashable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def shots_cell(result: dict[str, Any]) -> str:
    """The shots actually used: "5", or "3 of 5" / "0–5 of 5" when some subject had fewer exemplars than asked."""
    asked = result.get("shots_requested", result["shots"])
    used = [s.get("shots", result["shots"]) for s in result["subjects"].values()] or [result["shots"]]
    lo, hi = min(used), max(used)
    if lo == hi == asked:
        return str(asked)
    return f"{lo} of {asked}" if lo == hi else f"{lo}–{hi} of {asked}"


def format_results(results: dict[str, dict[str, Any]], per_subject: bool = True) -> str:
    """Markdown: one overall line per task, then the per-subject table (with its shots when some fell short)."""
    lines = ["| Task | shots | n | acc | acc_norm | prompt sha256 |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        o = r["overall"]
        norm = f"{100 * o['acc_norm']:.1f}" if "acc_norm" in o else "–"
        lines.append(
            f"| {name} | {shots_cell(r)} | {o['n']:,} | {100 * o['acc']:.1f} | {norm} | {r['prompt_sha256'][:12]} |"
        )
    if per_subject:
        for name, r in results.items():
            if len(r["subjects"]) <= 1:
                continue
            short = any(
                s.get("shots", r["shots"]) != r.get("shots_requested", r["shots"]) for s in r["subjects"].values()
            )
            head = "| Subject | n | acc | acc_norm |" + (" shots |" if short else "")
            lines += ["", f"{name} by subject:", "", head, "|---" * head.count(" |") + "|"]
            for subject, s in r["subjects"].items():
                row = f"| {subject} | {s['n']} | {100 * s['acc']:.1f} | {100 * s['acc_norm']:.1f} |"
                lines.append(row + (f" {s.get('shots', r['shots'])} |" if short else ""))
    return "\n".join(lines)
