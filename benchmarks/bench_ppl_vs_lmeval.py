"""Perplexity-evaluation throughput: `skyloom eval ppl` vs EleutherAI lm-evaluation-harness, same model, same texts.

One skyloom model (a preset, randomly initialised — throughput does not depend on the weights' values) is
saved as a skyloom checkpoint and exported with `skyloom.model.hf.export_hf` as a Hugging Face
LlamaForCausalLM directory with the same tokenizer. Then, on the same documents (the authors' six Chinese
domain sets, the first --docs of each):

  skyloom   `score_documents(load_lm(checkpoint), docs, WindowConvention("rolling", L, prefix="bos"))` — the
            rolling convention of `eval ppl`, which reproduces lm-eval's: BOS before each document, disjoint
            windows of L inputs, every text token predicted once
  lm-eval   `HFLM(pretrained=hf_dir).loglikelihood_rolling(requests)` — the harness's own code path for
            wikitext-style perplexity tasks, on the exported directory

Normalisation: both give the summed log-likelihood (nats) of each whole document; the script checks the
per-document sums agree, and reports the corpus loss = Σ NLL / Σ predicted tokens (same token count on both
sides: every token of every document) and bits per byte = Σ NLL / (ln 2 · UTF-8 bytes). Throughput = predicted
tokens per second of wall time for the whole call (tokenisation included on both sides); the systems alternate in
rounds so a shared, noisy machine affects all alike, and CPU time is reported too.

The limit: `bare` is skyloom's model forward alone (`model(ids)`, full logits) over the very batches skyloom's
scoring forms (same windows, same padded shapes), prepared before the clock starts: no tokenisation, no windows,
no loss, no bookkeeping. "fraction of bare" = bare time / skyloom time (1.0: scoring costs no more than the forward).

The log-likelihood (multiple-choice) path is measured the same way: per document a context (its first
--mc-context characters) and four continuations (the next --mc-continuation characters of it and of the three
following documents), split into tokens as skyloom's benchmarks split them (`split_pair`, lm-eval's rule), scored
by `LanguageModel.loglikelihood` vs `HFLM.loglikelihood` vs the bare forward over the same unique inputs and batches.

    .venv/bin/pip install 'skyloom[bench]'     # lm-eval
    .venv/bin/python benchmarks/bench_ppl_vs_lmeval.py                       # tiny preset, CPU
    .venv/bin/python benchmarks/bench_ppl_vs_lmeval.py --preset small --docs 40 --device cuda --dtype bfloat16
    .venv/bin/python benchmarks/bench_ppl_vs_lmeval.py --out benchmarks/results/ppl_vs_lmeval.txt  # table + command
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

DOMAINS = ["zh_tech", "zh_movie", "zh_government", "zh_game", "zh_finance", "zh_general"]


def build_tokenizer(out: Path, data: Path, vocab: int) -> Path:
    """A byte-level BPE trained on GSM8K and the Chinese general-news set (offline, deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [
        json.loads(line)["question"] + " " + json.loads(line)["answer"]
        for line in open(data / "gsm8k" / "train.jsonl", encoding="utf-8")
    ]
    texts += [json.loads(line)["text"] for line in open(data / "skywork" / "zh_general.jsonl", encoding="utf-8")]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab,
            special_tokens=list(specials.values()),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **specials}), encoding="utf-8"
    )
    return out


def build_model(work: Path, tokenizer_dir: Path, preset: str, seq_len: int, seed: int) -> tuple[Path, Path]:
    from skyloom.config import build
    from skyloom.model.checkpoint import save_model
    from skyloom.model.config import ModelConfig
    from skyloom.model.hf import export_hf
    from skyloom.model.transformer import Transformer
    from skyloom.tokenizer import TextTokenizer

    tok = TextTokenizer.from_dir(tokenizer_dir)
    torch.manual_seed(seed)
    model = Transformer(build(ModelConfig, {"preset": preset, "vocab_size": tok.vocab_size, "max_seq_len": seq_len}))
    ckpt = save_model(model, work / "skyloom")
    tok.copy_files_to(ckpt)
    hf_dir = export_hf(model, work / "hf", source_dir=ckpt)
    return ckpt, hf_dir


def run_skyloom(lm, texts: list[str], seq_len: int):
    from skyloom.eval.perplexity import WindowConvention, score_documents
    from skyloom.eval.textdata import Documents

    scores = score_documents(
        lm, Documents(Path("bench"), texts=texts), WindowConvention("rolling", seq_len, None, "bos")
    )
    return [-float(x) for x in scores.nll], int(scores.tokens.sum())


def run_lmeval(hflm, texts: list[str]):
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="loglikelihood_rolling", doc={"text": t}, arguments=(t,), idx=i)
        for i, t in enumerate(texts)
    ]
    return [float(x) for x in hflm.loglikelihood_rolling(requests, disable_tqdm=True)]


def skyloom_batches(lm, sequences: list[list[int]]) -> list[torch.Tensor]:
    """The padded model inputs `LanguageModel.score` runs for these sequences (its batching, its padding)."""
    from skyloom.eval.lm import length_batches

    inputs = [len(s) - 1 for s in sequences]
    out = []
    for batch in length_batches(inputs, lm.batch_tokens, lm.max_batch_size):
        ids = torch.full((len(batch), inputs[batch[0]]), lm.pad_id, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : inputs[i]] = torch.as_tensor(sequences[i][:-1], dtype=torch.long)
        out.append(ids.to(lm.device))
    return out


def ppl_batches(lm, texts: list[str], seq_len: int) -> list[torch.Tensor]:
    from skyloom.eval.perplexity import rolling_windows

    windows = [w for ids in lm.encode_batch(texts) for w in rolling_windows(ids, seq_len, None, lm.bos_id)]
    return skyloom_batches(lm, [list(w.ids) for w in windows])


def mc_batches(lm, requests: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
    """`LanguageModel.loglikelihood`'s forward passes: one per unique model input (context + continuation[:-1])."""
    unique = dict.fromkeys(tuple((list(c) + list(x))[:-1][-lm.max_length :]) for c, x in requests)
    return skyloom_batches(lm, [[*u, 0] for u in unique])


def run_bare(model, batches: list[torch.Tensor], sync) -> None:
    with torch.inference_mode():
        for ids in batches:
            model(ids)
        sync()


def mc_texts(texts: list[str], context_chars: int, continuation_chars: int) -> list[tuple[str, list[str]]]:
    """Per document: (its first characters, four candidate continuations on a new line: its next characters and
    the three following documents'). The line break keeps the context's last token whole in context + continuation,
    so lm-eval's split and skyloom's agree."""
    n = len(texts)
    return [
        (
            texts[i][:context_chars].rstrip(),
            ["\n" + texts[(i + j) % n][context_chars : context_chars + continuation_chars].strip() for j in range(4)],
        )
        for i in range(n)
    ]


def run_skyloom_mc(lm, items: list[tuple[str, list[str]]]):
    """Tokenised as skyloom's multiple-choice benchmarks tokenise (multiple_choice.py), then scored."""
    from skyloom.eval.multiple_choice import split_pair

    context_ids = lm.encode_batch([c for c, _ in items])
    whole_ids = lm.encode_batch([c + x for c, xs in items for x in xs])
    requests = [
        (ids, split_pair(ids, whole_ids[4 * k + j], lambda x=x: lm.encode(x)))
        for k, ((_, xs), ids) in enumerate(zip(items, context_ids))
        for j, x in enumerate(xs)
    ]
    return lm.loglikelihood(requests), requests


def run_lmeval_mc(hflm, items: list[tuple[str, list[str]]]):
    from lm_eval.api.instance import Instance

    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=j)
        for c, xs in items
        for j, x in enumerate(xs)
    ]
    return [(float(ll), bool(g)) for ll, g in hflm.loglikelihood(requests, disable_tqdm=True)]


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def median_times(rows: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(w for w, _ in rows), statistics.median(c for _, c in rows)


def throughput_table(times: dict[str, list[tuple[float, float]]], units: float, unit: str) -> list[str]:
    """The markdown table and the ratios: skyloom vs lm-eval, and skyloom as a fraction of the bare forward."""
    lines = [f"| system | wall s (median) | {unit}/s (wall) | CPU s (median) | {unit}/CPU-s |", "|---|---|---|---|---|"]
    med = {name: median_times(rows) for name, rows in times.items()}
    for name, (wall, cpu) in med.items():
        lines.append(f"| {name} | {wall:.3f} | {units / wall:,.1f} | {cpu:.3f} | {units / cpu:,.1f} |")
    (sw, sc), (lw, lc), (bw, bc) = med["skyloom"], med["lm-eval"], med["bare forward"]
    lines.append(
        f"\nskyloom / lm-eval: {lw / sw:.2f}× (wall), {lc / sc:.2f}× per CPU-second; "
        f"skyloom as a fraction of the bare forward: {bw / sw:.3f} (wall), {bc / sc:.3f} per CPU-second; "
        f"lm-eval: {bw / lw:.3f} (wall), {bc / lc:.3f} per CPU-second"
    )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="skyloom model preset (random weights)")
    p.add_argument("--seq-len", type=int, default=1024, help="window length L (model max_seq_len)")
    p.add_argument("--docs", type=int, default=5, help="documents per domain set")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (both systems)")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per system")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--vocab", type=int, default=32000, help="BPE vocabulary of the benchmark tokenizer")
    p.add_argument("--tokenizer", help="use this tokenizer directory instead of training one")
    p.add_argument("--data", default=os.environ.get("SKYLOOM_SHARED_DATA", "../shared/data"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mc-context", type=int, default=300, help="characters of context per log-likelihood request")
    p.add_argument("--mc-continuation", type=int, default=12, help="characters per continuation (4 per context)")
    p.add_argument("--no-mc", action="store_true", help="skip the log-likelihood (multiple-choice) path")
    p.add_argument("--out", help="also write the report here (with the command and the machine load)")
    args = p.parse_args()

    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        print("lm-evaluation-harness is not installed: pip install 'skyloom[bench]'", file=sys.stderr)
        return 2
    from skyloom.eval.backends import load_lm

    data = Path(args.data)
    texts = []
    for name in DOMAINS:
        with open(data / "skywork" / f"{name}.jsonl", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(args.docs), f)]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    items = mc_texts(texts, args.mc_context, args.mc_continuation)
    load_before = os.getloadavg()

    with tempfile.TemporaryDirectory(prefix="bench-ppl-") as tmp:
        work = Path(tmp)
        tok_dir = Path(args.tokenizer) if args.tokenizer else build_tokenizer(work / "tokenizer", data, args.vocab)
        ckpt, hf_dir = build_model(work, tok_dir, args.preset, args.seq_len, args.seed)
        ours = load_lm(
            ckpt,
            device=args.device,
            dtype=args.dtype,
            batch_tokens=args.batch_size * args.seq_len,
            max_batch_size=args.batch_size,
            progress=False,
        )
        theirs = HFLM(
            pretrained=str(hf_dir),
            backend="causal",
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            max_length=args.seq_len,
            trust_remote_code=False,
        )
        sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
        bare_ppl = ppl_batches(ours, texts, args.seq_len)  # prepared untimed: the limit does no tokenisation
        _, mc_requests = run_skyloom_mc(ours, items[:2])
        # warm-up (allocator, kernels) on a few documents, untimed
        run_skyloom(ours, texts[:2], args.seq_len)
        run_lmeval(theirs, texts[:2])
        run_bare(ours.model, bare_ppl[-1:], sync)
        ppl_runs = {
            "skyloom": lambda: (run_skyloom(ours, texts, args.seq_len), sync())[0],
            "lm-eval": lambda: (run_lmeval(theirs, texts), sync())[0],
            "bare forward": lambda: run_bare(ours.model, bare_ppl, sync),
        }
        mc_runs = {}
        if not args.no_mc:
            _, mc_requests = run_skyloom_mc(ours, items)
            bare_mc = mc_batches(ours, mc_requests)
            mc_runs = {
                "skyloom": lambda: (run_skyloom_mc(ours, items)[0], sync())[0],
                "lm-eval": lambda: (run_lmeval_mc(theirs, items), sync())[0],
                "bare forward": lambda: run_bare(ours.model, bare_mc, sync),
            }
        times = {name: [] for name in ppl_runs}
        mc_times = {name: [] for name in mc_runs}
        outputs, mc_outputs = {}, {}
        for r in range(args.rounds):  # interleaved; the order flips every round
            for name in list(ppl_runs)[:: 1 if r % 2 == 0 else -1]:
                outputs[name], wall, cpu = timed(ppl_runs[name])
                times[name].append((wall, cpu))
            for name in list(mc_runs)[:: 1 if r % 2 == 0 else -1]:
                mc_outputs[name], wall, cpu = timed(mc_runs[name])
                mc_times[name].append((wall, cpu))
    load_after = os.getloadavg()

    report: list[str] = []
    say = report.append
    ll_ours, n_tokens = outputs["skyloom"]
    ll_theirs = outputs["lm-eval"]
    diffs = [abs(a - b) for a, b in zip(ll_ours, ll_theirs)]
    rel = max(d / abs(b) for d, b in zip(diffs, ll_theirs))
    expected_tokens = sum(len(ours.encode(t)) for t in texts)
    say(
        f"model: preset {args.preset} (random init), vocab {ours.model.config.vocab_size:,}, L = {args.seq_len}, "
        f"device {args.device}, dtype {args.dtype}, batch {args.batch_size} windows, "
        f"torch threads {torch.get_num_threads()}, {args.rounds} interleaved rounds"
    )
    say(
        f"machine load (1/5/15-min averages): {' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after; {os.cpu_count()} CPUs"
    )
    say(
        f"data: {len(texts)} documents ({args.docs} per domain × 6 Chinese domain sets), {n_tokens:,} predicted "
        f"tokens, {n_bytes:,} bytes; bare forward: {len(bare_ppl)} batches, "
        f"{sum(b.numel() for b in bare_ppl):,} input positions"
    )
    say(
        f"\n## perplexity (rolling windows)\nagreement: max |Δ log-likelihood| per document {max(diffs):.2e} nats "
        f"(max relative {rel:.2e}); token counts {n_tokens:,} vs {expected_tokens:,} (every token predicted)"
    )
    for name, ll in (("skyloom", ll_ours), ("lm-eval", ll_theirs)):
        nll = -sum(ll)
        say(
            f"  {name:8s} loss {nll / n_tokens:.6f} nats/token   ppl {math.exp(nll / n_tokens):.3f}   "
            f"bits/byte {nll / (math.log(2) * n_bytes):.6f}"
        )
    report += throughput_table(times, n_tokens, "tokens")
    ok = rel < (1e-4 if args.dtype == "float32" else 2e-2) and n_tokens == expected_tokens
    if mc_runs:
        a, b = mc_outputs["skyloom"], mc_outputs["lm-eval"]
        mc_diff = max(abs(x[0] - y[0]) for x, y in zip(a, b))
        same_greedy = sum(x[1] == y[1] for x, y in zip(a, b))
        same_choice = sum(
            max(range(4), key=lambda j: a[4 * k + j][0]) == max(range(4), key=lambda j: b[4 * k + j][0])
            for k in range(len(items))
        )
        say(
            f"\n## log-likelihood (multiple choice): {len(items)} contexts × 4 continuations = {len(a)} requests, "
            f"{sum(len(x) for _, x in mc_requests):,} continuation tokens; bare forward: {len(bare_mc)} batches, "
            f"{sum(x.numel() for x in bare_mc):,} input positions"
        )
        say(
            f"agreement: max |Δ log-likelihood| per request {mc_diff:.2e} nats; greedy flags equal {same_greedy}/{len(a)}; "
            f"chosen option equal {same_choice}/{len(items)}"
        )
        report += throughput_table(mc_times, len(a), "requests")
        ok = ok and mc_diff < (1e-3 if args.dtype == "float32" else 5e-2) and same_choice == len(items)
    say("\nresults agree" if ok else "\nRESULTS DISAGREE")
    print("\n".join(report))
    if args.out:
        command = " ".join(
            ["OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "(unset)"), ".venv/bin/python", *sys.argv]
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, lm-eval {lm_eval_version()}, torch {torch.__version__}\n"
            f"# command: {command}\n\n" + "\n".join(report) + "\n",
            encoding="utf-8",
        )
    return 0 if ok else 1


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


if __name__ == "__main__":
    raise SystemExit(main())
