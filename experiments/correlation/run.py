"""Validation loss as a proxy for downstream scores across one run's checkpoints (Skywork-13B report §2.2, Figure 1).

The report plots the validation loss on English web text against the average of several downstream tasks (BoolQ,
PIQA, WinoGrande, TriviaQA, RACE) over Skywork-13B's pretraining checkpoints and finds "a very high correlation"
between the two. Here: one `tiny`-preset run (2.9M parameters) on the `recipes/tiny.yaml` mixture, a checkpoint and a
validation pass (WikiText-2 test, zh_general) every --every steps, and at every checkpoint three zero-shot
multiple-choice tasks a model of this size might move on, scored by log-likelihood (lm-evaluation-harness style):

    chid        FewCLUE ChID public test (a real Chinese benchmark; passages whose blank has text before it): the
                blank `#idiom#`, 7 candidate idioms; context = up to 100 characters before the blank,
                continuation = idiom + the next 20 characters (same for every candidate); highest summed
                log-likelihood wins. Chance 1/7. The training data holds other ChID passages (with their blanks
                unfilled), never the test passages or their answers.
    wiki_next   English next-sentence choice from WikiText-2 test articles beyond the validation budget: the true
                next sentence vs 3 sentences from other articles, per-character log-likelihood (acc_norm). Chance 1/4.
    word_order  BLiMP-style minimal pairs from the same held-out sentences: after the preceding sentence, the real
                sentence vs its words shuffled (same characters); summed log-likelihood. Chance 1/2.

The scores are recorded in the run's metrics.jsonl as {"kind": "bench", "step", "task", "score"} lines and the
correlation is computed by `skyloom eval correlate RUN_DIR` (Pearson r, Spearman ρ, a scatter PNG).
With `--task NAME:PATH` (repeatable) the report's own tasks are scored too, from a local copy of their files and
with lm-evaluation-harness's prompts — e.g. `--task boolq:DIR --task piqa:DIR --task winogrande:DIR` (skyloom
eval tasks; docs/evaluation.md lists them and the file layouts they read). Nothing here downloads them.

Writes RESULTS/{results.json,results.md,correlation.png}; the run lives under --out and resumes when re-run;
scores already computed for a checkpoint are reused.

    .venv/bin/python experiments/correlation/run.py
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _common as C  # noqa: E402

HERE = Path(__file__).resolve().parent
WIKI_SKIP_CHARS = 200_000  # the validation set reads the first 8,192 tokens (~40k characters) of test.txt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="training steps (200)")
    p.add_argument("--every", type=int, default=25, help="checkpoint + validation interval in steps (25)")
    p.add_argument("--batch-tokens", type=int, default=2048, help="tokens per optimizer step (2048)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak LR, cosine to LR/10 (3e-3)")
    p.add_argument("--items", type=int, default=200, help="questions per task (200)")
    p.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME:PATH",
        help="also score a registered `eval bench` task zero-shot on its first --items items at every checkpoint, e.g. "
        "the report's own boolq, piqa, winogrande, race, triviaqa (lm-eval's prompts) on a local copy (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0)
    C.add_common_options(
        p,
        "runs/experiments/correlation",
        "the run directory (resumable)",
        HERE / "results",
        "where results.{json,md} and the PNG go",
    )
    return p.parse_args(argv)


def run_config(args: argparse.Namespace) -> dict:
    cfg = C.base_config(args.data_dir)
    for key, value in {
        "train.max_steps": args.steps,
        "train.global_batch_tokens": args.batch_tokens,
        "train.lr": args.lr,
        "train.min_lr": args.lr / 10,
        "train.seed": args.seed,
        "train.log_every": 10,
        "validation.every": args.every,
        "checkpoint.every": args.every,
        "checkpoint.keep_last": 10_000,
    }.items():
        C.set_key(cfg, key, value)
    return cfg


# ---- the two tasks: (context, [continuations], gold index, normalise per character?) ----


def chid_items(n: int) -> list[tuple[str, list[str], int]]:
    items = []
    for line in (C.SHARED / "fewclue_zh" / "chid" / "test_public.json").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        left, _, right = r["content"].partition("#idiom#")
        if not left.strip():
            continue  # a blank at the very start leaves no context to choose by
        right = right.replace("#idiom#", "")[:20]
        items.append((left[-100:], [c + right for c in r["candidates"]], int(r["answer"])))
        if len(items) == n:
            break
    return items


def wiki_sentences() -> list[list[str]]:
    """Sentences of each WikiText-2 test paragraph after the validation budget (heading lines dropped)."""
    text = (C.SHARED / "wikitext2" / "test.txt").read_text(encoding="utf-8")[WIKI_SKIP_CHARS:]
    paragraphs = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        sents = [s.strip() + " ." for s in re.split(r" \. ", line) if s.strip()]
        sents = [s for s in sents if 40 <= len(s) <= 250]
        if len(sents) >= 2:
            paragraphs.append(sents)
    return paragraphs


def wiki_items(n: int, seed: int) -> list[tuple[str, list[str], int]]:
    rng = random.Random(seed)
    paragraphs = wiki_sentences()
    pool = [(i, s) for i, p in enumerate(paragraphs) for s in p]
    items = []
    for i in rng.sample(range(len(paragraphs)), min(n, len(paragraphs))):
        k = rng.randrange(len(paragraphs[i]) - 1)
        context, gold = paragraphs[i][k], paragraphs[i][k + 1]
        distractors = []
        while len(distractors) < 3:
            j, s = pool[rng.randrange(len(pool))]
            if j != i and s not in distractors:
                distractors.append(s)
        options = [gold] + distractors
        rng.shuffle(options)
        items.append((context, [" " + o for o in options], options.index(gold)))
    return items


def word_order_items(n: int, seed: int) -> list[tuple[str, list[str], int]]:
    """BLiMP-style minimal pairs: a WikiText-2 sentence vs the same words shuffled, after the preceding sentence."""
    rng = random.Random(seed + 1)
    paragraphs = wiki_sentences()
    items = []
    for i in rng.sample(range(len(paragraphs)), len(paragraphs)):
        k = rng.randrange(len(paragraphs[i]) - 1)
        context, sentence = paragraphs[i][k], paragraphs[i][k + 1]
        words = sentence.split(" ")
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        options = [sentence, " ".join(shuffled)]
        rng.shuffle(options)
        items.append((context, [" " + o for o in options], options.index(sentence)))
        if len(items) == n:
            break
    return items


TASKS = {
    "chid": (lambda a: chid_items(a.items), False),
    "wiki_next": (lambda a: wiki_items(a.items, a.seed), True),
    "word_order": (lambda a: word_order_items(a.items, a.seed), False),
}


def score(lm, items: list[tuple[str, list[str], int]], per_char: bool, task: str) -> float:
    requests, spans = [], []
    for context, options, _ in items:
        ctx = lm.encode(context)
        spans.append((len(requests), len(options)))
        requests += [(ctx, lm.encode(o)) for o in options]
    lls = [s for s, _ in lm.loglikelihood(requests, desc=task)]
    right = 0
    for (start, k), (_, options, gold) in zip(spans, items):
        vals = [lls[start + j] / (len(options[j]) if per_char else 1) for j in range(k)]
        right += max(range(k), key=vals.__getitem__) == gold
    return right / len(items)


def record_scores(args: argparse.Namespace, run_dir: Path) -> dict[str, dict[int, float]]:
    """Score every checkpoint (cached in RUN_DIR/eval/step_X/<task>.json) and put bench lines in metrics.jsonl."""
    from skyloom.eval.backends import load_lm
    from skyloom.eval.bench import parse_task, run_task
    from skyloom.eval.correlate import list_checkpoints

    items = {task: make(args) for task, (make, _) in TASKS.items()}
    bench = {spec.name: spec for spec in map(parse_task, args.task)}  # registry tasks on real files (--task)
    settings = {"items": args.items, "seed": args.seed}
    scores: dict[str, dict[int, float]] = {task: {} for task in [*TASKS, *bench]}
    for step, ckpt in list_checkpoints(run_dir).items():
        lm = None
        for task in scores:
            cache = run_dir / "eval" / ckpt.name / f"{task}.json"
            task_settings = {**settings, "path": str(bench[task].path)} if task in bench else settings
            if cache.is_file() and json.loads(cache.read_text())["settings"] == task_settings:
                scores[task][step] = json.loads(cache.read_text())["score"]
                continue
            lm = lm or load_lm(ckpt, device="cpu", progress=False)
            if task in bench:  # zero-shot acc, lm-eval's prompts (skyloom/eval/benchmarks.py)
                result, _ = run_task(lm, bench[task], shots=0, limit=args.items)
                scores[task][step], n = result["overall"]["acc"], result["overall"]["n"]
            else:
                scores[task][step], n = score(lm, items[task], TASKS[task][1], task), len(items[task])
            C.save_json(cache, {"settings": task_settings, "score": scores[task][step], "n": n})
        print(f"checkpoint step {step}: " + "  ".join(f"{t} {scores[t][step]:.3f}" for t in scores), flush=True)
    metrics = run_dir / "metrics.jsonl"
    lines = [x for x in metrics.read_text(encoding="utf-8").splitlines() if x.strip()]
    kept = [x for x in lines if json.loads(x).get("kind") != "bench"]
    kept += [
        json.dumps({"kind": "bench", "step": s, "task": t, "score": v})
        for t, by in scores.items()
        for s, v in sorted(by.items())
    ]
    tmp = metrics.with_name("metrics.jsonl.tmp")
    tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
    tmp.replace(metrics)
    return scores


def markdown(result: dict, scores: dict[str, dict[int, float]], val: dict[str, dict[str, float]]) -> str:
    steps = result["steps"]
    sets = sorted(val)
    lines = [
        "| step | " + " | ".join(f"val {s}" for s in sets) + " | " + " | ".join(scores) + " |",
        "|" + "---|" * (1 + len(sets) + len(scores)),
    ]
    for s in steps:
        lines.append(
            f"| {s} | "
            + " | ".join(f"{val[v][str(s)]:.3f}" for v in sets)
            + " | "
            + " | ".join(f"{100 * scores[t][s]:.1f}%" for t in scores)
            + " |"
        )
    lines += ["", "| validation set | task | checkpoints | Pearson r | Spearman ρ |", "|---|---|---|---|---|"]

    def f(v) -> str:
        return "n/a" if v is None or v != v else f"{v:+.3f}"

    for r in result["correlations"]:
        lines.append(f"| {r['set']} | {r['task']} | {r['n']} | {f(r['pearson'])} | {f(r['spearman'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.start(args, "fewclue_zh/chid/test_public.json", "wikitext2/test.txt", "skywork/zh_general.jsonl")
    from skyloom.cli import main as skyloom

    t0 = time.time()
    run_dir = C.train(run_config(args), Path(args.out), "correlation run")
    scores = record_scores(args, run_dir)
    cmd = ["eval", "correlate", str(run_dir), "--no-progress"]
    print("skyloom " + " ".join(cmd), flush=True)
    if skyloom(cmd) != 0:
        raise SystemExit("eval correlate failed")
    result = json.loads((run_dir / "eval" / "correlation.json").read_text(encoding="utf-8"))
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "eval" / "correlation.png", out / "correlation.png")
    table = markdown(result, scores, result["val_loss"])
    training = C.training_cost(run_dir)  # the real training's wall time and load average, kept in the run
    C.save_json(
        out / "results.json",
        {
            "settings": vars(args),
            "command": "skyloom " + " ".join(cmd),
            "correlate": result,
            "training": training,
            "config": C.resolved_config(run_dir),
            "invocation_wall_s": round(time.time() - t0, 1),
        },
    )  # this call only
    (out / "results.md").write_text(
        table + "\n\n" + C.cost_table({"correlation run": training}) + "\n", encoding="utf-8"
    )
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'correlation.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
