"""SkyMath at CPU scale: plain SFT vs rejection-sampling (RFT) vs self-compare fine-tuning, equal training tokens.

1. data     problems.py: 4,000 training problems (1–3 steps, English + Chinese, annotated solutions; + and × in
            either order), new problems from the training templates (`val`, in-distribution), problems with
            held-out opening/question forms and starting numbers (`test`), the same with held-out connectives,
            names and items too (`test-all`); further training-template problems as pretraining text.
2. pretrain a small Llama-style model (BPE trained here, every digit its own token) on the pretraining text
            with `skyloom train`'s engine (2,048 tokens per step everywhere).
3. sft0     `skyloom sft` on the training references (Skywork chat template) — the common starting point,
            evaluated once (greedy) on val, test and test-all, and on one-factor test sets (diagnosis).
4. arms     for each seed, one `skyloom skymath` round per arm from sft0, the same number of optimizer steps ×
            tokens per step; the seed sets the sampling seed and the SFT data order:
              sft      mix reference=1, own=0, compare=0   (more plain SFT; no sampling)
              rft      mix reference=1, own=1, compare=0   (+ own correct, distinct solutions)
              compare  mix reference=1, own=1, compare=1   (+ self-compare examples)
5. report   greedy zero-shot accuracy per step count and language on val, test and test-all with Wilson 95%
            intervals, pooled over seeds, and each arm's difference from sft paired over problems and seeds with a
            bootstrap 95% interval → results/results.json and results/results.md.

    .venv/bin/python experiments/skymath/run.py                 # ~15 min on one CPU thread
    .venv/bin/python experiments/skymath/run.py --quick         # a smoke run (a few minutes)
    .venv/bin/python experiments/skymath/run.py --pilot         # stop after sft0's evaluation
Stages are cached in --work (default runs/skymath-exp); re-running continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from problems import FACTORS, filler, generate, write  # noqa: E402

SETS = ("val", "test", "test-all")  # evaluated for sft0 and every arm
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
    steps = a.max_problem_steps
    train = generate(a.train, "train", 1, steps)
    seen = {p["question"] for p in train}
    val = [p for p in generate(a.val * 2, "train", 2, steps) if p["question"] not in seen][: a.val]
    pt = [p for p in generate(a.pretrain_problems, "train", 3, steps) if p["question"] not in seen]
    d = work / "data"
    write(d / "train.jsonl", train)
    write(d / "val.jsonl", val)
    write(d / "test.jsonl", generate(a.test, "test", 4, steps))
    write(d / "test-all.jsonl", generate(a.test, "test-all", 4, steps))
    text = [p["question"] + "\n" + p["answer"] for p in pt] + filler(a.filler, 5)
    random.Random(6).shuffle(text)
    write(d / "pt.jsonl", [{"text": t} for t in text])
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
                "n_heads": a.heads,
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
                "lr": a.pretrain_lr,
                "min_lr": a.pretrain_lr / 10,
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
                "lr": a.sft_lr,
                "min_lr": a.sft_lr / 20,
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


def eval_set(path: Path) -> dict:
    return {"path": str(path), "group_by": "steps"}


def eval_sets(work: Path) -> dict:
    """val, test and test-all: what sft0 and every arm are evaluated on."""
    return {s: eval_set(work / "data" / f"{s}.jsonl") for s in SETS}


def make_factor_sets(work: Path, a) -> None:
    """test-FACTOR for each of FACTORS: `--val` problems each holding out that factor only."""
    for i, f in enumerate(FACTORS):
        path = work / "data" / f"test-{f}.jsonl"
        if not path.is_file():
            write(path, generate(a.val, f"test-{f}", 7 + i, a.max_problem_steps))


def factor_sets(work: Path) -> dict:
    return {f"test-{f}": eval_set(work / "data" / f"test-{f}.jsonl") for f in FACTORS}


def eval_start(work: Path, start: Path, sets: dict, name: str) -> dict:
    """Greedy accuracy of sft0 (the common starting point) on `sets` → WORK/sft0/NAME (cached)."""
    from skyloom.config import build
    from skyloom.sft.skymath import SkyMathConfig, evaluate_round

    out = work / "sft0" / name
    if out.is_file():
        return json.loads(out.read_text())
    cfg = build(
        SkyMathConfig,
        {
            "base": str(start),
            "train_data": str(work / "data" / "train.jsonl"),
            "sft": {},
            "eval": {"sets": sets, "max_new_tokens": 128},
        },
    )
    ev = evaluate_round(start, cfg, "skywork")
    out.write_text(json.dumps(ev) + "\n")
    return ev


def arm_dir(work: Path, name: str, seed: int) -> Path:
    return work / f"arm_{name}_s{seed}"


def arm(work: Path, name: str, seed: int, start: Path, a) -> list[dict]:
    """One `skyloom skymath` round from sft0; `seed` sets the sampling seed and the SFT data order."""
    from skyloom.config import build
    from skyloom.sft.skymath import SkyMathConfig, run_skymath

    cfg = build(
        SkyMathConfig,
        {
            "base": str(start),
            "train_data": str(work / "data" / "train.jsonl"),
            "rounds": 1,
            "sample": {
                "k": a.k,
                "temperature": 0.8,
                "max_new_tokens": 128,
                "seed": seed,
                "questions": a.sample_questions,
            },
            "mix": dict(ARMS[name], own_per_question=2, compare_per_question=1),
            "eval": {"sets": eval_sets(work), "max_new_tokens": 128, "at_start": False},
            "sft": {
                "data": {"seq_len": 512, "seed": seed},
                "train": {
                    "max_steps": a.arm_steps,
                    "global_batch_tokens": 2048,
                    "micro_batch_size": 4,
                    "lr": a.arm_lr,
                    "min_lr": a.arm_lr / 20,
                    "warmup_steps": 5,
                    "weight_decay": 0.0,
                    "device": "cpu",
                    "log_every": 25,
                },
                "checkpoint": {"every": 1000, "keep_last": 1},
            },
        },
    )
    return run_skymath(cfg, arm_dir(work, name, seed))


def problems(work: Path, set_name: str) -> list[dict]:
    return [json.loads(line) for line in (work / "data" / f"{set_name}.jsonl").read_text().splitlines()]


def per_group(probs: list[dict], correct: list[bool]) -> dict:
    """Accuracy by step count, by language and overall, from per-problem correctness."""
    groups: dict[str, list[bool]] = {}
    for p, ok in zip(probs, correct, strict=True):
        groups.setdefault(f"{p['steps']} step", []).append(ok)
        groups.setdefault(p["lang"], []).append(ok)
        groups.setdefault("all", []).append(ok)
    return {
        g: {"k": sum(v), "n": len(v), "acc": sum(v) / len(v), "ci95": wilson(sum(v), len(v))} for g, v in groups.items()
    }


def paired_bootstrap(arm: list[list[bool]], base: list[list[bool]], draws: int = 4000, seed: int = 0) -> dict:
    """Accuracy difference arm − base (each a list over seeds of per-problem correctness on the same problems),
    averaged over seeds, with a 95% percentile interval from resampling the problems (paired: the same draw for
    both arms and every seed)."""
    import random

    n = len(base[0])
    per_problem = [sum(a[i] - b[i] for a, b in zip(arm, base, strict=True)) / len(base) for i in range(n)]
    rng = random.Random(seed)
    means = sorted(sum(per_problem[rng.randrange(n)] for _ in range(n)) / n for _ in range(draws))
    return {
        "diff": sum(per_problem) / n,
        "ci95": (means[int(0.025 * draws)], means[int(0.975 * draws) - 1]),
        "problems": n,
        "seeds": len(base),
    }


def report(work: Path, a) -> dict:
    """results/results.json (every number) and results/results.md (the tables the README quotes); a --quick
    smoke run writes them under WORK/results instead, leaving the committed results alone (and --results elsewhere)."""
    out_dir = work / "results" if a.quick else Path(a.results)
    out_dir.mkdir(exist_ok=True)
    timing = work / "timing.json"
    probs = {s: problems(work, s) for s in SETS}
    results: dict = {
        "settings": vars(a),
        "sft0": {},
        "arms": {},
        "summary": {},
        "timing": json.loads(timing.read_text(encoding="utf-8")) if timing.is_file() else None,
    }
    ev0 = work / "sft0" / "eval.json"
    if ev0.is_file():
        ev = json.loads(ev0.read_text())
        results["sft0"] = {s: per_group(probs[s], ev[s]["correct"]) for s in SETS}
    evf = work / "sft0" / "eval_factors.json"
    if evf.is_file():
        ev = json.loads(evf.read_text())
        results["sft0_factors"] = {s: per_group(problems(work, s), ev[s]["correct"]) for s in ev}
    correct: dict[str, dict[str, list[list[bool]]]] = {}
    for name in a.arms:
        for seed in a.seeds:
            d = arm_dir(work, name, seed)
            f = d / "round_01" / "eval.json"
            if not f.is_file():
                continue
            ev = json.loads(f.read_text())
            rounds = [json.loads(line) for line in (d / "rounds.jsonl").read_text().splitlines()]
            results["arms"].setdefault(name, {})[str(seed)] = {
                **{s: per_group(probs[s], ev[s]["correct"]) for s in SETS},
                "round": next(r for r in rounds if r["round"] == 1),
            }
            for s in SETS:
                correct.setdefault(name, {}).setdefault(s, []).append(ev[s]["correct"])
    complete = [n for n in a.arms if n in correct and len(correct[n]["test"]) == len(a.seeds)]
    for name in complete:
        results["summary"][name] = {}
        for s in SETS:
            runs = correct[name][s]
            k, n = sum(map(sum, runs)), sum(map(len, runs))
            row = {
                "k": k,
                "n": n,
                "acc": k / n,
                "ci95": wilson(k, n),
                "per_seed": [sum(r) / len(r) for r in runs],
            }
            if name != "sft" and "sft" in complete:
                row["vs_sft"] = paired_bootstrap(runs, correct["sft"][s])
            results["summary"][name][s] = row
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    md = markdown(results, a)
    (out_dir / "results.md").write_text(md)
    print(md)
    return results


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def markdown(results: dict, a) -> str:
    lines = []
    if results["summary"]:
        lines += [
            f"\n**Arms** (pooled over seeds {', '.join(map(str, a.seeds))}; Wilson 95% interval; "
            "difference vs sft paired over problems and seeds, 95% bootstrap interval)\n",
            "| arm | " + " | ".join(f"{s} acc | {s} per seed | {s} − sft" for s in SETS) + " |",
            "|---|" + "---:|---|---:|" * len(SETS),
        ]
        for name, row in results["summary"].items():
            cells = []
            for s in SETS:
                x = row[s]
                cells.append(f"{pct(x['acc'])} [{pct(x['ci95'][0])}–{pct(x['ci95'][1])}]")
                cells.append(" / ".join(pct(v) for v in x["per_seed"]))
                d = x.get("vs_sft")
                cells.append(
                    "–"
                    if d is None
                    else f"{100 * d['diff']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    groups = [f"{i} step" for i in range(1, a.max_problem_steps + 1)] + ["en", "zh", "all"]
    if results.get("sft0_factors"):
        lines += [
            "\n**sft0 on test sets that hold out one factor** (the others as in training)\n",
            "| set | " + " | ".join(groups) + " |",
            "|---|" + "---:|" * len(groups),
        ]
        for label, m in results["sft0_factors"].items():
            cells = [f"{pct(m[g]['acc'])} [{100 * m[g]['ci95'][0]:.0f}–{100 * m[g]['ci95'][1]:.0f}]" for g in groups]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    models = {"sft0 (start)": results["sft0"]} if results["sft0"] else {}
    for name, seeds in results["arms"].items():
        for seed, m in seeds.items():
            models[f"{name} s{seed}"] = m
    what = {
        "val": "training templates, new problems",
        "test": "held-out opening/question forms and starting numbers; training connectives, names and items",
        "test-all": "held-out opening/question forms, connectives, names, items and starting numbers",
    }
    for s in SETS:
        lines += [
            f"\n**{s}** ({what[s]})\n",
            "| model | " + " | ".join(groups) + " |",
            "|---|" + "---:|" * len(groups),
        ]
        for label, m in models.items():
            cells = []
            for g in groups:
                x = m[s].get(g)
                cells.append(
                    "–" if x is None else f"{pct(x['acc'])} [{100 * x['ci95'][0]:.0f}–{100 * x['ci95'][1]:.0f}]"
                )
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| arm | seed | sampled | sample acc | accepted | reference / own / compare examples | SFT steps "
        "| answer tokens |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, seeds in results["arms"].items():
        for seed, m in seeds.items():
            r = m["round"]
            dstat = r["data"]
            ex = dstat["examples"]
            acc = "–" if dstat["sample_accuracy"] is None else f"{pct(dstat['sample_accuracy'])}%"
            lines.append(
                f"| {name} | {seed} | {dstat['samples']} | {acc} | {dstat['accepted']} | "
                f"{ex['reference']} / {ex['own'] if ARMS[name]['own'] else 0} / "
                f"{ex['compare'] if ARMS[name]['compare'] else 0} | {r['sft_steps']} | {r['sft_tokens']:,} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/skymath-exp")
    ap.add_argument("--results", default=str(HERE / "results"), help="where results.json / results.md go")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--val", type=int, default=120)
    ap.add_argument("--test", type=int, default=300)
    ap.add_argument("--pretrain-problems", type=int, default=10000)
    ap.add_argument("--filler", type=int, default=2000, help="general sentences in the pretraining text")
    ap.add_argument("--pretrain-steps", type=int, default=1400)
    ap.add_argument("--sft0-steps", type=int, default=1000)
    ap.add_argument("--arm-steps", type=int, default=60)
    ap.add_argument("--sample-questions", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-problem-steps", type=int, default=3)
    ap.add_argument("--pretrain-lr", type=float, default=3e-3)
    ap.add_argument("--sft-lr", type=float, default=2e-3)
    ap.add_argument("--pilot", action="store_true", help="stop after evaluating sft0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--arms", nargs="*", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--arm-lr", type=float, default=1e-3)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    a = ap.parse_args()
    if a.quick:
        a.train, a.val, a.test, a.pretrain_problems = 200, 40, 40, 400
        a.pretrain_steps, a.sft0_steps, a.arm_steps, a.sample_questions, a.k = 20, 10, 6, 30, 2
        a.seeds = a.seeds[:2]
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
    with timed(work, "eval sft0", (work / "sft0" / "eval.json").is_file()):
        ev = eval_start(work, start, eval_sets(work), "eval.json")
    print(f"[{time.time() - t0:.0f}s] sft0 accuracy: " + ", ".join(f"{k} {v['acc']:.3f}" for k, v in ev.items()))
    make_factor_sets(work, a)
    with timed(work, "eval sft0 factors", (work / "sft0" / "eval_factors.json").is_file()):
        ev = eval_start(work, start, factor_sets(work), "eval_factors.json")
    print(
        f"[{time.time() - t0:.0f}s] sft0 one-factor test sets: "
        + ", ".join(f"{k} {v['acc']:.3f}" for k, v in ev.items())
    )
    if a.pilot:
        return
    for seed in a.seeds:
        for name in a.arms:
            done = (arm_dir(work, name, seed) / "round_01" / "eval.json").is_file()
            with timed(work, f"arm {name} s{seed}", done):
                arm(work, name, seed, start, a)
            print(f"[{time.time() - t0:.0f}s] arm {name} seed {seed} done", flush=True)
            report(work, a)
    report(work, a)
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
