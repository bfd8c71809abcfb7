"""Shared plumbing for the report's small-scale experiments (experiments/*/run.py).

Every experiment trains `tiny`-preset models (2.9M parameters) with the training engine on the real data beside the
repository (`../shared/data`), starting from `recipes/tiny.yaml`: its tokenizer recipe, sources and validation sets.
Data lives in one directory shared by all experiments (default `runs/experiments/data`: an 8,192-entry BPE and three
packed sources `en` = WikiText-2 valid, `zh` = FewCLUE ChID passages, `stem` = GSM8K train), created on first use.

Runs are resumable: a run directory remembers the config it was started with (`experiment-config.json`); the same
config resumes (a finished run is not re-trained), a changed one starts that run afresh.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# the real data: relative to the repository root like the recipes, or SKYLOOM_SHARED_DATA (as for the tests and eval)
SHARED = Path(os.environ.get("SKYLOOM_SHARED_DATA") or "../shared/data")
DEFAULT_DATA = "runs/experiments/data"
TINY_DATA = "runs/tiny-data"
OVERRIDES: list[str] = []  # `--set key=value` of the experiment scripts: applied to every run they train


def add_common_options(parser, out: str, out_help: str, results: Path, results_help: str) -> None:
    """The options every experiment script shares: where runs and results go, threads, `--set` overrides."""
    parser.add_argument("--out", default=out, help=out_help)
    parser.add_argument("--data-dir", default=DEFAULT_DATA, help="shared tokenizer + token shards directory")
    parser.add_argument("--results", default=str(results), help=results_help)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (use 1 when other jobs run)")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="dotted config overrides applied to every run (e.g. model.n_layers=2); for quick checks",
    )


def start(args, *shared: str) -> None:
    """Before any work: run from the repository root (the recipes' relative paths assume it) with skyloom
    importable, check the shared real data (`shared`, relative to ../shared/data), apply --set and --threads."""
    os.chdir(REPO)
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    missing = [str(SHARED / r) for r in shared if not (SHARED / r).exists()]
    if missing:
        raise SystemExit(
            "this experiment needs the shared real data beside the repository; missing: "
            + ", ".join(missing)
            + " (see ../shared/data/README.md)"
        )
    OVERRIDES[:] = args.set
    import torch

    torch.set_num_threads(max(1, args.threads))


def base_config(data_dir: str = DEFAULT_DATA, drop_sources: Iterable[str] = ()) -> dict[str, Any]:
    """recipes/tiny.yaml as a dict, its data directory moved to `data_dir`, without `drop_sources`."""
    from skyloom.config import read_yaml

    raw = read_yaml(REPO / "recipes" / "tiny.yaml")

    def move(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(TINY_DATA):
            return data_dir.rstrip("/") + value[len(TINY_DATA) :]
        if isinstance(value, dict):
            return {k: move(v) for k, v in value.items()}
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    cfg = move(raw)
    for name in drop_sources:
        cfg["data"]["sources"].pop(name)
    return cfg


def set_key(cfg: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = cfg
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


TIMING_FILE = "experiment-timing.json"


def trained_steps(run_dir: Path) -> int:
    """The last optimizer step a run's metrics.jsonl records (0 before any)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    rows = (json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip())
    return max((r["step"] for r in rows if r.get("kind") == "train"), default=0)


class TrainingSession:
    """Times the training that really happens inside the `with` block and appends it to the run's
    experiment-timing.json, so a later resumed or skipped re-run still reports what the run originally cost
    (a re-run's own wall time would say 4 s for a run that trained for an hour). A block that trains no step
    records nothing; an interrupted one is recorded as such (its cost was real)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)

    def __enter__(self) -> TrainingSession:
        self.step0, self.t0, self.load0 = trained_steps(self.run_dir), time.time(), os.getloadavg()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        step1 = trained_steps(self.run_dir)
        if step1 <= self.step0 or not self.run_dir.is_dir():
            return
        import torch

        session = {
            "started": self.started,
            "steps": [self.step0, step1],
            "wall_s": round(time.time() - self.t0, 1),
            "load_avg_start": [round(x, 2) for x in self.load0],
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            "torch_threads": torch.get_num_threads(),
            "completed": exc_type is None,
        }
        path = self.run_dir / TIMING_FILE
        sessions = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        save_json(path, sessions + [session])


def training_cost(run_dir: Path) -> dict[str, Any]:
    """What training `run_dir` really cost, over all its sessions (see TrainingSession): total wall seconds,
    the 1-minute load average of the machine at the start of each session, and the sessions themselves."""
    path = Path(run_dir) / TIMING_FILE
    if not path.is_file():
        return {"train_wall_s": None, "note": "not recorded (trained before timing was recorded)"}
    sessions = json.loads(path.read_text(encoding="utf-8"))
    return {
        "train_wall_s": round(sum(s["wall_s"] for s in sessions), 1),
        "load_avg_1min": [s["load_avg_start"][0] for s in sessions],
        "sessions": sessions,
    }


def cost_table(costs: dict[str, dict[str, Any]]) -> str:
    """Markdown table of training_cost() per run: what training really took, under which machine load."""
    lines = ["| run | training wall time (s) | load average (1 min) at its start |", "|---|---|---|"]
    for name, cost in costs.items():
        if cost["train_wall_s"] is None:
            lines.append(f"| {name} | not recorded | not recorded |")
        else:
            loads = ", ".join(f"{x:.1f}" for x in cost["load_avg_1min"])
            lines.append(f"| {name} | {cost['train_wall_s']:,.0f} | {loads} |")
    return "\n".join(lines)


def train(cfg_dict: dict[str, Any], run_dir: Path, label: str) -> Path:
    """Train (or resume, or skip when finished) one run; returns its directory."""
    from skyloom.config import apply_overrides, build
    from skyloom.train.config import RunConfig
    from skyloom.train.prepare import prepare_run_data
    from skyloom.train.trainer import Trainer

    cfg_dict = apply_overrides(copy.deepcopy(cfg_dict), OVERRIDES)
    cfg_dict["out_dir"] = str(run_dir)
    cfg = build(RunConfig, cfg_dict)
    marker = run_dir / "experiment-config.json"
    wanted = json.dumps(cfg_dict, sort_keys=True)
    if run_dir.exists() and (not marker.is_file() or marker.read_text(encoding="utf-8") != wanted):
        print(f"[{label}] {run_dir} holds a run with other settings; starting it afresh", flush=True)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(wanted, encoding="utf-8")
    t0 = time.time()
    print(f"[{label}] training → {run_dir}", flush=True)
    with TrainingSession(run_dir):
        prepare_run_data(cfg)  # a raw source's shards (e.g. leakage's GSM8K records) are packed here
        status = Trainer(cfg, run_dir, resume=True).fit()
    if status != "finished":
        raise SystemExit(f"[{label}] {run_dir}: {status}; run the same command again to resume")
    print(f"[{label}] done in {time.time() - t0:.0f} s", flush=True)
    return run_dir


def metrics(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train lines, val lines) of a run's metrics.jsonl."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    return [r for r in rows if r["kind"] == "train"], [r for r in rows if r["kind"] == "val"]


def val_at(run_dir: Path, step: int | None = None) -> dict[str, float]:
    """{set: loss} at `step` (default: the last validated step)."""
    _, val = metrics(run_dir)
    step = max(r["step"] for r in val) if step is None else step
    return {r["set"]: r["loss"] for r in val if r["step"] == step}


def val_curve(run_dir: Path) -> dict[str, dict[str, float]]:
    """{step: {set: loss, …, "tokens": tokens trained so far}} of every validation pass of a run (steps as strings:
    the JSON keys)."""
    out: dict[str, dict[str, float]] = {}
    for r in metrics(run_dir)[1]:
        out.setdefault(str(r["step"]), {"tokens": r["tokens"]})[r["set"]] = r["loss"]
    return out


def resolved_config(run_dir: Path) -> dict[str, Any]:
    """The run's config as the trainer resolved it (its config.yaml): the settings the READMEs quote."""
    from skyloom.config import read_yaml

    return read_yaml(run_dir / "config.yaml")


def last_checkpoint(run_dir: Path) -> Path:
    found = sorted((run_dir / "checkpoints").glob("step_*"))
    if not found:
        raise FileNotFoundError(f"{run_dir}/checkpoints: no checkpoint")
    return found[-1]


def write_jsonl_texts(path: Path, texts: Iterable[str]) -> Path:
    """One {"text": …} record per line (the format the trainer's raw sources and validation sets read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def gsm8k_texts(split: str, start: int = 0, stop: int | None = None) -> list[str]:
    """GSM8K samples as the report scores them (question + " " + answer), records [start, stop) of the split."""
    lines = (SHARED / "gsm8k" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()[start:stop]
    out = []
    for line in lines:
        r = json.loads(line)
        out.append(f"{r['question']} {r['answer']}")
    return out


def save_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
