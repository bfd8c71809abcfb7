"""Time the whole `skyloom demo` from a fresh workspace and write what it measured to a committed results file.

Wall seconds depend on what else runs on the machine, so the load average is sampled every 5 s during the run and
written next to every timing; losses do not depend on load. docs/demo.md quotes results.md.

    .venv/bin/python experiments/demo_timing/run.py [--out runs/demo_timing] [--label "idle 2-core machine"]
      → experiments/demo_timing/results.json, results.md  (the workspace is deleted first: a cold run)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


class LoadSampler(threading.Thread):
    """1-minute load average every `every` seconds while the demo runs."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stop.wait(self.every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo_timing", help="demo workspace (deleted first)")
    parser.add_argument("--results", default=str(HERE / "results.json"))
    parser.add_argument("--label", default="", help="what the machine was doing, e.g. 'idle' or 'shared with 4 jobs'")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="do not run: write what an existing (possibly unfinished) workspace holds, marked incomplete if so",
    )
    args = parser.parse_args()
    os.chdir(REPO)
    sys.path.insert(0, str(REPO / "src"))
    import torch

    from skyloom.demo.run import Demo, summary_text

    out = Path(args.out)
    if args.collect:
        return collect(out, args)
    shutil.rmtree(out, ignore_errors=True)
    sampler = LoadSampler()
    load_before = os.getloadavg()
    sampler.start()
    t0 = time.time()
    demo = Demo(out)
    records = demo.run()
    wall = time.time() - t0
    sampler.stop.set()
    sampler.join()
    print(summary_text(demo, records))
    loads = sampler.samples or [load_before[0]]
    ev = out / "eval"
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)),
        "label": args.label,
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "load_average": {
            "before": [round(x, 2) for x in load_before],
            "during_min": round(min(loads), 2),
            "during_mean": round(sum(loads) / len(loads), 2),
            "during_max": round(max(loads), 2),
        },
        "wall_seconds": round(wall, 1),
        "phases": {k: {"seconds": r["seconds"], "cpu_seconds": r.get("cpu_seconds")} for k, r in records.items()},
        "sessions": {k: records[k]["summary"] for k in demo.sessions if k in records},
        "ppl": json.loads((ev / "ppl.json").read_text(encoding="utf-8")),
        "leakage": json.loads((ev / "leakage.json").read_text(encoding="utf-8"))
        if (ev / "leakage.json").is_file()
        else None,
        "samples": json.loads((ev / "samples.json").read_text(encoding="utf-8")),
        "tables_md": (ev / "tables.md").read_text(encoding="utf-8"),
    }
    path = Path(args.results)
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(results), encoding="utf-8")
    print(f"wrote {path} and {path.with_suffix('.md')}")


def collect(out: Path, args) -> None:
    """Results of a workspace that was not timed by this script (or did not finish): per phase the recorded
    seconds, per session the last training and validation losses in its metrics.jsonl."""
    files = sorted((out / "phases").glob("*.json"), key=lambda p: p.stat().st_mtime)  # the order they finished
    phases = {p.stem: json.loads(p.read_text()) for p in files}
    sessions = {}
    for run in sorted((out / "runs").glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in run.read_text().splitlines() if line.strip()]
        train = [r for r in rows if r.get("kind") == "train"]
        val: dict[str, float] = {}
        step = None
        for r in rows:
            if r.get("kind") == "val":
                val[r["set"]] = r["loss"]
                step = r.get("step")
        if train:
            sessions[run.parent.name] = {
                "steps": train[-1]["step"],
                "tokens": train[-1]["tokens"],
                "first_loss": train[0]["loss"],
                "last_loss": train[-1]["loss"],
                "validation": val,
                "validation_step": step,
            }
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "label": args.label,
        "complete": "report" in phases,
        "phases": {k: {"seconds": r["seconds"], "cpu_seconds": r.get("cpu_seconds")} for k, r in phases.items()},
        "sessions": sessions,
        "load_average_now": [round(x, 2) for x in os.getloadavg()],
    }
    path = Path(args.results)
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = [
        "# `skyloom demo`: " + ("a finished" if results["complete"] else "an UNFINISHED") + " run, collected "
        "(experiments/demo_timing/run.py --collect)",
        "",
        f"- collected {results['date']}; {args.label}; load average now {results['load_average_now']}",
        "",
        "| phase | wall s | CPU s |",
        "|---|---:|---:|",
        *(f"| {k} | {p['seconds']:.1f} | {(p['cpu_seconds'] or 0):.1f} |" for k, p in results["phases"].items()),
        "",
        "| session | steps so far | tokens | first → last train loss | validation (at step) |",
        "|---|---:|---:|---|---|",
    ]
    for k, s in sessions.items():
        val = ", ".join(f"{d} {v:.2f}" for d, v in s["validation"].items())
        lines.append(
            f"| {k} | {s['steps']} | {s['tokens']:,} | {s['first_loss']:.2f} → {s['last_loss']:.2f} | "
            f"{val} (step {s['validation_step']}) |"
        )
    path.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {path} and {path.with_suffix('.md')}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def markdown(r: dict) -> str:
    la = r["load_average"]
    m = r["machine"]
    lines = [
        "# `skyloom demo`: one full run, measured (experiments/demo_timing/run.py)",
        "",
        f"- date: {r['date']}; machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with "
        f"{m['torch_threads']} thread(s) (OMP_NUM_THREADS={m['OMP_NUM_THREADS']})",
        f"- **load average** (1 min) before {la['before'][0]:.2f}; during the run min {la['during_min']:.2f}, "
        f"mean {la['during_mean']:.2f}, max {la['during_max']:.2f}" + (f" — {r['label']}" if r["label"] else ""),
        f"- **total wall time {r['wall_seconds']:.0f} s ({r['wall_seconds'] / 60:.1f} min)**",
        "",
        "| phase | wall s | CPU s |",
        "|---|---:|---:|",
    ]
    for k, p in r["phases"].items():
        lines.append(f"| {k} | {p['seconds']:.1f} | {(p['cpu_seconds'] or 0):.1f} |")
    lines += [
        "",
        "| session | steps | tokens | first → last train loss | final validation losses |",
        "|---|---:|---:|---|---|",
    ]
    for k, s in r["sessions"].items():
        if s.get("skipped"):
            lines.append(f"| {k} | – | – | skipped: {s['skipped']} | |")
            continue
        val = ", ".join(f"{d} {v:.2f}" for d, v in s["validation"].items())
        lines.append(f"| {k} | {s['steps']} | {s['tokens']:,} | {s['first_loss']:.2f} → {s['last_loss']:.2f} | {val} |")
    lines += ["", r["tables_md"].replace("## ", "### "), "", "### Samples (greedy, after the last Stage-2 step)", ""]
    last = list(r["samples"])[-1]
    for c in r["samples"][last]["continuations"]:
        text = (c["prompt"] + c["greedy"]).replace("\n", "⏎").replace("|", "\\|")
        lines.append(f"- {c['domain']}: `{text}`")
    for name, got in r["samples"].items():
        for p in got.get("problems", []):
            ans = p["answer"].replace("\n", "⏎")
            lines.append(f"- word problem after {name} ({'correct' if p['correct'] else 'wrong'}): `{ans}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
