"""Continuing a weak checkpoint on in-domain data (Skywork-13B report §5.1, Table 7), at CPU scale.

The report takes a weak Skywork-13B checkpoint (0.5T tokens), trains it on 1B tokens of in-domain (SkyPile-STEM)
data, and finds the in-domain scores jump (GSM8K 6.9 → 40.7, C-Eval 28.3 → 50.8) while the general
language-modelling loss gets worse (En 1.86 → 2.09, Zh 2.08 → 2.21).

Here, with the `tiny` preset (2.9M parameters):

1. base      pretrained on general text only (WikiText-2 English + ChID Chinese passages), --base-steps steps:
             the "weak checkpoint";
2. in-domain the base continued --cont-steps steps on GSM8K *train* solutions only (the in-domain data);
3. general   the control: the base continued the same steps on its own general mixture (same LR, same tokens),
             so the in-domain arm's changes are not just "more training".

Measured on all three: the in-domain score proxy — the loss on GSM8K *test* (never trained on) and a 4-way
choice accuracy on GSM8K test (pick the question's own worked solution among 3 solutions of other test questions,
by log-likelihood; acc and acc_norm as lm-evaluation-harness; questions with a candidate solution longer than the
model's 256-token window minus 32 are left out) — and the general losses on WikiText-2 test (En) and
the authors' zh_general set (Zh). GSM8K's own exact-match accuracy is 0/50 for these models before and after
(measured once with `skyloom eval bench --task gsm8k --shots 0 --limit 50`), so the script does not compute it.

Writes RESULTS/{results.json,results.md,curves.png}; runs live under --out and resume when re-run.

    .venv/bin/python experiments/in_domain/run.py
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

HERE = Path(__file__).resolve().parent
SETS = {
    "gsm8k_test": "GSM8K test loss",
    "wikitext_test": "En loss (WikiText-2 test)",
    "zh_general": "Zh loss (zh_general)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-steps", type=int, default=200, help="general pretraining steps of the weak base (200)")
    p.add_argument("--cont-steps", type=int, default=40, help="continuation steps of both arms (40)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="tokens per optimizer step (2048)")
    p.add_argument("--lr", type=float, default=3e-3, help="base peak LR, cosine to LR/10 (3e-3)")
    p.add_argument("--cont-lr", type=float, default=1e-3, help="constant LR of the continuation (1e-3)")
    p.add_argument("--mc-questions", type=int, default=200, help="GSM8K test questions in the choice task (200)")
    p.add_argument("--val-every", type=int, default=10, help="validation interval in steps, all runs (10)")
    p.add_argument("--val-tokens", type=int, default=8192, help="predicted tokens per validation set (8192)")
    p.add_argument("--seed", type=int, default=0)
    C.add_common_options(
        p,
        "runs/experiments/in_domain",
        "where the runs go (resumable)",
        HERE / "results",
        "where results.{json,md} and curves.png go",
    )
    return p.parse_args(argv)


def configs(args: argparse.Namespace, gsm8k_test: Path) -> dict[str, dict]:
    common = {
        "train.global_batch_tokens": args.batch_tokens,
        "train.seed": args.seed,
        "train.log_every": 10,
        "checkpoint.keep_last": 1,
    }
    base = C.base_config(args.data_dir, drop_sources=["stem"])
    base["validation"]["sets"]["gsm8k_test"] = {"path": str(gsm8k_test), "max_tokens": args.val_tokens}
    for s in base["validation"]["sets"].values():
        s["max_tokens"] = args.val_tokens
    for key, value in {
        **common,
        "train.max_steps": args.base_steps,
        "train.lr": args.lr,
        "train.min_lr": args.lr / 10,
        "validation.every": args.val_every,
        "checkpoint.every": max(args.base_steps // 2, 1),
    }.items():
        C.set_key(base, key, value)

    def continuation(sources: dict) -> dict:
        cfg = C.base_config(args.data_dir)
        cfg["validation"] = copy.deepcopy(base["validation"])
        cfg["data"]["sources"] = sources
        for key, value in {
            **common,
            "train.max_steps": args.cont_steps,
            "train.lr": args.cont_lr,
            "train.min_lr": args.cont_lr,
            "train.schedule": "constant",
            "train.warmup_steps": 0,
            "train.init_from": str(Path(args.out) / "base"),
            "data.init_loader_from_checkpoint": True,  # general sources go on where base stopped
            "validation.every": args.val_every,
            "checkpoint.every": args.cont_steps,
        }.items():
            C.set_key(cfg, key, value)
        return cfg

    full = C.base_config(args.data_dir)["data"]["sources"]
    general = {name: dict(full[name], weight=full[name]["weight"][-1][1]) for name in ("en", "zh")}  # base's end mix
    return {
        "base": base,
        "in-domain": continuation({"stem": dict(full["stem"], weight=1.0)}),
        "general": continuation(general),
    }


def choice_task(n: int, seed: int) -> list[tuple[str, list[str], int]]:
    """(question, 4 candidate solutions, index of the question's own) for the first n GSM8K test records."""
    import json
    import random

    records = [json.loads(x) for x in (C.SHARED / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    rng = random.Random(seed)
    items = []
    for i, r in enumerate(records[:n]):
        others = rng.sample([j for j in range(len(records)) if j != i], 3)
        options = [r["answer"]] + [records[j]["answer"] for j in others]
        order = list(range(4))
        rng.shuffle(order)
        items.append((r["question"], [options[k] for k in order], order.index(0)))
    return items


def choice_accuracy(checkpoint: Path, items: list[tuple[str, list[str], int]]) -> dict:
    """acc (summed log-likelihood) and acc_norm (per character) with a binomial standard error."""
    from skyloom.eval.backends import load_lm

    lm = load_lm(checkpoint, device="cpu", progress=False)
    requests, kept = [], []
    for question, options, gold in items:
        ctx, conts = lm.encode(question), [lm.encode(" " + o) for o in options]
        if max(map(len, conts)) > lm.max_length - 32:  # a solution must fit the model's window with some context
            continue
        kept.append((question, options, gold))
        requests += [(ctx, c) for c in conts]
    skipped, items = len(items) - len(kept), kept
    scores = [s for s, _ in lm.loglikelihood(requests, desc="gsm8k choice")]
    right = right_norm = 0
    for k, (_, options, gold) in enumerate(items):
        lls = scores[4 * k : 4 * k + 4]
        norm = [ll / max(len(o) + 1, 1) for ll, o in zip(lls, options)]
        right += max(range(4), key=lls.__getitem__) == gold
        right_norm += max(range(4), key=norm.__getitem__) == gold
    n = len(items)

    def se(p: float) -> float:
        return math.sqrt(p * (1 - p) / n)

    return {
        "n": n,
        "skipped_too_long": skipped,
        "acc": right / n,
        "acc_se": se(right / n),
        "acc_norm": right_norm / n,
        "acc_norm_se": se(right_norm / n),
        "chance": 0.25,
    }


def plot(out_root: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for arm, color in (("in-domain", "tab:orange"), ("general", "tab:green")):
        _, val = C.metrics(out_root / arm)
        for ax, name in zip(axes, SETS):
            rows = [r for r in val if r["set"] == name]
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="o", color=color, label=arm)
    for ax, title in zip(axes, SETS.values()):
        ax.set_title(title)
        ax.set_xlabel("continuation step (step 0 = the weak base)")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Continuing a weak checkpoint on in-domain (GSM8K train) vs general data (cf. Table 7)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def params(checkpoint: Path) -> int:
    from skyloom.model.checkpoint import load_model

    return sum(p.numel() for p in load_model(checkpoint).parameters())


def deltas(before: dict, after: dict) -> dict:
    """after − before for every loss and both choice accuracies (percentage points for the accuracies)."""
    out = {k: after[k] - before[k] for k in SETS}
    for key in ("acc", "acc_norm"):
        out[f"choice_{key}_points"] = 100 * (after["choice"][key] - before["choice"][key])
    return out


def step_table(r: dict) -> str:
    """The in-domain continuation's validation losses step by step (step 0 = the weak base)."""
    lines = [
        "| continuation step (tokens) | " + " | ".join(SETS[s].split(" (")[0] for s in SETS) + " |",
        "|---|" + "---|" * len(SETS),
    ]
    for step, losses in sorted(r["val_curves"]["in-domain"].items(), key=lambda kv: int(kv[0])):
        tokens = f" ({losses['tokens']:,})" if int(step) else ""
        lines.append(f"| {step}{tokens} | " + " | ".join(f"{losses[s]:.3f}" for s in SETS) + " |")
    return "\n".join(lines)


def markdown(r: dict) -> str:
    rows = r["rows"]
    head = (
        "| | GSM8K choice acc_norm (%) | GSM8K choice acc (%) | GSM8K test loss | En loss | Zh loss |\n"
        "|---|---|---|---|---|---|"
    )
    lines = [head]

    def line(name: str, x: dict) -> str:
        c = x["choice"]
        return (
            f"| {name} | {100 * c['acc_norm']:.1f} ± {100 * c['acc_norm_se']:.1f} | {100 * c['acc']:.1f} ± "
            f"{100 * c['acc_se']:.1f} | {x['gsm8k_test']:.3f} | {x['wikitext_test']:.3f} | {x['zh_general']:.3f} |"
        )

    def delta(name: str, a: dict, b: dict) -> str:
        return (
            f"| {name} | {100 * (b['choice']['acc_norm'] - a['choice']['acc_norm']):+.1f} | "
            f"{100 * (b['choice']['acc'] - a['choice']['acc']):+.1f} | {b['gsm8k_test'] - a['gsm8k_test']:+.3f} | "
            f"{b['wikitext_test'] - a['wikitext_test']:+.3f} | {b['zh_general'] - a['zh_general']:+.3f} |"
        )

    lines.append(line("Before (weak base)", rows["base"]))
    lines.append(line("After, in-domain (GSM8K train)", rows["in-domain"]))
    lines.append(delta("Δ in-domain", rows["base"], rows["in-domain"]))
    lines.append(line("After, general (control)", rows["general"]))
    lines.append(delta("Δ general", rows["base"], rows["general"]))
    return "\n".join(lines + ["", step_table(r), "", C.cost_table(r["training"])])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.start(args, "gsm8k/train.jsonl", "gsm8k/test.jsonl", "wikitext2/test.txt", "skywork/zh_general.jsonl")
    t0 = time.time()
    out_root = Path(args.out)
    gsm8k_test = C.write_jsonl_texts(out_root / "gsm8k_test.jsonl", C.gsm8k_texts("test"))
    cfgs = configs(args, gsm8k_test)
    for name in ("base", "in-domain", "general"):
        C.train(cfgs[name], out_root / name, name)
    items = choice_task(args.mc_questions, args.seed)
    rows = {}
    for name in ("base", "in-domain", "general"):
        print(f"[{name}] GSM8K choice task ({len(items)} questions)", flush=True)
        rows[name] = {**C.val_at(out_root / name), "choice": choice_accuracy(C.last_checkpoint(out_root / name), items)}
    results = {
        "settings": vars(args),
        "params": params(C.last_checkpoint(out_root / "base")),
        "rows": rows,
        "tokens": {"base": args.base_steps * args.batch_tokens, "continuation": args.cont_steps * args.batch_tokens},
        "continuation_share_of_base": args.cont_steps / args.base_steps,
        "deltas": {arm: deltas(rows["base"], rows[arm]) for arm in ("in-domain", "general")},
        "perplexity_gsm8k_test": {name: math.exp(rows[name]["gsm8k_test"]) for name in rows},
        "val_curves": {arm: C.val_curve(out_root / arm) for arm in ("in-domain", "general")},
        "training": {name: C.training_cost(out_root / name) for name in ("base", "in-domain", "general")},
        "configs": {name: C.resolved_config(out_root / name) for name in ("base", "in-domain", "general")},
        "invocation_wall_s": round(time.time() - t0, 1),
    }  # this call only: finished runs are reused
    out = Path(args.results)
    C.save_json(out / "results.json", results)
    table = markdown(results)
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    plot(out_root, out / "curves.png")
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
