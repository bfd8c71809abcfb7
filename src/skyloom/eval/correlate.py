"""Validation loss vs benchmark score across a training run's checkpoints — the report's Figure 1 (§2.2).

Inputs (the training engine's run layout):

    RUN_DIR/metrics.jsonl            {"kind": "val", "step", "set": NAME, "loss", ...} lines (and optionally
                                     {"kind": "bench", "step", "task", "score"} lines with recorded scores)
    RUN_DIR/checkpoints/step_XXXXXXXX/   one loadable checkpoint (with its tokenizer) per saved step

For every checkpoint the benchmark score comes from, in order: a score this command recorded before with
the same settings (`RUN_DIR/eval/step_XXXXXXXX/bench-<task>.json`), a recorded `bench` line in
metrics.jsonl, or a fresh `eval bench` run (then recorded). Validation losses come from metrics.jsonl at
the same step, or — given `data` — from `eval ppl` on those files (recorded the same way). Then, for
each (validation set, benchmark) pair: Pearson and Spearman coefficients over the checkpoints and a
scatter plot (PNG). Lower loss should go with higher scores, so a useful proxy shows a strongly negative r.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from skyloom.eval.stats import pearson, spearman

STEP_DIR = re.compile(r"^step_(\d+)$")


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    """step → checkpoint directory, sorted by step."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        raise FileNotFoundError(f"{run_dir}: no checkpoints/ folder (expected checkpoints/step_XXXXXXXX/)")
    found = {}
    for p in folder.iterdir():
        m = STEP_DIR.match(p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def read_metrics(run_dir: Path) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """({validation set: {step: loss}}, {task: {step: score}}) from metrics.jsonl (last line per step wins)."""
    path = run_dir / "metrics.jsonl"
    val: dict[str, dict[int, float]] = {}
    bench: dict[str, dict[int, float]] = {}
    if not path.is_file():
        return val, bench
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a run killed mid-write leaves a partial last line
            raise ValueError(f"{path}:{number}: invalid JSON") from None
        kind = record.get("kind")
        try:
            if kind == "val":
                val.setdefault(str(record["set"]), {})[int(record["step"])] = float(record["loss"])
            elif kind == "bench":
                bench.setdefault(str(record["task"]), {})[int(record["step"])] = float(record["score"])
        except KeyError as err:
            raise ValueError(f"{path}:{number}: a {kind!r} line without {err}") from None
    return val, bench


def _cached(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return payload if payload.get("settings") == settings else None


def _record(path: Path, settings: dict[str, Any], result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(
        json.dumps({"settings": settings, "result": result}, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    tmp.replace(path)


def task_score(result: dict[str, Any], metric: str) -> float:
    """The overall `metric` of a bench result (gsm8k has acc only)."""
    overall = result["overall"]
    return float(overall.get(metric, overall["acc"]))


def collect(
    run_dir: Path,
    tasks: Sequence[Any],
    bench_settings: dict[str, Any],
    run_bench: Callable[[Any, Path], dict[str, Any]],
    data: dict[str, Any] | None,
    ppl_settings: dict[str, Any],
    run_ppl: Callable[[Path], dict[str, Any]],
    metric: str = "acc",
    recompute: bool = False,
    progress: bool = True,
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]], dict[int, Path]]:
    """Scores and validation losses per checkpoint step, evaluating only what is not recorded yet.

    run_bench(task_spec, checkpoint) and run_ppl(checkpoint) are given by the caller (they load models).
    """
    from skyloom.progress import iterate

    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no step_XXXXXXXX checkpoints")
    val, recorded_bench = read_metrics(run_dir)
    if data:
        val = {}
    for kind, table, hint in (
        ("validation loss of set", val, "evaluate the checkpoints with --data"),
        (
            "recorded score of task",
            {} if recompute else recorded_bench,
            "score them again with --task NAME --recompute",
        ),
    ):
        for name, by_step in table.items():
            bad = sorted(step for step, x in by_step.items() if not math.isfinite(x))
            if bad:  # a diverged run: a NaN point would make every coefficient NaN and the JSON invalid
                raise ValueError(
                    f"{run_dir / 'metrics.jsonl'}: {kind} '{name}' is not finite at step(s) "
                    f"{', '.join(map(str, bad[:5]))}; {hint} instead"
                )
    scores: dict[str, dict[int, float]] = {}
    if not tasks:
        scores = recorded_bench
        if not scores:
            raise ValueError(f"{run_dir}: no --task given and no recorded 'bench' lines in metrics.jsonl")
    for step, ckpt in iterate(checkpoints.items(), "checkpoints", enabled=progress):
        out_dir = run_dir / "eval" / ckpt.name
        for spec in tasks:
            settings = {**bench_settings, "task": spec.name, "path": str(spec.path)}
            file = out_dir / f"bench-{spec.name}.json"
            cached = None if recompute else _cached(file, settings)
            if cached is not None:
                result = cached["result"]
            elif not recompute and step in recorded_bench.get(spec.name, {}):
                scores.setdefault(spec.name, {})[step] = recorded_bench[spec.name][step]
                continue
            else:
                result = run_bench(spec, ckpt)
                _record(file, settings, result)
            scores.setdefault(spec.name, {})[step] = task_score(result, metric)
        if data:
            file = out_dir / "ppl.json"
            cached = None if recompute else _cached(file, ppl_settings)
            result = cached["result"] if cached is not None else run_ppl(ckpt)
            if cached is None:
                _record(file, ppl_settings, result)
            for name, d in result["domains"].items():
                val.setdefault(name, {})[step] = float(d["loss"])
    return val, scores, checkpoints


def correlations(
    val: dict[str, dict[int, float]], scores: dict[str, dict[int, float]], steps: Sequence[int]
) -> list[dict[str, Any]]:
    """Pearson and Spearman for every (validation set, task) over the steps where both are known."""
    rows = []
    for domain, losses in val.items():
        for task, by_step in scores.items():
            common = [s for s in steps if s in losses and s in by_step]
            x = [losses[s] for s in common]
            y = [by_step[s] for s in common]
            rows.append(
                {
                    "set": domain,
                    "task": task,
                    "n": len(common),
                    "steps": common,
                    "pearson": pearson(x, y),
                    "spearman": spearman(x, y),
                }
            )
    return rows


def plot(
    val: dict[str, dict[int, float]],
    scores: dict[str, dict[int, float]],
    rows: list[dict[str, Any]],
    out: Path,
    metric: str,
) -> Path:
    """One panel per task: score against each validation set's loss, points labelled by step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(scores)
    fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(5.5 * max(len(tasks), 1), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for row in (r for r in rows if r["task"] == task):
            steps = row["steps"]
            x = [val[row["set"]][s] for s in steps]
            y = [scores[task][s] for s in steps]
            label = f"{row['set']} (r={row['pearson']:.2f}, ρ={row['spearman']:.2f})"
            ax.plot(x, y, marker="o", label=label)
            for s, xi, yi in zip(steps, x, y):
                ax.annotate(str(s), (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xlabel("validation loss (nats/token)")
        ax.set_ylabel(f"{task} {metric}")
        ax.set_title(f"{task}: score vs validation loss")
        ax.invert_xaxis()  # training moves right: loss falls
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def format_correlations(rows: list[dict[str, Any]]) -> str:
    lines = ["| Validation set | Task | checkpoints | Pearson r | Spearman ρ |", "|---|---|---|---|---|"]

    def f(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{v:+.3f}"

    for r in rows:
        lines.append(f"| {r['set']} | {r['task']} | {r['n']} | {f(r['pearson'])} | {f(r['spearman'])} |")
    return "\n".join(lines)
