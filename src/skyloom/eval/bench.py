"""Few-shot benchmarks by name: `mmlu`, `ceval`, `cmmlu` (multiple choice) and `gsm8k` (generation).

`--task NAME[:PATH]` — PATH is the benchmark's directory; without it the copy in the shared data folder
(`$SKYLOOM_SHARED_DATA`, default `../shared/data`) is used where one exists (C-Eval, CMMLU, GSM8K; MMLU
has none and needs a path).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from skyloom.eval.lm import LanguageModel, Sampling
from skyloom.eval.textdata import shared_data_dir

TASKS = {
    # name: (kind, default folder under the shared data, default shots)
    "mmlu": ("multiple_choice", None, 5),
    "ceval": ("multiple_choice", "ceval", 5),
    "cmmlu": ("multiple_choice", "cmmlu", 5),
    "gsm8k": ("generation", "gsm8k", 8),
    # zero-shot math in a chat template (skyloom/eval/math.py): GSM8K test, or any math JSONL given as PATH
    "gsm8k-chat": ("math", "gsm8k/test.jsonl", 0),
    "math-zh": ("math", None, 0),
}


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: Path

    @property
    def kind(self) -> str:
        return TASKS[self.name][0]


def parse_task(spec: str) -> TaskSpec:
    """`NAME` or `NAME:PATH` → TaskSpec; unknown names and missing paths are named in the error."""
    name, _, path = spec.partition(":")
    name = name.strip().lower()
    if name not in TASKS:
        import difflib

        close = difflib.get_close_matches(name, list(TASKS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; known: {', '.join(TASKS)}")
    if path:
        return TaskSpec(name, Path(path))
    default = TASKS[name][1]
    if default is None:
        raise ValueError(f"task {name!r} needs a path: --task {name}:DIR (a folder with dev/ and test/ CSVs)")
    return TaskSpec(name, shared_data_dir() / default)


def run_task(lm: LanguageModel, spec: TaskSpec, shots: int | None = None, limit: int | None = None,
             fmt: str = "letter", split: str | None = None, subjects: Sequence[str] | None = None,
             max_new_tokens: int = 256, sampling: Sampling | None = None
             ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one benchmark; (results JSON, per-item records)."""
    k = TASKS[spec.name][2] if shots is None else shots
    if k < 0:
        raise ValueError(f"shots must be ≥ 0, got {k}")
    if spec.kind == "math":
        from skyloom.eval.math import evaluate_math

        result, records = evaluate_math(lm, spec.path, task=spec.name, limit=limit, max_new_tokens=max_new_tokens,
                                        sampling=sampling)
        result["shots_requested"] = k
        result["warnings"] = [f"{spec.name}: zero-shot in a chat template; --shots {k} is ignored"] if k else []
        return result, records
    if spec.kind == "generation":
        from skyloom.eval.gsm8k import evaluate_gsm8k

        return evaluate_gsm8k(lm, spec.path, shots=k, limit=limit, max_new_tokens=max_new_tokens, sampling=sampling)
    from skyloom.eval.multiple_choice import evaluate_multiple_choice

    return evaluate_multiple_choice(lm, spec.name, spec.path, shots=k, fmt=fmt, split=split, limit=limit,
                                    subjects=subjects)


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
        lines.append(f"| {name} | {shots_cell(r)} | {o['n']:,} | {100 * o['acc']:.1f} | {norm} | "
                     f"{r['prompt_sha256'][:12]} |")
    if per_subject:
        for name, r in results.items():
            if len(r["subjects"]) <= 1:
                continue
            short = any(s.get("shots", r["shots"]) != r.get("shots_requested", r["shots"])
                        for s in r["subjects"].values())
            head = "| Subject | n | acc | acc_norm |" + (" shots |" if short else "")
            lines += ["", f"{name} by subject:", "", head, "|---" * head.count(" |") + "|"]
            for subject, s in r["subjects"].items():
                row = f"| {subject} | {s['n']} | {100 * s['acc']:.1f} | {100 * s['acc_norm']:.1f} |"
                lines.append(row + (f" {s.get('shots', r['shots'])} |" if short else ""))
    return "\n".join(lines)
