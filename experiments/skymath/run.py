"""SkyMath at CPU scale: plain SFT vs rejection-sampling (RFT) vs self-compare fine-tuning, equal training tokens.

1. data     problems.py: 2,000 training problems (1–4 steps, English + Chinese, annotated solutions), 120 new
            problems from the training templates (`val`, in-distribution) and 120 from held-out templates with
            held-out starting numbers (`test`); 3,000 further training-template problems as pretraining text.
2. pretrain a small Llama-style model (default dim 64, 2 layers, BPE trained here) on the pretraining text
            with `skyloom train`'s engine (2,048 tokens per step everywhere).
3. sft0     `skyloom sft` on the 3,000 references (Skywork chat template) — the common starting point.
4. arms     one `skyloom skymath` round each from sft0, the same number of optimizer steps × tokens per step:
              sft      mix reference=1, own=0, compare=0   (more plain SFT; no sampling)
              rft      mix reference=1, own=1, compare=0   (+ own correct, distinct solutions)
              compare  mix reference=1, own=1, compare=1   (+ self-compare examples)
5. report   greedy zero-shot accuracy per step count and language on val and test with Wilson 95% intervals →
            results/results.json and results/results.md.

    .venv/bin/python experiments/skymath/run.py                 # tens of minutes on 2 shared cores
    .venv/bin/python experiments/skymath/run.py --quick         # a smoke run (minutes)
Stages are cached in --work (default runs/skymath-exp); re-running continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from problems import generate, write  # noqa: E402

ARMS = {
    "sft": {"reference": 1.0, "own": 0.0, "compare": 0.0},
    "rft": {"reference": 1.0, "own": 1.0, "compare": 0.0},
    "compare": {"reference": 1.0, "own": 1.0, "compare": 1.0},
}


@contextmanager
def timed(work: Path, stage: str, already_done: bool):
    """Record the wall time and machine load of a stage that really runs (not of one found finished) in
    WORK/timing.json, so results.json reports what the stages cost even after a resumed re-run."""
    t0, load0 = time.time(), os.getloadavg()
    yield
    if already_done:
        return
    path = work / "timing.json"
    timing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    timing[stage] = {
        "wall_s": round(time.time() - t0, 1),
        "load_avg_start": [round(x, 2) for x in load0],
        "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "threads": torch_threads(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t0)),
    }
    path.write_text(json.dumps(timing, indent=1) + "\n", encoding="utf-8")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def finished(run: Path) -> bool:
    """A training run under `run` that has logged its "finished" event."""
    log = run / "metrics.jsonl"
    return log.is_file() and any(json.loads(x).get("event") == "finished" for x in log.open() if x.strip())


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def make_data(work: Path, a) -> None:
    if (work / "data" / "DONE").is_file():
        return
    train = generate(a.train, "train", 1)
    seen = {p["question"] for p in train}
    val = [p for p in generate(a.val * 2, "train", 2) if p["question"] not in seen][: a.val]
    pt = [p for p in generate(a.pretrain_problems, "train", 3) if p["question"] not in seen]
    test = generate(a.test, "test", 4)
    d = work / "data"
    write(d / "train.jsonl", train)
    write(d / "val.jsonl", val)
    write(d / "test.jsonl", test)
    write(d / "pt.jsonl", [{"text": p["question"] + "\n" + p["answer"]} for p in pt])
    (d / "DONE").write_text("ok")


def pretrain(work: Path, a) -> Path:
    from skyloom.config import build
    from skyloom.train.config import RunConfig
    from skyloom.train.prepare import prepare_run_data
    from skyloom.train.trainer import Trainer, find_checkpoint

    run = work / "pretrain"
    try:
        return find_checkpoint(run)
    except FileNotFoundError:
        pass
    d = work / "data"
    cfg = build(
        RunConfig,
        {
            "model": {
                "arch": "llama",
                "vocab_size": 1024,
                "dim": a.dim,
                "n_layers": a.layers,
                "n_heads": 4,
                "max_seq_len": 512,
            },
            "data": {
                "sources": {"pt": {"path": str(work / "tokens" / "pt"), "raw": [str(d / "pt.jsonl")]}},
                "seq_len": 256,
                "tokenizer": str(work / "tokenizer"),
                "max_epochs": 20,
                "train_tokenizer": {
                    "files": [str(d / "pt.jsonl"), str(d / "train.jsonl")],
                    "text_key": ["text", "question"],
                    "vocab_size": 1024,
                },
            },
            "train": {
                "max_steps": a.pretrain_steps,
                "global_batch_tokens": 2048,
                "micro_batch_size": 8,
                "lr": 3e-3,
                "min_lr": 3e-4,
                "warmup_steps": 20,
                "device": "cpu",
                "log_every": 25,
            },
            "checkpoint": {"every": 50, "keep_last": 1},
        },
    )
    prepare_run_data(cfg)  # the on-the-fly tokenizer and the pretraining shards
    Trainer(cfg, run, resume=True).fit()
    return find_checkpoint(run)


def sft0(work: Path, base: Path, a) -> Path:
    from skyloom.sft.config import build_sft_config
    from skyloom.sft.runner import run_sft
    from skyloom.train.trainer import find_checkpoint

    run = work / "sft0"
    if (run / "DONE").is_file():
        return find_checkpoint(run)
    cfg = build_sft_config(
        {
            "base": str(base),
            "export_hf": False,
            "data": {"sources": {"train": {"path": str(work / "data" / "train.jsonl")}}, "seq_len": 512},
            "train": {
                "max_steps": a.sft0_steps,
                "global_batch_tokens": 2048,
                "micro_batch_size": 4,
                "lr": 2e-3,
                "min_lr": 1e-4,
                "warmup_steps": 10,
                "weight_decay": 0.0,
                "device": "cpu",
                "log_every": 25,
            },
            "checkpoint": {"every": 50, "keep_last": 1},
        }
    )
    run_sft(cfg, run, resume=(run / "checkpoints").is_dir())
    (run / "DONE").write_text("ok")
    return find_checkpoint(run)


def arm(work: Path, name: str, start: Path, a) -> list[dict]:
    from skyloom.config import build
    from skyloom.sft.skymath import SkyMathConfig, run_skymath

    d = work / "data"
    cfg = build(
        SkyMathConfig,
        {
            "base": str(start),
            "train_data": str(d / "train.jsonl"),
            "rounds": 1,
            "sample": {"k": a.k, "temperature": 0.8, "max_new_tokens": 128, "seed": 0, "questions": a.sample_questions},
            "mix": dict(ARMS[name], own_per_question=2, compare_per_question=1),
            "eval": {
                "sets": {
                    "val": {"path": str(d / "val.jsonl"), "group_by": "steps"},
                    "test": {"path": str(d / "test.jsonl"), "group_by": "steps"},
                },
                "max_new_tokens": 128,
                "at_start": name == "sft",
            },
            "sft": {
                "data": {"seq_len": 512, "seed": 1},
                "train": {
                    "max_steps": a.arm_steps,
                    "global_batch_tokens": 2048,
                    "micro_batch_size": 4,
                    "lr": 1e-3,
                    "min_lr": 5e-5,
                    "warmup_steps": 5,
                    "weight_decay": 0.0,
                    "device": "cpu",
                    "log_every": 25,
                },
                "checkpoint": {"every": 50, "keep_last": 1},
            },
        },
    )
    return run_skymath(cfg, work / f"arm_{name}")


def per_group(work: Path, run: str, round_no: int, set_name: str) -> dict:
    """Accuracy by step count and by language, recomputed from the per-problem correctness in eval.json."""
    ev = json.loads((work / run / f"round_{round_no:02d}" / "eval.json").read_text())[set_name]
    probs = [json.loads(line) for line in (work / "data" / f"{set_name}.jsonl").read_text().splitlines()]
    groups: dict[str, list[bool]] = {}
    for p, ok in zip(probs, ev["correct"]):
        groups.setdefault(f"{p['steps']} step", []).append(ok)
        groups.setdefault(p["lang"], []).append(ok)
        groups.setdefault("all", []).append(ok)
    return {
        g: {"k": sum(v), "n": len(v), "acc": sum(v) / len(v), "ci95": wilson(sum(v), len(v))}
        for g, v in sorted(groups.items())
    }


def report(work: Path, a) -> None:
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    timing = work / "timing.json"
    results: dict = {
        "settings": vars(a),
        "models": {},
        "rounds": {},
        "timing": json.loads(timing.read_text(encoding="utf-8")) if timing.is_file() else None,
    }
    models = {"sft0 (start)": ("arm_sft", 0)} | {name: (f"arm_{name}", 1) for name in ARMS}
    for label, (run, r) in models.items():
        if (work / run / f"round_{r:02d}" / "eval.json").is_file():
            results["models"][label] = {s: per_group(work, run, r, s) for s in ("val", "test")}
    for name in ARMS:
        f = work / f"arm_{name}" / "rounds.jsonl"
        if f.is_file():
            results["rounds"][name] = [json.loads(line) for line in f.read_text().splitlines()]
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    lines = []
    for s in ("val", "test"):
        groups = ["1 step", "2 step", "3 step", "4 step", "en", "zh", "all"]
        lines += [
            f"\n**{s}** ({'training templates, new problems' if s == 'val' else 'held-out templates and starting numbers'})\n",
            "| model | " + " | ".join(groups) + " |",
            "|---|" + "---:|" * len(groups),
        ]
        for label, m in results["models"].items():
            cells = []
            for g in groups:
                x = m[s].get(g)
                cells.append(
                    "–" if x is None else f"{100 * x['acc']:.1f} [{100 * x['ci95'][0]:.0f}–{100 * x['ci95'][1]:.0f}]"
                )
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| arm | sampled | sample acc | accepted | reference / own / compare examples | SFT steps | answer tokens |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, rounds in results["rounds"].items():
        r = next((x for x in rounds if x["round"] == 1), None)
        if r:
            dstat = r["data"]
            ex = dstat["examples"]
            acc = "–" if dstat["sample_accuracy"] is None else f"{100 * dstat['sample_accuracy']:.1f}%"
            lines.append(
                f"| {name} | {dstat['samples']} | {acc} | {dstat['accepted']} | "
                f"{ex['reference']} / {ex['own'] if ARMS[name]['own'] else 0} / "
                f"{ex['compare'] if ARMS[name]['compare'] else 0} | {r['sft_steps']} | {r['sft_tokens']:,} |"
            )
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/skymath-exp")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=120)
    ap.add_argument("--test", type=int, default=120)
    ap.add_argument("--pretrain-problems", type=int, default=3000)
    ap.add_argument("--pretrain-steps", type=int, default=60)
    ap.add_argument("--sft0-steps", type=int, default=80)
    ap.add_argument("--arm-steps", type=int, default=40)
    ap.add_argument("--sample-questions", type=int, default=150)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arms", nargs="*", default=list(ARMS))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    a = ap.parse_args()
    if a.quick:
        a.train, a.val, a.test, a.pretrain_problems = 200, 40, 40, 400
        a.pretrain_steps, a.sft0_steps, a.arm_steps, a.sample_questions, a.k = 20, 10, 6, 30, 2
    import torch

    torch.set_num_threads(a.threads)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    make_data(work, a)
    with timed(work, "pretrain", finished(work / "pretrain")):
        base = pretrain(work, a)
    print(f"[{time.time() - t0:.0f}s] pretrained: {base}", flush=True)
    with timed(work, "sft0", (work / "sft0" / "DONE").is_file()):
        start = sft0(work, base, a)
    print(f"[{time.time() - t0:.0f}s] sft0: {start}", flush=True)
    for name in a.arms:
        rounds = work / f"arm_{name}" / "rounds.jsonl"
        with timed(work, f"arm {name}", rounds.is_file() and any(json.loads(x)["round"] >= 1 for x in rounds.open())):
            arm(work, name, start, a)
        print(f"[{time.time() - t0:.0f}s] arm {name} done", flush=True)
        report(work, a)
    report(work, a)
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
