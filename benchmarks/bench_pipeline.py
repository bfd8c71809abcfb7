"""Whole-pipeline throughput: documents per second per core for a recipe (default: the SkyPile example).

    .venv/bin/python benchmarks/bench_pipeline.py [recipes/data/example.yaml] [--tasks 1]

Runs the recipe with one worker (all tasks in this process, one core) into a temporary output directory and
reports documents read and kept, documents/s and characters/s per core — from CPU time, so a busy shared
machine does not distort it (wall time is printed too) — and the wall time of each stage and of each step
(datatrove logs). The quality model the recipe names is trained first if missing (not timed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _stage_seconds(log_dir: Path) -> dict[str, float]:
    out = {}
    for stage in sorted(p for p in log_dir.iterdir() if p.is_dir()):
        total = 0.0
        for log in sorted((stage / "logs").glob("task_*.log")):
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
            stamps = [ln[:23] for ln in lines if ln[:4].isdigit()]
            done = [ln[:23] for ln in lines if "Processing done" in ln]
            if stamps and done:
                fmt = "%Y-%m-%d %H:%M:%S.%f"
                total += (dt.datetime.strptime(done[0], fmt) - dt.datetime.strptime(stamps[0], fmt)).total_seconds()
        out[stage.name] = total
    return out


def _step_seconds(log_dir: Path) -> list[tuple[str, str, float, int]]:
    """(stage, step, seconds inside the step, documents) from datatrove's per-stage stats.json (wall time
    measured inside each step's own work, so readers' and writers' I/O is separate)."""
    out = []
    for stage in sorted(p for p in log_dir.iterdir() if p.is_dir()):
        f = stage / "stats.json"
        if not f.is_file():
            continue
        for st in json.loads(f.read_text(encoding="utf-8")):
            t = st.get("time_stats") or {}
            if t.get("total"):
                out.append((stage.name, st["name"], float(t["total"]), int(t.get("n", 0))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", default="recipes/data/example.yaml")
    ap.add_argument("--tasks", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    from skyloom.config import read_yaml
    from skyloom.data.pipeline.config import load_pipeline_config
    from skyloom.data.pipeline.runner import _ensure_quality_models, run_pipeline

    data = read_yaml(args.recipe)
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    data["output_dir"] = str(tmp / "out")
    data["executor"] = {"type": "local", "tasks": args.tasks, "workers": 1}
    cfg = load_pipeline_config(data)
    _ensure_quality_models(cfg)
    devnull = open(os.devnull, "w")
    stdout, stderr, sys.stdout, sys.stderr = sys.stdout, sys.stderr, devnull, devnull
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        report = run_pipeline(cfg, quiet=True)
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    steps = report["steps"]
    read = [r for r in steps if r["step"].startswith("read:")]
    docs_in = sum(r["docs_in"] for r in read)
    chars_in = sum(r["chars_in"] for r in read)
    docs_out = steps[-1]["docs_out"]
    print(
        f"recipe {args.recipe}: {docs_in:,} documents read ({chars_in / 1e6:.1f} M chars, raw HTML included), "
        f"{docs_out:,} kept; one core, {args.tasks} task(s)"
    )
    print(
        f"CPU {cpu:.1f} s → {docs_in / cpu:,.0f} documents/s per core, {chars_in / cpu / 1e6:.2f} M chars/s per core "
        f"(wall {seconds:.1f} s: {docs_in / seconds:,.0f} documents/s; the two differ when the machine is shared)"
    )
    print("\n| stage | seconds |\n|---|---:|")
    for name, s in _stage_seconds(tmp / "out" / "logs").items():
        print(f"| {name} | {s:.1f} |")
    print(
        "\nsteps' own wall time (a step that consumes the stream — signatures, embeddings, dedup filter — includes "
        "the steps before it; setup such as index building is not counted)"
    )
    print("\n| stage | step | seconds | documents |\n|---|---|---:|---:|")
    for stage, step, sec, n in _step_seconds(tmp / "out" / "logs"):
        print(f"| {stage} | {step} | {sec:.1f} | {n:,} |")
    print(
        f"\nbooks balanced: {report['checks']['rows_balanced']}, chained: {report['checks']['rows_chained']}; "
        f"outputs: {json.dumps({k: v['docs'] for k, v in report['outputs'].items() if isinstance(v, dict)})}"
    )
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")


if __name__ == "__main__":
    main()
