"""Figure 3 of the Skywork-MoE report at CPU scale: gating logit normalisation and adaptive aux-loss coefficients.

Trains the same small MoE (the `tiny-moe` recipe's data: English Wikipedia, Chinese novels/news, GSM8K-style
math; 4 layers, dim 128, n experts of width 352, top-2, capacity factor 1.0, 2,048 tokens per step) several
times, changing only the gate:

  no-norm          plain softmax gate (Eq. 1), fixed α = 0.01
  norm-1           gating logit normalisation λ = 1 (Eq. 6), fixed α = 0.01
  norm-2           λ = 2, fixed α = 0.01
  norm-1-adaptive  λ = 1 with adaptive coefficients (ξ = 1/5, α_max = 0.01, β = 0.99; §4.2)

and summarises metrics.jsonl: Max1/Max2 and Max2/Max3 of the third gating layer (as in the report's figure),
token drop rate (mean over layers), training loss, held-out loss, and the mean aux coefficient.

    .venv/bin/python experiments/moe/fig3_gate_norm.py                  # ~3 min per run on 2 cores
    .venv/bin/python experiments/moe/fig3_gate_norm.py --steps 60 --runs no-norm norm-1

Another regime: `--set` overrides every run (e.g. model.moe.aux_coef=10 model.moe.capacity_factor=2.0; an adaptive
run takes its α_max from model.moe.alpha_max), `--label` names it, `--seeds 0 1` repeats every run per seed and adds
mean (min–max) over seeds, `--results-name` picks the results files (README.md lists the studies and commands).

Writes experiments/moe/results/<results-name>.json, .md (the table) and .png (curves); default fig3.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import torch

from skyloom.config import apply_overrides, build, read_yaml
from skyloom.train.config import RunConfig
from skyloom.train.prepare import prepare_run_data
from skyloom.train.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "experiments"))
import _common as C  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

RUNS = {
    "no-norm": ["model.moe.gate_norm=false", "model.moe.adaptive=false"],
    "norm-1": ["model.moe.gate_norm=true", "model.moe.gate_norm_lambda=1.0", "model.moe.adaptive=false"],
    "norm-2": ["model.moe.gate_norm=true", "model.moe.gate_norm_lambda=2.0", "model.moe.adaptive=false"],
    "norm-1-adaptive": ["model.moe.gate_norm=true", "model.moe.gate_norm_lambda=1.0", "model.moe.adaptive=true"],
    "no-norm-adaptive": ["model.moe.gate_norm=false", "model.moe.adaptive=true"],
    "norm-2-adaptive": ["model.moe.gate_norm=true", "model.moe.gate_norm_lambda=2.0", "model.moe.adaptive=true"],
}


def run_config(
    name: str, steps: int, experts: int, seed: int, batch_tokens: int, extra: list[str] | None = None
) -> RunConfig:
    data = read_yaml(REPO / "recipes" / "tiny-moe.yaml")
    overrides = (
        RUNS[name]
        + [
            f"model.moe.n_experts={experts}",
            "model.moe.capacity_factor=1.0",
            "model.moe.aux_coef=0.01",
            f"train.max_steps={steps}",
            f"train.warmup_steps={max(steps // 20, 1)}",
            f"train.seed={seed}",
            f"train.global_batch_tokens={batch_tokens}",
            "train.micro_batch_size=8",
            f"data.seed={seed}",
            "train.log_every=10",
            "validation.every=0",
            "validation.at_start=false",
            "checkpoint.every=0",
            "checkpoint.save_final=false",
        ]
        + list(extra or [])
    )
    return build(RunConfig, apply_overrides(data, overrides))


def summarize(run_dir: Path, layer: int) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    tail = train[-max(len(train) // 5, 1) :]  # the last 20% of steps

    def mean(key: str, rows=tail) -> float:
        return sum(r[key] for r in rows) / len(rows)

    return {
        "steps": len(train),
        "train_loss_tail": mean("loss"),
        "val_loss": {r["set"]: r["loss"] for r in val},
        "max1_max2_tail": mean(f"moe/L{layer}/max1_max2"),
        "max2_max3_tail": mean(f"moe/L{layer}/max2_max3"),
        "drop_rate_tail": mean("moe/drop_rate"),
        "drop_rate_all": mean("moe/drop_rate", train),
        "aux_coef_final": train[-1]["moe/aux_coef"],
        "aux_coef_min": min(r["moe/aux_coef"] for r in train),
        "expert_similarity_final": train[-1].get(f"moe/L{layer}/expert_similarity"),
        "max_expert_load_final": max(train[-1][f"moe/L{layer}/load"]),  # share of the busiest expert's slots
        "max_expert_load_tail": mean_max_load(tail, layer),
        "aux_loss_tail": mean(f"moe/L{layer}/aux_loss"),  # the unweighted aux loss of that layer
        "weighted_aux_loss_tail": mean("moe/aux_loss"),  # Σ over layers of α·aux loss, what the gradient sees
        "balancing_force_tail": balancing_forces(tail, layer),
        "max1_max2_peak": peak(train, f"moe/L{layer}/max1_max2"),
        "drop_rate_peak": peak(train, "moe/drop_rate"),
        # the curves at the first step and every 10th: the values the README's prose quotes
        "at_steps": {
            str(r["step"]): {
                "max1_max2": r[f"moe/L{layer}/max1_max2"],
                "drop_rate": r["moe/drop_rate"],
                "aux_coef": r["moe/aux_coef"],
            }
            for r in train
            if r["step"] == 1 or r["step"] % 10 == 0
        },
        "tokens_per_sec": mean("tokens_per_sec"),
        "curves": {
            "step": [r["step"] for r in train],
            "loss": [r["loss"] for r in train],
            "max1_max2": [r[f"moe/L{layer}/max1_max2"] for r in train],
            "max2_max3": [r[f"moe/L{layer}/max2_max3"] for r in train],
            "drop_rate": [r["moe/drop_rate"] for r in train],
            "aux_coef": [r["moe/aux_coef"] for r in train],
        },
    }


def peak(rows: list[dict], key: str) -> dict:
    """The largest value of `key` over the run and the step it was reached at."""
    top = max(rows, key=lambda r: r[key])
    return {"value": top[key], "step": top["step"]}


def balancing_forces(rows: list[dict], layer: int) -> dict:
    """How hard each aux-loss form would pull layer `layer`'s router back toward balance, over `rows`.

    Both losses act on the router through the mean gate probabilities P_j; only the centred part of the
    gradient ∂L/∂P moves a softmax. Eq. 4: ∂L/∂P_j = 2·(P_j − 1/n), norm 2·sqrt(L_eq4). Switch: ∂L/∂P_j = n·f_j
    (f = routed-slot shares, the logged load), centred norm n·‖f − 1/n‖. Only meaningful for eq4 runs (the
    logged aux loss must be Eq. 4's value). Returns the tail means of both norms and of their ratio."""
    import math

    eq4, switch, ratio = [], [], []
    for r in rows:
        load = r[f"moe/L{layer}/load"]
        n = len(load)
        e = 2.0 * math.sqrt(max(r[f"moe/L{layer}/aux_loss"], 0.0))
        s = n * math.sqrt(sum((f - 1.0 / n) ** 2 for f in load))
        eq4.append(e)
        switch.append(s)
        if e > 0:
            ratio.append(s / e)
    return {
        "eq4_grad_norm": sum(eq4) / len(eq4),
        "switch_grad_norm": sum(switch) / len(switch),
        "switch_over_eq4": sum(ratio) / len(ratio) if ratio else None,
    }


def mean_max_load(rows: list[dict], layer: int) -> float:
    """Mean over `rows` of the busiest expert's share of layer `layer`'s routed slots (1/n when balanced)."""
    return sum(max(r[f"moe/L{layer}/load"]) for r in rows) / len(rows)


SEED_KEYS = {
    "max1_max2_tail": "Max1/Max2 (L2)",
    "max2_max3_tail": "Max2/Max3 (L2)",
    "drop_rate_tail": "drop rate (last 20%)",
    "drop_rate_all": "drop rate (all)",
    "max_expert_load_tail": "busiest expert share (L2)",
    "train_loss_tail": "train loss (last 20%)",
    "aux_coef_final": "α final",
}


def over_seeds(results: dict) -> dict:
    """Runs recorded as '<run>/seed<s>' grouped by run: mean, min, max and n of the headline metrics (val losses
    per set too), so a difference can be read against the spread between seeds."""
    groups: dict[str, list[dict]] = {}
    for key, r in results.items():
        if "/seed" in key:
            groups.setdefault(key.split("/seed")[0], []).append(r)
    out = {}
    for name, rows in groups.items():
        values = {k: [r[k] for r in rows] for k in SEED_KEYS}
        for vset in rows[0]["val_loss"]:
            values[f"val_loss/{vset}"] = [r["val_loss"][vset] for r in rows]
        out[name] = {
            "n_seeds": len(rows),
            "seeds": [r["seed"] for r in rows],
            **{k: {"mean": sum(v) / len(v), "min": min(v), "max": max(v)} for k, v in values.items()},
        }
    for name in out:  # seed-paired differences against the plain-softmax gate with the same α rule
        base = re.sub(r"^norm-\d", "no-norm", name)
        if base == name or base not in out:
            continue
        pairs = [(results[f"{name}/seed{s}"], results.get(f"{base}/seed{s}")) for s in out[name]["seeds"]]
        pairs = [(a, b) for a, b in pairs if b is not None]
        diffs = {k: [a[k] - b[k] for a, b in pairs] for k in SEED_KEYS}
        for vset in pairs[0][0]["val_loss"] if pairs else ():
            diffs[f"val_loss/{vset}"] = [a["val_loss"][vset] - b["val_loss"][vset] for a, b in pairs]
        out[name]["minus_" + base] = diffs
    return out


def seed_table(summary: dict) -> str:
    """Mean (min–max) over seeds of every grouped run."""
    keys = list(SEED_KEYS) + sorted({k for s in summary.values() for k in s if k.startswith("val_loss/")})
    heads = [SEED_KEYS.get(k, k.replace("val_loss/", "val ")) for k in keys]
    lines = ["| run | seeds | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(keys)]
    for name, s in summary.items():
        cells = []
        for k in keys:
            digits = 4 if k.startswith("drop") or k.startswith("aux") else 3
            cells.append(f"{s[k]['mean']:.{digits}f} ({s[k]['min']:.{digits}f}–{s[k]['max']:.{digits}f})")
        lines.append(f"| {name} | {len(s['seeds'])} | " + " | ".join(cells) + " |")
    for name, s in summary.items():
        for key, diffs in s.items():
            if key.startswith("minus_"):
                shown = ", ".join(
                    f"{SEED_KEYS.get(k, k)} {' / '.join(f'{d:+.4f}' for d in v)}" for k, v in diffs.items()
                )
                lines.append(f"\n{name} − {key[6:]}, per seed: {shown}")
    return "\n".join(lines)


def force(r: dict) -> str:
    """The Switch/Eq. 4 balancing-force ratio of an Eq. 4 run, '—' where it does not apply."""
    f = r.get("balancing_force_tail") or {}
    eq4 = "aux_loss=switch" not in " ".join(r.get("overrides", []))
    return f"{f['switch_over_eq4']:.0f}" if eq4 and f.get("switch_over_eq4") else "—"


def table(results: dict) -> str:
    lines = [
        "| run | Max1/Max2 (L2) | Max2/Max3 (L2) | drop rate (last 20%) | drop rate (all) | train loss "
        "(last 20%) | val loss en / zh | α final (min) | busiest expert share (L2, last 20%) | "
        "Switch / Eq. 4 balancing force (L2) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        val = " / ".join(f"{v:.3f}" for v in r["val_loss"].values())
        lines.append(
            f"| {name} | {r['max1_max2_tail']:.2f} | {r['max2_max3_tail']:.2f} | {r['drop_rate_tail']:.4f} | "
            f"{r['drop_rate_all']:.4f} | {r['train_loss_tail']:.3f} | {val} | "
            f"{r['aux_coef_final']:.4f} ({r['aux_coef_min']:.4f}) | {r['max_expert_load_tail']:.3f} | {force(r)} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    panels = [
        ("loss", "training loss"),
        ("drop_rate", "token drop rate (mean over layers)"),
        ("aux_coef", "aux coefficient α (mean over layers)"),
        ("max1_max2", "Max1/Max2, gating layer 3"),
        ("max2_max3", "Max2/Max3, gating layer 3"),
    ]
    for ax, (key, title) in zip(axes.flat, panels):
        for name, r in results.items():
            c = r["curves"]
            ax.plot(c["step"], c[key], label=name, linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes.flat[0].legend()
    axes.flat[-1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--experts", type=int, default=16, help="experts per layer (the report's Fig. 3 MoE has 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="train every run once per seed; results are named '<run><label>/seed<s>' and summarised over seeds",
    )
    parser.add_argument("--batch-tokens", type=int, default=2048, help="tokens per step (micro-batches of 8×256)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--out", default=str(REPO / "runs" / "moe-fig3"), help="where the runs go")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra config overrides for every run, e.g. model.moe.aux_loss=switch",
    )
    parser.add_argument("--label", default="", help="suffix of the result names (another regime, e.g. '-switch')")
    parser.add_argument(
        "--results-name",
        default="fig3",
        help="stem of the results files under experiments/moe/results (e.g. fig3_boundary: another study)",
    )
    parser.add_argument(
        "--summarize-only",
        action="store_true",
        help="do not train: re-summarise runs this script finished earlier with the same settings",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results_file = RESULTS / f"{args.results_name}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    jobs = [(name, args.seed, "") for name in args.runs]
    if args.seeds:
        jobs = [(name, seed, f"/seed{seed}") for seed in args.seeds for name in args.runs]  # seed by seed
    for name, seed, seed_key in jobs:
        run_dir = Path(args.out) / f"{name}{args.label}{seed_key.replace('/', '-')}"
        settings = {
            "steps_planned": args.steps,
            "experts": args.experts,
            "seed": seed,
            "batch_tokens": args.batch_tokens,
            "overrides": RUNS[name] + args.set,
        }
        marker = run_dir / "fig3-settings.json"
        if args.summarize_only:
            if not marker.is_file() or json.loads(marker.read_text(encoding="utf-8")) != settings:
                raise SystemExit(f"{run_dir}: no run of this script with these settings to summarise")
        else:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            with C.TrainingSession(run_dir):
                cfg = run_config(name, args.steps, args.experts, seed, args.batch_tokens, args.set)
                prepare_run_data(cfg)  # the recipe's raw sources packed (once)
                status = Trainer(cfg, run_dir).fit()
            if status != "finished":
                raise SystemExit(f"{name}: {status}; no results written for it")
            C.save_json(marker, settings)
        # re-read before writing: several copies of this script may run different --runs side by side
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        cost = C.training_cost(run_dir)  # wall time and the machine's load average while it trained
        results[f"{name}{args.label}{seed_key}"] = {
            **summarize(run_dir, layer=2),
            "training": cost,
            **settings,
            "config": C.resolved_config(run_dir),
        }
        print(f"{name}{seed_key}: {cost['train_wall_s']:.0f}s")
        results_file.write_text(json.dumps(results, indent=1) + "\n")
    results = json.loads(results_file.read_text()) if results_file.is_file() else results
    ordered = {k: v for k, v in results.items() if not k.startswith("_")}  # in the order first recorded
    text = table(ordered)
    summary = over_seeds(ordered)
    if summary:
        results["_over_seeds"] = summary
        results_file.write_text(json.dumps(results, indent=1) + "\n")
        text += "\n\nMean (min–max) over seeds:\n\n" + seed_table(summary)
    (RESULTS / f"{args.results_name}.md").write_text(text + "\n")
    plot(ordered, RESULTS / f"{args.results_name}.png")
    print(text)


if __name__ == "__main__":
    main()
