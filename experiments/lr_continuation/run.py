"""Continuing a finished cosine run: which learning rate? (Skywork-13B report §3.6.1, Figure 4) at CPU scale.

The report trained 0 → 2T tokens with cosine 6e-4 → 6e-5, then continued 2 → 3T from that checkpoint; it tuned the
continuation's learning rate (Figure 4) and found that "a higher learning rate leads to escalations in training loss
which we deem too costly to reverse", choosing a constant 6e-5 — the terminal rate of the first session. Here: one
`tiny` model (2,901,120 parameters) trained with cosine LR → LR/10 (session A), then, from its last checkpoint
(weights + AdamW state, each source continuing where A stopped), the same number of steps on the same data for each
continuation arm — only the learning rate differs:

  constant   constant LR/10 (A's terminal rate: the report's choice)
  rewarm     warm up again to LR over 10 steps, cosine back down to LR/10 (a fresh cycle)
  higher     warm up to LR/3 over 10 steps and hold it (a "higher learning rate" of Figure 4)
  decay      cosine from LR/10 down to LR/100 (keep annealing)

The mixture is held constant (en 0.5, zh 0.3, stem 0.2) in both sessions so the continuation sees no data shift.
Writes RESULTS/results.json (validation curves per arm); runs live under --out and resume when re-run.

    .venv/bin/python experiments/lr_continuation/run.py --threads 1      # 200 + 4 × 100 steps × 2,048 tokens
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

HERE = Path(__file__).resolve().parent
ARMS = ("constant", "rewarm", "higher", "decay")
TAIL = 10  # final training loss = mean over this many last steps
WEIGHTS = {"en": 0.5, "zh": 0.3, "stem": 0.2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps-a", type=int, default=200, help="session A steps (cosine LR → LR/10; default 200)")
    p.add_argument("--steps-b", type=int, default=100, help="steps of every continuation arm (default 100)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="tokens per optimizer step (default 2048)")
    p.add_argument("--lr", type=float, default=3e-3, help="session A's peak LR (default 3e-3, as tiny.yaml)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="continuation arms to run")
    p.add_argument("--val-every", type=int, default=10, help="validation interval in steps (default 10)")
    p.add_argument("--seed", type=int, default=0)
    C.add_common_options(
        p, "runs/experiments/lr_continuation", "where the runs go (resumable)", HERE / "results", "results folder"
    )
    return p.parse_args(argv)


def base(args: argparse.Namespace, steps: int) -> dict:
    cfg = C.base_config(args.data_dir)
    for name, w in WEIGHTS.items():
        cfg["data"]["sources"][name]["weight"] = w
    for key, value in {
        "train.max_steps": steps,
        "train.global_batch_tokens": args.batch_tokens,
        "train.seed": args.seed,
        "train.log_every": 25,
        "validation.every": args.val_every,
        "checkpoint.every": steps,
        "checkpoint.keep_last": 1,
    }.items():
        C.set_key(cfg, key, value)
    return cfg


def arm_schedule(arm: str, lr: float) -> dict:
    terminal = lr / 10
    return {
        "constant": {"schedule": "constant", "lr": terminal, "min_lr": terminal, "warmup_steps": 0},
        "rewarm": {"schedule": "cosine", "lr": lr, "min_lr": terminal, "warmup_steps": 10},
        "higher": {"schedule": "constant", "lr": lr / 3, "min_lr": lr / 3, "warmup_steps": 10},
        "decay": {"schedule": "cosine", "lr": terminal, "min_lr": terminal / 10, "warmup_steps": 0},
    }[arm]


def summary(run_dir: Path, start: dict[str, float]) -> dict:
    train, val = C.metrics(run_dir)
    curve = C.val_curve(run_dir)
    sets = sorted(start)
    final = C.val_at(run_dir)
    return {
        "tokens": train[-1]["tokens"],
        "train_loss_first10": sum(r["loss"] for r in train[:TAIL]) / len(train[:TAIL]),
        "train_loss_last10": sum(r["loss"] for r in train[-TAIL:]) / len(train[-TAIL:]),
        "val_start": start,
        "val_final": final,
        "val_final_minus_start": {s: final[s] - start[s] for s in sets},
        "val_max_rise": {s: max(v[s] for v in curve.values()) - start[s] for s in sets},
        "lr_first_last": [train[0]["lr"], train[-1]["lr"]],
        "val_curve": curve,
        "training": C.training_cost(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.start(args, "wikitext2", "fewclue_zh", "skywork")
    t0 = time.time()
    out = Path(args.out)
    cfg_a = base(args, args.steps_a)
    for key, value in {"train.lr": args.lr, "train.min_lr": args.lr / 10, "train.schedule": "cosine"}.items():
        C.set_key(cfg_a, key, value)
    run_a = C.train(cfg_a, out / "session_a", "A")
    start = C.val_at(run_a)
    runs = {}
    for arm in args.arms:
        cfg = base(args, args.steps_b)
        for key, value in arm_schedule(arm, args.lr).items():
            C.set_key(cfg, f"train.{key}", value)
        C.set_key(cfg, "train.init_from", str(run_a))
        C.set_key(cfg, "train.init_optimizer", True)
        C.set_key(cfg, "data.init_loader_from_checkpoint", True)
        runs[arm] = C.train(cfg, out / arm, arm)
    results = {
        "settings": {k: v for k, v in vars(args).items() if k != "results"},
        "weights": WEIGHTS,
        "schedules": {arm: arm_schedule(arm, args.lr) for arm in args.arms},
        "session_a": {
            "train_loss_last10": sum(r["loss"] for r in C.metrics(run_a)[0][-TAIL:]) / TAIL,
            "val_final": start,
            "val_curve": C.val_curve(run_a),
            "training": C.training_cost(run_a),
        },
        "arms": {arm: summary(d, start) for arm, d in runs.items()},
        "invocation_wall_s": round(time.time() - t0, 1),
    }
    C.save_json(Path(args.results) / "results.json", results)
    for arm, r in results["arms"].items():
        print(
            f"{arm:9s} val final {r['val_final']}  Δ vs start {r['val_final_minus_start']}  max rise {r['val_max_rise']}"
        )
    print(f"wrote {Path(args.results) / 'results.json'} in {results['invocation_wall_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
