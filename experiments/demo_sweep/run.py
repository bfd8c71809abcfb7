"""Short Stage-1 runs of candidate demo settings: which model shape, vocabulary, batch and learning rate make the
natural-text domains' held-out loss fall well below their unigram entropy within the demo's time budget.

Each candidate trains from scratch on the demo's own SkyPile-Main shards (built by `skyloom demo` up to `pack`
in one workspace per vocabulary size) for a fixed number of tokens, then records every domain's validation loss
next to that domain's unigram entropy (skyloom.eval.unigram), and the CPU and wall seconds with the load average
(losses do not depend on machine load, seconds do). Resumable: a finished candidate is read back, not retrained.

    .venv/bin/python experiments/demo_sweep/run.py [--only NAME …] [--threads 1]
      → experiments/demo_sweep/results.json, results.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1].parent
HERE = Path(__file__).resolve().parent

# tokenizers: BPE base + Chinese characters + Chinese words (the rest) + 17 reserved = the vocabulary size
TOKENIZERS = {
    "8k": (
        8192,
        [
            "tokenizer.total=8192",
            "tokenizer.base_size=4096",
            "tokenizer.chinese_chars=2600",
            "tokenizer.chinese_words=1479",
        ],
    ),
    "4k": (
        4096,
        [
            "tokenizer.total=4096",
            "tokenizer.base_size=1536",
            "tokenizer.chinese_chars=2000",
            "tokenizer.chinese_words=543",
        ],
    ),
    # characters only, no Chinese words: the model learns the within-word structure itself
    "4k-chars": (
        4096,
        [
            "tokenizer.total=4096",
            "tokenizer.base_size=1479",
            "tokenizer.chinese_chars=2600",
            "tokenizer.chinese_words=0",
        ],
    ),
}
SESSION = "stage1-a"
# the demo's Stage-1 A before issue 21 (every candidate starts from it, whatever stage1a.yaml says now)
BEFORE = [
    "model.max_seq_len=256",
    "data.seq_len=256",
    "train.global_batch_tokens=4096",
    "train.micro_batch_size=8",
    "train.lr=3e-3",
    "train.min_lr=3e-4",
]
RECIPE = ["corpus.val_tokens=8192"]  # the validation budget the sweep measured with
SMALL_BATCH = ["train.global_batch_tokens=1024", "train.micro_batch_size=8", "data.seq_len=128"]
# name: (tokenizer, overrides of the stage1-a session). "current" is the demo before issue 21.
CANDIDATES: dict[str, tuple[str, list[str]]] = {
    "current": ("8k", []),
    "v4k-b1k": ("4k", SMALL_BATCH),
    "v4k-b1k-tied": ("4k", [*SMALL_BATCH, "model.tie_embeddings=true"]),
    "v4k-b1k-lr1e-2": ("4k", [*SMALL_BATCH, "train.lr=1e-2", "train.min_lr=1e-3"]),
    "v4kc-b1k-lr1e-2": ("4k-chars", [*SMALL_BATCH, "train.lr=1e-2", "train.min_lr=1e-3"]),
    "v4kc-b1k": ("4k-chars", SMALL_BATCH),
}


def workspace(out: Path, tokenizer: str):
    """The demo's workspace up to `pack` with this tokenizer (corpus and pipeline are the same for all)."""
    from skyloom.demo.run import Demo

    vocab, sizes = TOKENIZERS[tokenizer]
    demo = Demo(out / f"ws_{tokenizer}", overrides=[*sizes, f"{SESSION}.model.vocab_size={vocab}"], log=print)
    demo.run(until="pack")
    return demo


def entropies(demo) -> dict[str, float]:
    """Each domain's unigram entropy under this workspace's tokenizer (as the demo's Table-6 panel computes it)."""
    from skyloom.eval.textdata import read_documents
    from skyloom.eval.unigram import domain_entropies
    from skyloom.tokenizer.loading import TextTokenizer

    tok = TextTokenizer.from_dir(demo.out / "data" / "tokenizer")
    held = {d: read_documents(demo.out / "corpus" / "heldout" / f"{d}.jsonl") for d in demo.manifest["domains"]}
    texts = demo._domain_texts(held)
    return {d: r["entropy"] for d, r in domain_entropies(lambda ts: [tok.encode(t) for t in ts], texts).items()}


def ngram_baselines(demo) -> dict[str, dict[str, float]]:
    """Per domain, under this tokenizer: the unigram entropy H1 of the domain's text, and the held-out loss of a
    count bigram model fitted on the domain's training text (interpolated with add-one unigrams, λ = 0.7) — how
    much context structure there is to learn per token at this vocabulary and data size. Cached per workspace."""
    import math
    from collections import Counter

    from skyloom.eval.textdata import read_documents
    from skyloom.tokenizer.loading import TextTokenizer

    cache = demo.out / "ngram_baselines.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    tok = TextTokenizer.from_dir(demo.out / "data" / "tokenizer")
    out = {}
    for d in demo.manifest["domains"]:
        if d == "stem":
            continue
        train = [tok.encode(t) for t in read_documents(demo.out / "corpus" / "raw" / f"{d}.jsonl").texts or []]
        held = [tok.encode(t) for t in read_documents(demo.out / "corpus" / "heldout" / f"{d}.jsonl").texts or []]
        uni, pairs, ctx = Counter(), Counter(), Counter()
        for ids in train:
            uni.update(ids)
            pairs.update(zip(ids, ids[1:]))
            ctx.update(ids[:-1])
        n, vocab = sum(uni.values()), tok.vocab_size
        nll = count = 0
        for ids in held:
            for a, b in zip(ids, ids[1:]):
                pu = (uni[b] + 1) / (n + vocab)
                pb = pairs[(a, b)] / ctx[a] if ctx[a] else 0.0
                nll -= math.log(0.7 * pb + 0.3 * pu)
                count += 1
        out[d] = {"bigram_heldout_loss": nll / max(1, count), "train_tokens": n}
    cache.write_text(json.dumps(out, indent=1) + "\n")
    return out


def train(out: Path, name: str, tokenizer: str, overrides: list[str], tokens: int) -> dict:
    from skyloom.train.trainer import Trainer

    done = out / "runs" / name / "sweep_result.json"
    if done.is_file():
        return json.loads(done.read_text())
    from skyloom.demo.run import Demo

    workspace(out, tokenizer)
    vocab, sizes = TOKENIZERS[tokenizer]
    overrides = [*BEFORE, *overrides]
    probe = Demo(out / f"ws_{tokenizer}", overrides=[*RECIPE, *(f"{SESSION}.{o}" for o in overrides)], log=print)
    batch = int(probe.session_config(SESSION).train.global_batch_tokens)
    steps = tokens // batch
    run_dir = out / "runs" / name
    extra = [f"model.vocab_size={vocab}", *overrides, f"train.max_steps={steps}", f"validation.every={steps}"]
    extra += [f"checkpoint.every={steps}", f"out_dir={run_dir}", f"train.warmup_steps={max(10, steps // 16)}"]
    demo = Demo(out / f"ws_{tokenizer}", overrides=[*RECIPE, *sizes, *(f"{SESSION}.{o}" for o in extra)], log=print)
    cfg = demo.session_config(SESSION)
    load0, t0, c0 = os.getloadavg(), time.time(), time.process_time()
    trainer = Trainer(cfg, run_dir, resume=False, log=lambda s: None)
    trainer.fit()
    wall, cpu, load1 = time.time() - t0, time.process_time() - c0, os.getloadavg()
    val = {k: r["loss"] for k, r in (trainer.last_validation or {}).items()}
    result = {
        "name": name,
        "tokenizer": tokenizer,
        "vocab": vocab,
        "overrides": overrides[len(BEFORE) :],
        "steps": steps,
        "tokens": steps * batch,
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "validation": val,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "loadavg_start": [round(x, 2) for x in load0],
        "loadavg_end": [round(x, 2) for x in load1],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


def write_results(results: list[dict], baselines: dict[str, tuple[dict, dict]], path: Path) -> None:
    path.write_text(json.dumps({"candidates": results, "tokenizers": baselines}, indent=1) + "\n")
    domains = sorted({d for r in results for d in r["validation"]})
    lines = [
        "# Demo settings sweep (experiments/demo_sweep/run.py)",
        "",
        "Held-out validation loss after a fixed token budget, from scratch, next to each domain's unigram entropy "
        "(nats/token; loss − entropy < 0 means context is used). CPU seconds are this process's own; the load "
        "average shows how shared the 2 cores were (wall seconds depend on it, losses do not).",
        "",
        "| candidate | tokenizer | params | steps × tokens | "
        + " | ".join(f"{d} loss (H₁)" for d in domains)
        + " | CPU s | wall s | load avg |",
        "|---|---:|---:|---|" + "---:|" * (len(domains) + 3),
    ]
    for r in results:
        cells = [
            f"{r['validation'].get(d, float('nan')):.2f} ({r['unigram_entropy'].get(d, float('nan')):.2f})"
            for d in domains
        ]
        lines.append(
            f"| {r['name']} | {r['tokenizer']} | {r['params'] / 1e6:.2f}M | {r['steps']} × {r['tokens'] // r['steps']} | "
            + " | ".join(cells)
            + f" | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | {r['loadavg_start'][0]:.1f}–{r['loadavg_end'][0]:.1f} |"
        )
    lines += [
        "",
        "Per tokenizer: the unigram entropy H₁ of each domain and the held-out loss of a count bigram model fitted on "
        "the domain's training text — the context structure there is to learn per token:",
        "",
        "| tokenizer | " + " | ".join(f"{d} H₁ → bigram" for d in domains if d != "stem") + " |",
        "|---|" + "---:|" * len([d for d in domains if d != "stem"]),
    ]
    for name, (h1, bigram) in baselines.items():
        cells = [f"{h1[d]:.2f} → {bigram[d]:.2f}" for d in domains if d != "stem"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Overrides per candidate (on recipes/demo/stage1a.yaml with `{' '.join(BEFORE)}`):", ""]
    lines += [f"- {r['name']}: `{' '.join(r['overrides']) or '(none)'}`" for r in results]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo_sweep", help="workspaces and run directories")
    parser.add_argument("--results", default=str(HERE / "results.json"))
    parser.add_argument("--tokens", type=int, default=409_600, help="training tokens per candidate")
    parser.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.chdir(REPO)
    sys.path.insert(0, str(REPO / "src"))
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    results, ent = [], {}
    for name, (tokenizer, overrides) in CANDIDATES.items():
        if args.only is None or name in args.only:
            r = train(out, name, tokenizer, overrides, args.tokens)
            if tokenizer not in ent:
                ent[tokenizer] = entropies(workspace(out, tokenizer))
            r["unigram_entropy"] = ent[tokenizer]
            r["below_unigram"] = {d: ent[tokenizer][d] - v for d, v in r["validation"].items() if d in ent[tokenizer]}
            print(json.dumps({k: r[k] for k in ("name", "validation", "unigram_entropy", "cpu_s", "wall_s")}))
            results.append(r)
    baselines = {}  # every tokenizer: (unigram entropy, count-bigram held-out loss) per domain
    for tokenizer in TOKENIZERS:
        demo = workspace(out, tokenizer)
        bigram = {d: v["bigram_heldout_loss"] for d, v in ngram_baselines(demo).items()}
        baselines[tokenizer] = (ent.get(tokenizer) or entropies(demo), bigram)
    write_results(results, baselines, Path(args.results))


if __name__ == "__main__":
    main()
