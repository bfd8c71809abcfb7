"""Does the leakage tool catch a model pretrained on the GSM8K train split? (Skywork-13B report §5.2, Table 8)

The report scores models on GSM8K train (L_train), test (L_test) and a GPT-4-written look-alike reference set (L_ref);
Δ2 = L_test − L_train clearly positive means the model was trained on the train split (Qwen-14B 0.61, Qwen-7B 0.43,
Baichuan2-13B 0.37 …; Skywork-13B 0.04). Here two `tiny`-preset models (2.9M parameters) are pretrained on the same
general mixture (WikiText-2 English + ChID Chinese passages) with the same budget, schedule and seed, and the same
share of GSM8K-format text mixed in — they differ only in *which* GSM8K train records:

    contaminated  the first --seen GSM8K train records (the "train split" given to the tool)
    clean         --seen other GSM8K train records (disjoint), so it knows the format but not the scored samples
    none          (with --arms ... none) no GSM8K text at all, en + zh only, same budget

Then `skyloom eval leakage --train SEEN --window rolling --max-tokens 256` (the model's length) on each final
checkpoint (Table-8 L's, Δ1, Δ2 with bootstrap intervals and the verdict). Rolling windows score every token of
a sample; the report's own convention cuts a text to max_tokens // 3 characters, i.e. the first 85 characters at
this model's 256-token limit.

Writes RESULTS/{results.json,results.md}; runs live under --out and resume when re-run.

    .venv/bin/python experiments/leakage/run.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

HERE = Path(__file__).resolve().parent
ARMS = ("contaminated", "clean", "none")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=150, help="pretraining steps per model (150)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="tokens per optimizer step (2048)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak LR, cosine to LR/10 (3e-3)")
    p.add_argument("--seen", type=int, default=150, help="GSM8K train records mixed into the contaminated run (150)")
    p.add_argument("--gsm8k-weight", type=float, default=0.25, help="mixture weight of the GSM8K-format source (0.25)")
    p.add_argument("--limit", type=int, default=300, help="samples scored per set (eval leakage --limit; 300)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=["contaminated", "clean"], help="which models to train")
    p.add_argument("--seed", type=int, default=0)
    C.add_common_options(
        p, "runs/experiments/leakage", "where the runs go (resumable)", HERE / "results", "where results.{json,md} go"
    )
    return p.parse_args(argv)


def arm_config(args: argparse.Namespace, arm: str, out_root: Path) -> dict:
    cfg = C.base_config(args.data_dir)
    sources = cfg["data"]["sources"]
    for name in ("en", "zh"):  # a fixed general mixture, the tiny recipe's average shares
        w = sources[name]["weight"]
        sources[name]["weight"] = (w[0][1] + w[-1][1]) / 2
    sources.pop("stem")
    if arm != "none":
        records = out_root / f"gsm8k_{arm}.jsonl"
        sources["gsm8k"] = {
            "path": str(out_root / f"tokens-{arm}"),
            "raw": [str(records)],
            "weight": args.gsm8k_weight,
            "max_epochs": 20,
            "text_key": "text",
        }
        total = sum(s["weight"] for s in sources.values())
        for s in sources.values():
            s["weight"] = s["weight"] / total
    for key, value in {
        "train.max_steps": args.steps,
        "train.global_batch_tokens": args.batch_tokens,
        "train.lr": args.lr,
        "train.min_lr": args.lr / 10,
        "train.seed": args.seed,
        "train.log_every": 10,
        "validation.every": args.steps,
        "checkpoint.every": 50,
        "checkpoint.keep_last": 1,
    }.items():
        C.set_key(cfg, key, value)
    return cfg


def write_records(args: argparse.Namespace, out_root: Path) -> Path:
    """The GSM8K train records each arm mixes in; the contaminated arm's file is the tool's --train."""
    seen = C.gsm8k_texts("train", 0, args.seen)
    other = C.gsm8k_texts("train", args.seen, 2 * args.seen)
    if len(other) < args.seen:
        raise SystemExit(f"--seen {args.seen}: GSM8K train has too few records for two disjoint sets")
    for arm, texts in (("contaminated", seen), ("clean", other)):
        path = out_root / f"gsm8k_{arm}.jsonl"
        wanted = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
        if not path.is_file() or path.read_text(encoding="utf-8") != wanted:  # changed → re-pack its tokens
            import shutil

            shutil.rmtree(out_root / f"tokens-{arm}", ignore_errors=True)
            C.write_jsonl_texts(path, texts)
    return out_root / "gsm8k_contaminated.jsonl"


def leakage_command(args: argparse.Namespace, checkpoint: Path, seen: Path, output: Path) -> list[str]:
    max_len = json.loads((checkpoint / "model.json").read_text(encoding="utf-8"))["model"]["max_seq_len"]
    return [
        "eval",
        "leakage",
        "--model",
        str(checkpoint),
        "--train",
        str(seen),
        "--limit",
        str(args.limit),
        "--window",
        "rolling",
        "--max-tokens",
        str(max_len),
        "--no-progress",
        "--output",
        str(output),
    ]


def markdown(rows: dict) -> str:
    lines = [
        "| model | L_test | L_train (seen records) | L_ref | Δ1 = L_test − L_ref | Δ2 = L_test − L_train | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, r in rows.items():
        c = r["ci"]
        lines.append(
            f"| {arm} | {r['L_test']:.3f} | {r['L_train']:.3f} | {r['L_ref']:.3f} | {r['delta1']:+.3f} "
            f"[{c['delta1'][0]:+.3f}, {c['delta1'][1]:+.3f}] | {r['delta2']:+.3f} "
            f"[{c['delta2'][0]:+.3f}, {c['delta2'][1]:+.3f}] | {r['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.start(args, "gsm8k/train.jsonl", "gsm8k/test.jsonl", "skywork/mock_gsm8k_test_public.jsonl")
    from skyloom.cli import main as skyloom

    t0 = time.time()
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    seen = write_records(args, out_root)
    rows, commands = {}, {}
    for arm in args.arms:
        run_dir = C.train(arm_config(args, arm, out_root), out_root / arm, arm)
        output = out_root / f"leakage-{arm}.json"
        cmd = leakage_command(args, C.last_checkpoint(run_dir), seen, output)
        print(f"[{arm}] skyloom {' '.join(cmd)}", flush=True)
        if skyloom(cmd) != 0:
            raise SystemExit(f"[{arm}] eval leakage failed")
        rows[arm] = json.loads(output.read_text(encoding="utf-8"))
        rows[arm]["val_final"] = C.val_at(run_dir)
        rows[arm]["config"] = C.resolved_config(run_dir)
        commands[arm] = "skyloom " + " ".join(cmd)
    training = {arm: C.training_cost(out_root / arm) for arm in args.arms}  # the real training, kept in each run
    results = {
        "settings": vars(args),
        "commands": commands,
        "rows": rows,
        "training": training,
        "invocation_wall_s": round(time.time() - t0, 1),
    }  # this call only: finished runs are reused
    out = Path(args.results)
    C.save_json(out / "results.json", results)
    table = markdown(rows) + "\n\n" + C.cost_table(training)
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
