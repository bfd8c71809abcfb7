"""GPT vs LLaMA architecture at CPU scale (Skywork-13B report, Figure 2 / Appendix A, Table 9).

The report trains a 7B GPT-architecture model and a 7B LLaMA-architecture model on the same 200B tokens with the same
training parameters and finds the LLaMA one reaches a lower training loss. Here: the `tiny` (LLaMA: RoPE, RMSNorm,
SwiGLU, no biases; 2,901,120 parameters) and `tiny-gpt` (learned positions, LayerNorm, GELU MLP at 4·dim, biases;
2,923,264 parameters) presets, trained on the same `recipes/tiny.yaml` data mixture (WikiText-2, ChID passages,
GSM8K) in the same order, the same token budget, learning-rate schedule and seed(s). Everything but the architecture
is shared.

Writes RESULTS/{results.json,results.md,loss_curves.png}; runs live under --out and resume when re-run.

    .venv/bin/python experiments/arch_gpt_vs_llama/run.py              # 2 × 200 steps × 2,048 tokens
    .venv/bin/python experiments/arch_gpt_vs_llama/run.py --seeds 0 1
                                                           # two seeds per architecture
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

HERE = Path(__file__).resolve().parent
ARCHS = {"llama": "tiny", "gpt": "tiny-gpt"}
COLORS = {"llama": "tab:blue", "gpt": "tab:red"}
TAIL = 20  # the final training loss is the mean over this many last steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per run (default 200)")
    p.add_argument(
        "--batch-tokens", type=int, default=2048, help="tokens per optimizer step (default 2048 = 8 windows of 256)"
    )
    p.add_argument("--lr", type=float, default=3e-3, help="peak LR, cosine to LR/10 (default 3e-3, as tiny.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="init seeds; each arch is trained per seed")
    p.add_argument(
        "--archs",
        nargs="+",
        choices=list(ARCHS),
        default=list(ARCHS),
        help="architectures to train (default both; e.g. one per process to run them side by side)",
    )
    p.add_argument("--val-every", type=int, default=25, help="validation interval in steps (default 25)")
    C.add_common_options(
        p,
        "runs/experiments/arch",
        "where the runs go (resumable)",
        HERE / "results",
        "where results.{json,md} and the PNG go",
    )
    return p.parse_args(argv)


def run_config(args: argparse.Namespace, arch: str, seed: int) -> dict:
    cfg = C.base_config(args.data_dir)
    cfg["model"] = {"preset": ARCHS[arch]}
    for key, value in {
        "train.max_steps": args.steps,
        "train.global_batch_tokens": args.batch_tokens,
        "train.lr": args.lr,
        "train.min_lr": args.lr / 10,
        "train.seed": seed,
        "train.log_every": 25,
        "validation.every": args.val_every,
        "checkpoint.every": 100,
        "checkpoint.keep_last": 1,
    }.items():
        C.set_key(cfg, key, value)
    return cfg


def smooth(values: list[float], k: int = 10) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot(runs: dict[str, dict[int, Path]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for arch, by_seed in runs.items():
        for i, (seed, run_dir) in enumerate(sorted(by_seed.items())):
            train, val = C.metrics(run_dir)
            tokens = [r["tokens"] / 1e6 for r in train]
            label = f"{arch} (seed {seed})" if i or len(by_seed) > 1 else arch
            axes[0].plot(tokens, [r["loss"] for r in train], color=COLORS[arch], alpha=0.15, lw=0.8)
            axes[0].plot(
                tokens,
                smooth([r["loss"] for r in train]),
                color=COLORS[arch],
                lw=1.6,
                ls="-" if i == 0 else "--",
                label=f"{label} (10-step mean)",
            )
            sets = sets or sorted({r["set"] for r in val})
            for ax, name in zip(axes[1:], sets):
                rows = [r for r in val if r["set"] == name]
                ax.plot(
                    [r["tokens"] / 1e6 for r in rows],
                    [r["loss"] for r in rows],
                    marker="o",
                    ms=3,
                    color=COLORS[arch],
                    ls="-" if i == 0 else "--",
                    label=label,
                )
    axes[0].set_title("training loss")
    for ax, name in zip(axes[1:], sets or []):
        ax.set_title(f"validation loss: {name}")
    for ax in axes:
        ax.set_xlabel("tokens (millions)")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lo = min(min(r["loss"] for r in C.metrics(d)[0]) for s in runs.values() for d in s.values())
    axes[0].set_ylim(lo - 0.2, lo + 3.0)
    fig.suptitle("GPT vs LLaMA architecture, same data, budget and schedule (cf. Skywork-13B Figure 2)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def summarise(args: argparse.Namespace, runs: dict[str, dict[int, Path]], invocation_wall: float) -> dict:
    from skyloom.config import build
    from skyloom.model.accounting import count_params
    from skyloom.model.config import ModelConfig

    results: dict = {
        "settings": {k: v for k, v in vars(args).items()},
        "train_loss_tail_steps": TAIL,
        "runs": {},
        "invocation_wall_s": round(invocation_wall, 1),
    }  # this call only: finished runs are reused
    for arch, by_seed in runs.items():
        params = count_params(build(ModelConfig, {"preset": ARCHS[arch]})).total
        for seed, run_dir in by_seed.items():
            train, val = C.metrics(run_dir)
            last = max(r["step"] for r in val)
            results["runs"][f"{arch}/seed{seed}"] = {
                "arch": arch,
                "preset": ARCHS[arch],
                "seed": seed,
                "params": params,
                "tokens": train[-1]["tokens"],
                "train_loss_last20": sum(r["loss"] for r in train[-TAIL:]) / len(train[-TAIL:]),
                "val_final": {r["set"]: r["loss"] for r in val if r["step"] == last},
                "cpu_tokens_per_sec_median": sorted(r["tokens_per_sec"] for r in train)[len(train) // 2],
                "val_curve": C.val_curve(run_dir),
                "training": C.training_cost(run_dir),  # the real training's wall time and load average
                "config": C.resolved_config(run_dir),
            }
    runs_ = results["runs"]
    if {r["arch"] for r in runs_.values()} == {"llama", "gpt"}:
        sets = sorted(next(iter(runs_.values()))["val_final"])
        metrics = {
            "train loss": lambda r: r["train_loss_last20"],
            **{f"val {s}": (lambda r, s=s: r["val_final"][s]) for s in sets},
        }
        seeds = sorted(
            {r["seed"] for r in runs_.values() if r["arch"] == "gpt"}
            & {r["seed"] for r in runs_.values() if r["arch"] == "llama"}
        )
        results["gpt_minus_llama"] = {
            name: {
                "mean": sum(key(runs_[f"gpt/seed{s}"]) - key(runs_[f"llama/seed{s}"]) for s in seeds) / len(seeds),
                **{f"seed{s}": key(runs_[f"gpt/seed{s}"]) - key(runs_[f"llama/seed{s}"]) for s in seeds},
            }
            for name, key in metrics.items()
        }
    return results


def markdown(results: dict) -> str:
    runs = results["runs"]
    sets = sorted(next(iter(runs.values()))["val_final"])
    head = (
        f"| run | params | tokens | train loss (mean of last {results['train_loss_tail_steps']} steps) | "
        + " | ".join(f"val {s}" for s in sets)
        + " | tokens/s |"
    )
    lines = [head, "|" + "---|" * (5 + len(sets))]
    for name, r in runs.items():
        lines.append(
            f"| {name} | {r['params']:,} | {r['tokens']:,} | {r['train_loss_last20']:.3f} | "
            + " | ".join(f"{r['val_final'][s]:.3f}" for s in sets)
            + f" | {r['cpu_tokens_per_sec_median']:,.0f} |"
        )
    if "gpt_minus_llama" in results:
        gaps = results["gpt_minus_llama"]
        seeds = [k for k in next(iter(gaps.values())) if k != "mean"]
        lines += [
            "",
            "| metric | GPT − LLaMA (mean over seeds) | " + " | ".join(seeds) + " |",
            "|---|---|" + "---|" * len(seeds),
        ]
        lines += [
            f"| {name} | {g['mean']:+.3f} | " + " | ".join(f"{g[s]:+.3f}" for s in seeds) + " |"
            for name, g in gaps.items()
        ]
        if "llama/seed0" in runs and "gpt/seed0" in runs:
            llama, gpt = runs["llama/seed0"]["val_curve"], runs["gpt/seed0"]["val_curve"]
            lines += [
                "",
                "| step (tokens) | " + " | ".join(f"LLaMA {s} | GPT {s}" for s in sets) + " |",
                "|---|" + "---|" * (2 * len(sets)),
            ]
            for step in sorted(int(k) for k in llama if k in gpt and int(k) > 0):
                cells = " | ".join(f"{llama[str(step)][s]:.3f} | {gpt[str(step)][s]:.3f}" for s in sets)
                lines.append(f"| {step} ({llama[str(step)]['tokens']:,}) | {cells} |")
    lines += ["", C.cost_table({name: r["training"] for name, r in runs.items()})]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.start(args, "wikitext2/valid.txt", "gsm8k/train.jsonl", "skywork/zh_general.jsonl")
    t0 = time.time()
    runs: dict[str, dict[int, Path]] = {arch: {} for arch in args.archs}
    for seed in args.seeds:
        for arch in args.archs:
            run_dir = Path(args.out) / f"{arch}-seed{seed}"
            runs[arch][seed] = C.train(run_config(args, arch, seed), run_dir, f"{arch} seed {seed}")
    results = summarise(args, runs, time.time() - t0)
    out = Path(args.results)
    C.save_json(out / "results.json", results)
    table = markdown(results)
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    plot(runs, out / "loss_curves.png")
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'loss_curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
