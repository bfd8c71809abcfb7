"""Upcycling at CPU scale (Skywork-MoE §3, Figure 1): a dense checkpoint → MoE, against the alternatives.

1. dense: the `tiny` recipe's model (4 layers, dim 128, 2.9M parameters) trained for --dense-steps steps;
2. then --moe-steps more steps, three ways, same data continuation, same LR schedule:
   upcycled   the dense checkpoint upcycled to 8 experts, top-2 (gate normalisation, adaptive α, capacity 1.25);
   dense      the dense model trained on;
   scratch    the same MoE from random init, only the --moe-steps budget (C_MoE ≪ C_dense: §3.3 says upcycle).

Reports held-out losses and the upcycled experts' average pairwise cosine similarity (1.0 at the copy; the report's
Figure 1 right shows it falling as experts diversify). Writes experiments/moe/results/upcycle.json and .md.

    .venv/bin/python experiments/moe/upcycle_vs_scratch.py          # ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from skyloom.config import apply_overrides, build, read_yaml
from skyloom.model.checkpoint import load_model, save_model
from skyloom.model.upcycle import training_cost_flops, upcycle, upcycle_advice
from skyloom.train.config import RunConfig
from skyloom.train.prepare import prepare_run_data
from skyloom.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))
import _common as C  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CONTINUATIONS = ("upcycled", "dense-continued", "scratch")
MOE = {"n_experts": 8, "top_k": 2, "gate_norm": True, "adaptive": True, "capacity_factor": 1.25}
GATE_STD = 0.02
CONTINUATION_LR = (1.5e-3, 1.5e-4, 5)  # peak, final, warm-up steps


def common(steps: int, seed: int) -> list[str]:
    return [
        f"train.max_steps={steps}",
        "train.global_batch_tokens=2048",
        "train.micro_batch_size=8",
        f"train.seed={seed}",
        "train.log_every=10",
        "validation.every=0",
        "validation.at_start=true",
        "checkpoint.every=0",
        "checkpoint.save_final=true",
        "checkpoint.keep_last=1",
    ]


def finished(run_dir: Path, steps: int) -> bool:
    """True when run_dir holds a run that finished at `steps` (so a re-run of this script can reuse it)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return any(r.get("kind") == "event" and r.get("event") == "finished" and r.get("step") == steps for r in rows)


def train(recipe: str, overrides: list[str], run_dir: Path, steps: int, reuse: bool) -> None:
    if reuse and finished(run_dir, steps):
        print(f"{run_dir}: reusing the finished run")
        return
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cfg = build(RunConfig, apply_overrides(read_yaml(REPO / "recipes" / recipe), overrides))
    with C.TrainingSession(run_dir):  # the real training cost, kept in the run for later re-summaries
        prepare_run_data(cfg)  # the recipe's raw sources packed (once)
        status = Trainer(cfg, run_dir).fit()
    if status != "finished":
        raise SystemExit(f"{run_dir}: interrupted")


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if r["kind"] == "train"], [r for r in rows if r["kind"] == "val"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dense-steps", type=int, default=200)
    parser.add_argument("--moe-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "runs" / "moe-upcycle"))
    parser.add_argument(
        "--results-name",
        default="upcycle",
        help="stem of the results files under experiments/moe/results (e.g. upcycle_budget2 for another budget)",
    )
    parser.add_argument("--fresh", action="store_true", help="retrain runs that already finished under --out")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=list(CONTINUATIONS),
        choices=list(CONTINUATIONS),
        help="continuations to train now (copies of the script may train different ones side by "
        "side; the summary is written once all three have finished)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.time()
    reuse = not args.fresh
    train("tiny.yaml", common(args.dense_steps, args.seed), out / "dense", args.dense_steps, reuse)
    dense_ckpt = sorted((out / "dense" / "checkpoints").glob("step_*"))[-1]
    moe_init = out / "moe-init"
    if (
        args.fresh
        or not (moe_init / "model.safetensors").is_file()
        or (moe_init / "model.safetensors").stat().st_mtime < (dense_ckpt / "model.safetensors").stat().st_mtime
    ):
        tmp = out / f"moe-init.tmp{os.getpid()}"
        save_model(upcycle(load_model(dense_ckpt), MOE, gate_std=GATE_STD, seed=args.seed), tmp)
        for f in dense_ckpt.glob("tokenizer*"):
            shutil.copy(f, tmp / f.name)
        if moe_init.exists():
            shutil.rmtree(moe_init)
        tmp.rename(moe_init)

    # the continuation: same data order (the data seed moves on), LR 1.5e-3 → 1.5e-4
    peak_lr, final_lr, warmup = CONTINUATION_LR
    cont = common(args.moe_steps, args.seed) + [
        f"train.lr={peak_lr}",
        f"train.min_lr={final_lr}",
        f"train.warmup_steps={warmup}",
        f"data.seed={args.seed + 1}",
    ]
    moe_overrides = [f"model.moe.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in MOE.items()]
    recipes = {
        "upcycled": ("tiny-moe.yaml", moe_overrides + [f"train.init_from={moe_init}"]),
        "dense-continued": ("tiny.yaml", [f"train.init_from={dense_ckpt}"]),
        "scratch": ("tiny-moe.yaml", moe_overrides),
    }
    for name in args.runs:
        recipe, extra = recipes[name]
        train(recipe, cont + extra, out / name, args.moe_steps, reuse)
    missing = [name for name in CONTINUATIONS if not finished(out / name, args.moe_steps)]
    if missing:
        print(f"not summarising yet: {', '.join(missing)} not finished under {out}")
        return

    results = {}
    for name in ("upcycled", "dense-continued", "scratch"):
        tr, val = metrics(out / name)
        start = {r["set"]: r["loss"] for r in val if r["step"] == 0}
        end = {r["set"]: r["loss"] for r in val if r["step"] == args.moe_steps}
        sims = [(r["step"], r["moe/L1/expert_similarity"]) for r in tr if "moe/L1/expert_similarity" in r]
        moe = "moe/drop_rate" in tr[-1]
        results[name] = {
            "val_start": start,
            "val_end": end,
            "train_loss_last10": sum(r["loss"] for r in tr[-10:]) / 10,
            "expert_similarity_L1": sims,
            "drop_rate_last10": (sum(r["moe/drop_rate"] for r in tr[-10:]) / 10) if moe else None,
            "aux_coef_end": tr[-1]["moe/aux_coef"] if moe else None,  # mean α over layers
            # drop rate and mean α at step 1 and every 10th step: what the README's prose quotes
            "at_steps": {
                str(r["step"]): {"drop_rate": r["moe/drop_rate"], "aux_coef": r["moe/aux_coef"]}
                for r in tr
                if moe and (r["step"] == 1 or r["step"] % 10 == 0)
            },
            "training": C.training_cost(out / name),
            "config": C.resolved_config(out / name),
        }
    _, dense_val = metrics(out / "dense")
    results["dense@end-of-pretraining"] = {
        "val_end": {r["set"]: r["loss"] for r in dense_val if r["step"] == args.dense_steps},
        "training": C.training_cost(out / "dense"),
        "config": C.resolved_config(out / "dense"),
    }
    up, dense, scratch = (results[n]["val_end"] for n in CONTINUATIONS)
    results["gaps"] = {
        "dense_continued_minus_upcycled": {k: dense[k] - up[k] for k in up},
        "scratch_minus_upcycled": {k: scratch[k] - up[k] for k in up},
    }
    dense_model = load_model(dense_ckpt)
    moe_model = load_model(moe_init)
    tokens = 2048
    dense_cost = training_cost_flops(dense_model.config, args.dense_steps * tokens, 256)
    moe_cost = training_cost_flops(moe_model.config, args.moe_steps * tokens, 256)
    results["advice"] = str(upcycle_advice(dense_cost, moe_cost))
    results["cost_flops"] = {"dense": dense_cost, "moe": moe_cost, "moe_over_dense": moe_cost / dense_cost}
    params = {
        "dense": sum(p.numel() for p in dense_model.parameters()),
        "moe": sum(p.numel() for p in moe_model.parameters()),
    }
    results["params"] = {**params, "moe_over_dense": params["moe"] / params["dense"]}
    results["settings"] = {
        "dense_steps": args.dense_steps,
        "moe_steps": args.moe_steps,
        "seed": args.seed,
        "batch_tokens": tokens,
        "moe": MOE,
        "gate_std": GATE_STD,
        "continuation_lr": dict(zip(("peak", "final", "warmup_steps"), CONTINUATION_LR)),
    }
    results["invocation_wall_s"] = round(time.time() - t0, 1)  # this call only (finished runs are reused)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.results_name}.json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [
        "| run | val en (start → end) | val zh (start → end) | train loss (last 10) | drop rate (last 10) | "
        "α (mean, end) | expert similarity L1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("upcycled", "dense-continued", "scratch"):
        r = results[name]
        cells = [f"{r['val_start'].get(k, float('nan')):.3f} → {r['val_end'][k]:.3f}" for k in r["val_end"]]
        sims = r["expert_similarity_L1"]
        sim = f"{sims[0][1]:.3f} (step {sims[0][0]}) → {sims[-1][1]:.3f} (step {sims[-1][0]})" if sims else "—"
        moe = (
            [f"{r['drop_rate_last10']:.3f}", f"{r['aux_coef_end']:.4f}"] if r["aux_coef_end"] is not None else ["—"] * 2
        )
        lines.append(f"| {name} | {' | '.join(cells)} | {r['train_loss_last10']:.3f} | {' | '.join(moe)} | {sim} |")
    ratio = results["cost_flops"]["moe_over_dense"]
    lines += ["", f"C_MoE / C_dense = {ratio:.3g}; §3.3 rule (upcycle_advice): {results['advice']}"]
    (RESULTS / f"{args.results_name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(results["advice"])


if __name__ == "__main__":
    main()
