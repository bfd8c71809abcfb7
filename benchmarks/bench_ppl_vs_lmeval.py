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
tokens per second of wall time for the whole call (tokenisation included on both sides); the two systems
alternate in rounds so a shared, noisy machine affects both alike, and CPU time is reported too.

    .venv/bin/pip install 'skyloom[bench]'     # lm-eval
    .venv/bin/python benchmarks/bench_ppl_vs_lmeval.py                       # tiny preset, CPU
    .venv/bin/python benchmarks/bench_ppl_vs_lmeval.py --preset small --docs 40 --device cuda --dtype bfloat16
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


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


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
        # warm-up (allocator, kernels) on a few documents, untimed
        run_skyloom(ours, texts[:2], args.seq_len)
        run_lmeval(theirs, texts[:2])
        times: dict[str, list[tuple[float, float]]] = {"skyloom": [], "lm-eval": []}
        for _ in range(args.rounds):
            (ll_ours, n_tokens), wall, cpu = timed(lambda: (run_skyloom(ours, texts, args.seq_len), sync())[0])
            times["skyloom"].append((wall, cpu))
            ll_theirs, wall, cpu = timed(lambda: (run_lmeval(theirs, texts), sync())[0])
            times["lm-eval"].append((wall, cpu))

    diffs = [abs(a - b) for a, b in zip(ll_ours, ll_theirs)]
    rel = max(d / abs(b) for d, b in zip(diffs, ll_theirs))
    expected_tokens = sum(len(ours.encode(t)) for t in texts)
    print(
        f"model: preset {args.preset} (random init), vocab {ours.model.config.vocab_size:,}, L = {args.seq_len}, device {args.device}, dtype {args.dtype}, "
        f"batch {args.batch_size} windows, torch threads {torch.get_num_threads()}"
    )
    print(
        f"data: {len(texts)} documents ({args.docs} per domain × 6 Chinese domain sets), {n_tokens:,} predicted "
        f"tokens, {n_bytes:,} bytes"
    )
    print(
        f"\nagreement: max |Δ log-likelihood| per document {max(diffs):.2e} nats (max relative {rel:.2e}); "
        f"token counts {n_tokens:,} vs {expected_tokens:,} (every token predicted)"
    )
    for name, ll in (("skyloom", ll_ours), ("lm-eval", ll_theirs)):
        nll = -sum(ll)
        print(
            f"  {name:8s} loss {nll / n_tokens:.6f} nats/token   ppl {math.exp(nll / n_tokens):.3f}   "
            f"bits/byte {nll / (math.log(2) * n_bytes):.6f}"
        )
    print("\n| system | wall s (median of rounds) | tokens/s (wall) | CPU s | tokens/CPU-s |")
    print("|---|---|---|---|---|")
    rates = {}
    for name, rows in times.items():
        wall = statistics.median(w for w, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        rates[name] = (n_tokens / wall, n_tokens / cpu)
        print(f"| {name} | {wall:.2f} | {n_tokens / wall:,.0f} | {cpu:.2f} | {n_tokens / cpu:,.0f} |")
    print(
        f"\nratio skyloom / lm-eval: {rates['skyloom'][0] / rates['lm-eval'][0]:.2f}× tokens/s (wall), "
        f"{rates['skyloom'][1] / rates['lm-eval'][1]:.2f}× per CPU-second"
    )
    ok = rel < (1e-4 if args.dtype == "float32" else 2e-2) and n_tokens == expected_tokens
    print("results agree" if ok else "RESULTS DISAGREE")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
