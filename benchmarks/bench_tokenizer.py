"""Tokenizer benchmark (issue 4): the Chinese extension's compression, and encode throughput vs peers.

Three tokenizers of the same total size (65,536 by default) are built from the same training text, which is
kept apart from the evaluation text (no test set is trained on):

  skyloom        base byte-fallback BPE (32,000, Han left out of the base) + 8,000 Chinese characters/symbols
                 + 25,519 jieba words + 17 reserved -- `skyloom tokenizer train` with its defaults
  plain-bpe      a plain byte-level BPE of the same total size, trained by `tokenizers` on the same text with the
                 same pre-tokenizer (digits split) and the same 17 specials, but without the extension
  mistral+zh     Mistral-7B's 32,000-piece SentencePiece vocabulary extended with the same rows
                 (`--extend`: the report's own procedure, every Mistral id kept)
and, for reference, Mistral-7B itself (32,000).

Training text: FewCLUE passages/abstracts/headlines/reviews, CMRC 2018 Wikipedia passages, the Alpaca-zh sample
(Chinese); WikiText-2 validation and GSM8K train (English). Evaluation text: the report authors' six Chinese
domain sets (skywork/zh_*.jsonl, Table 6) and WikiText-2 *test* (English).

Figures: characters/token on Chinese (target ≥ 1.3 and better than plain-bpe), bytes/token on English (at most 5%
worse than plain-bpe), round-trip failures, and encode throughput of `tokenizers` batch encoding on one core
(RAYON_NUM_THREADS=1; target ≥ 1 M characters/s), next to SentencePiece's own encoder for Mistral. Throughput is
timed in interleaved rounds (tokenizer by tokenizer, round after round, median taken) and reported both as wall
and as process CPU time, because the machine may be shared.

    .venv/bin/python benchmarks/bench_tokenizer.py                       # train (a few minutes), measure
    .venv/bin/python benchmarks/bench_tokenizer.py --work /tmp/tokbench  # keep / reuse the trained tokenizers
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before `tokenizers` starts its pool: per-core figures

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MISTRAL = DATA / "tokenizers" / "mistral-7b-v0.1.model"
ZH_EVAL = [DATA / "skywork" / f"zh_{d}.jsonl" for d in ("tech", "movie", "government", "game", "finance", "general")]
EN_EVAL = DATA / "wikitext2" / "test.txt"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"] + [f"<reserved_{i}>" for i in range(13)]


def _jsonl(path: Path, *fields: str) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            text = "\n".join(record[k] for k in fields if record.get(k))
            if text:
                out.append(text)
    return out


def training_texts() -> tuple[list[str], list[str]]:
    """(Chinese documents, English documents) for training; none of the evaluation files."""
    zh: list[str] = []
    fc = DATA / "fewclue_zh"
    zh += _jsonl(fc / "chid" / "unlabeled.json", "content") + _jsonl(fc / "chid" / "test_public.json", "content")
    zh += _jsonl(fc / "csl" / "test_public.json", "abst")
    for name in ("train_few_all", "dev_few_all", "test_public"):
        zh += _jsonl(fc / "csldcp" / f"{name}.json", "content")
    zh += _jsonl(fc / "tnews" / "unlabeled.json", "sentence") + _jsonl(fc / "eprstmt" / "unlabeled.json", "sentence")
    for name in ("cmrc2018_dev", "cmrc2018_trial"):
        data = json.loads((DATA / "cmrc2018" / "squad-style" / f"{name}.json").read_text(encoding="utf-8"))
        zh += [p["context"] for article in data["data"] for p in article["paragraphs"]]
    zh += _jsonl(DATA / "skywork" / "alpaca_data_zh_51k_sample_1k.jsonl", "instruction", "input", "output")
    wiki = (DATA / "wikitext2" / "valid.txt").read_text(encoding="utf-8")
    en = [a for a in wiki.split("\n = ") if a.strip()]
    en += _jsonl(DATA / "gsm8k" / "train.jsonl", "question", "answer")
    dedup = lambda docs: list(dict.fromkeys(docs))  # noqa: E731 - CSL repeats its abstracts
    return dedup(zh), dedup(en)


def eval_texts() -> dict[str, list[str]]:
    out = {p.stem: _jsonl(p, "text") for p in ZH_EVAL}
    out["wikitext2_test"] = EN_EVAL.read_text(encoding="utf-8").splitlines(keepends=True)  # paragraphs, all chars
    return out


def build_corpus(work: Path) -> Path:
    zh, en = training_texts()
    path = work / "train_corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for text in zh + en:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    print(
        f"training text: {len(zh):,} Chinese documents ({sum(map(len, zh)):,} chars), "
        f"{len(en):,} English documents ({sum(map(len, en)):,} chars)"
    )
    return path


def train_skyloom(corpus: Path, out: Path, total: int, extend: Path | None, workers: int) -> float:
    from skyloom.tokenizer.train import TrainSettings, train_tokenizer

    if (out / "tokenizer.json").is_file():
        print(f"reusing {out}")
        return float("nan")
    started = time.time()
    train_tokenizer(
        TrainSettings(
            inputs=[str(corpus)],
            out=str(out),
            total=total,
            workers=workers,
            extend=str(extend) if extend else None,
            progress=True,
        )
    )
    return time.time() - started


def train_plain(corpus: Path, out: Path, total: int) -> float:
    """Byte-level BPE of exactly `total` entries, same pre-tokenizer as skyloom's, no extension."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from skyloom.tokenizer.files import write_tokenizer_dir
    from skyloom.tokenizer.text import PRETOKENIZE_PATTERN

    if (out / "tokenizer.json").is_file():
        print(f"reusing {out}")
        return float("nan")
    started = time.time()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=total,
        min_frequency=2,
        special_tokens=SPECIALS,
        show_progress=True,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )

    def batches():
        batch = []
        with open(corpus, encoding="utf-8") as f:
            for line in f:
                batch.append(json.loads(line)["text"])
                if len(batch) == 1000:
                    yield batch
                    batch = []
        yield batch

    tok.train_from_iterator(batches(), trainer=trainer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != total:
        raise SystemExit(f"plain BPE reached only {size:,} of {total:,} entries on this text")
    write_tokenizer_dir(
        out,
        json.loads(tok.to_str()),
        {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"},
        SPECIALS[4:],
    )
    return time.time() - started


def compression(tokenizers: dict, texts: dict[str, list[str]]) -> dict:
    from skyloom.tokenizer.stats import measure

    out: dict = {}
    for name, tok in tokenizers.items():
        per = {label: measure(tok, docs, label) for label, docs in texts.items()}
        zh = [s for label, s in per.items() if label.startswith("zh_")]
        zh_chars, zh_tokens = sum(s.characters for s in zh), sum(s.tokens for s in zh)
        en = per["wikitext2_test"]
        out[name] = {
            "vocab_size": tok.vocab_size,
            "files": {
                label: {
                    "chars_per_token": round(s.chars_per_token, 4),
                    "bytes_per_token": round(s.bytes_per_token, 4),
                    "tokens": s.tokens,
                    "byte_fallback_share": round(s.byte_fallback_share, 5),
                    "roundtrip_failures": s.roundtrip_failures,
                }
                for label, s in per.items()
            },
            "zh_chars_per_token": round(zh_chars / zh_tokens, 4),
            "zh_tokens": zh_tokens,
            "zh_bytes_per_token": round(sum(s.bytes for s in zh) / zh_tokens, 4),
            "en_bytes_per_token": round(en.bytes_per_token, 4),
            "en_chars_per_token": round(en.chars_per_token, 4),
            "en_tokens_per_word": round(en.tokens_per_word or 0.0, 4),
            "en_tokens": en.tokens,
            "roundtrip_failures": sum(s.roundtrip_failures for s in per.values()),
        }
    return out


def throughput(tokenizers: dict, texts: list[str], rounds: int, warm_texts: list[str], batch_size: int = 1024) -> dict:
    """Median characters/s (wall and CPU) over `texts`, interleaved round by round: per tokenizer the raw-encode
    limit (`tokenizers`' bare batch encoding, `fast=False`) and skyloom's `encode_batch` -- its `FastEncoder`
    where it applies, once from an empty cache ("cold", every round) and once with the cache a packer has after
    reading `warm_texts` (other documents; "steady", reset to that state every round) -- and SentencePiece's
    own encoder on Mistral's model as the outside peer. Asserts the fast path's ids equal the bare ones."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL))
    chars = sum(map(len, texts))

    def batched(encode):
        def run():
            for i in range(0, len(texts), batch_size):
                encode(texts[i : i + batch_size])

        return run

    runners = {}
    for name, tok in tokenizers.items():
        runners[f"{name}: bare encode_batch (limit)"] = (batched(lambda b, t=tok: t.encode_batch(b, fast=False)), None)
        tok.encode_batch(texts[:1])
        fast = tok._fast or None
        if fast is None:
            continue
        assert tok.encode_batch(texts) == tok.encode_batch(texts, fast=False), name  # identical ids
        empty = dict(fast.single)
        for i in range(0, len(warm_texts), batch_size):
            tok.encode_batch(warm_texts[i : i + batch_size])
        steady = dict(fast.cache)
        runners[f"{name}: skyloom, cold cache"] = (
            batched(tok.encode_batch),
            lambda f=fast, c=empty: setattr(f, "cache", dict(c)),
        )
        runners[f"{name}: skyloom, steady cache"] = (
            batched(tok.encode_batch),
            lambda f=fast, c=steady: setattr(f, "cache", dict(c)),
        )
    runners["mistral (sentencepiece)"] = (batched(lambda b: sp.encode(b, num_threads=1)), None)
    sp.encode(texts[:64], num_threads=1)  # warm-up
    wall: dict[str, list[float]] = {n: [] for n in runners}
    cpu: dict[str, list[float]] = {n: [] for n in runners}
    for r in range(rounds):
        for name, (fn, reset) in runners.items():
            if reset:
                reset()
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
        print(f"  throughput round {r + 1}/{rounds} done", file=sys.stderr)
    return {
        name: {
            "chars": chars,
            "wall_chars_per_s": round(chars / statistics.median(wall[name])),
            "cpu_chars_per_s": round(chars / statistics.median(cpu[name])),
        }
        for name in runners
    }


def throughput_sample(texts: dict[str, list[str]], total: int) -> list[str]:
    """Chinese domain documents then WikiText paragraphs, half of `total` characters each."""
    zh_docs = [d for k, v in texts.items() if k.startswith("zh_") for d in v]
    sample, budget = [], total // 2
    for docs in (zh_docs, texts["wikitext2_test"]):
        used = 0
        for d in docs:
            if used >= budget:
                break
            sample.append(d[: budget - used])
            used += len(sample[-1])
    return sample


def warm_sample(corpus: Path, chars: int) -> list[str]:
    """The first `chars` characters of the training corpus, Chinese and English documents alternating."""
    from skyloom.tokenizer.text import HAN_RUN

    docs = [json.loads(line)["text"] for line in open(corpus, encoding="utf-8")]
    zh, en = [d for d in docs if HAN_RUN.search(d)], [d for d in docs if not HAN_RUN.search(d)]
    mixed = [d for pair in zip(zh, en) for d in pair]
    out, used = [], 0
    for d in mixed:
        if used >= chars:
            break
        out.append(d)
        used += len(d)
    return out


def print_speed(speed: dict) -> None:
    base = speed["mistral (sentencepiece)"]["cpu_chars_per_s"]
    limits = {name.split(":")[0]: t["cpu_chars_per_s"] for name, t in speed.items() if "(limit)" in name}
    for name, t in speed.items():
        limit = limits.get(name.split(":")[0])
        print(
            f"  {name:<40} {t['cpu_chars_per_s'] / 1e6:6.2f} M chars/s CPU  {t['wall_chars_per_s'] / 1e6:6.2f} M chars/s wall"
            f"  ×{t['cpu_chars_per_s'] / base:.2f} vs sentencepiece"
            + (f"  ×{t['cpu_chars_per_s'] / limit:.2f} of the bare limit" if limit else "")
        )


def speed_only(args, work: Path, corpus: Path) -> int:
    import subprocess

    from skyloom.tokenizer import TextTokenizer

    tokenizers = {
        name: TextTokenizer.from_dir(work / d)
        for name, d in (("skyloom", "skyloom"), ("mistral+zh", "mistral-zh"))
        if (work / d / "tokenizer.json").is_file()
    }
    sample = throughput_sample(eval_texts(), args.throughput_chars)
    speed = throughput(tokenizers, sample, args.rounds, warm_sample(corpus, args.warm_chars))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(
        f"\nencode throughput, 1 thread, {sum(map(len, sample)):,} chars (half Chinese, half English), "
        f"median of {args.rounds} interleaved rounds; load: {load}"
    )
    print_speed(speed)
    if args.json:
        args.json.write_text(json.dumps({"throughput": speed, "load": load}, indent=1) + "\n")
    results = ROOT / "benchmarks" / "results" / "tokenizer_speed.txt"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_speed(speed)
    results.write_text(
        f"# command: RAYON_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tokenizer.py {' '.join(sys.argv[1:])}\n"
        f"# {sum(map(len, sample)):,} chars (half Chinese domain text, half WikiText-2 test), one thread, median of "
        f"{args.rounds} interleaved rounds; 'steady' = cache after {args.warm_chars:,} chars of training text\n"
        f"# load: {load}\n" + buffer.getvalue(),
        encoding="utf-8",
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=None, help="directory for the corpus and tokenizers (reused)")
    ap.add_argument("--total", type=int, default=65536)
    ap.add_argument("--workers", type=int, default=2, help="jieba segmentation processes")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    ap.add_argument("--throughput-chars", type=int, default=2_000_000, help="characters timed per round")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--speed-only",
        action="store_true",
        help="only the encode throughput of the tokenizers already in --work (skyloom/, mistral-zh/)",
    )
    ap.add_argument("--warm-chars", type=int, default=10_000_000, help="training text read before 'steady'")
    args = ap.parse_args()

    from skyloom.tokenizer import TextTokenizer
    from skyloom.tokenizer.stats import load_tokenizer

    work = args.work or Path(tempfile.mkdtemp(prefix="skyloom-bench-tokenizer-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "train_corpus.jsonl"
    if not corpus.is_file():
        corpus = build_corpus(work)
    if args.speed_only:
        return speed_only(args, work, corpus)
    seconds = {
        "skyloom": train_skyloom(corpus, work / "skyloom", args.total, None, args.workers),
        "plain-bpe": train_plain(corpus, work / "plain-bpe", args.total),
        "mistral+zh": train_skyloom(corpus, work / "mistral-zh", args.total, MISTRAL, args.workers),
    }
    tokenizers = {
        name: TextTokenizer.from_dir(work / d)
        for name, d in (("skyloom", "skyloom"), ("plain-bpe", "plain-bpe"), ("mistral+zh", "mistral-zh"))
    }
    tokenizers["mistral"] = load_tokenizer(MISTRAL)
    for name, tok in tokenizers.items():
        assert name == "mistral" or tok.vocab_size == args.total, (name, tok.vocab_size)

    texts = eval_texts()
    print("measuring compression and round trips ...", file=sys.stderr)
    comp = compression(tokenizers, texts)

    sample = throughput_sample(texts, args.throughput_chars)
    print("timing encode throughput (1 thread) ...", file=sys.stderr)
    speed = throughput(tokenizers, sample, args.rounds, warm_sample(corpus, args.warm_chars))

    print(
        f"\nvocabulary {args.total:,}; training seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if v == v)
    )
    header = (
        f"{'tokenizer':<14} {'vocab':>7} {'zh chars/tok':>12} {'zh bytes/tok':>12} {'en bytes/tok':>12} "
        f"{'en chars/tok':>12} {'en tok/word':>11} {'rt-fail':>7}"
    )
    print(header)
    for name, c in comp.items():
        print(
            f"{name:<14} {c['vocab_size']:>7,} {c['zh_chars_per_token']:>12.3f} {c['zh_bytes_per_token']:>12.3f} "
            f"{c['en_bytes_per_token']:>12.3f} {c['en_chars_per_token']:>12.3f} {c['en_tokens_per_word']:>11.3f} "
            f"{c['roundtrip_failures']:>7}"
        )
    print("\nChinese characters/token per domain set:")
    labels = list(texts)
    print(
        f"{'tokenizer':<14} "
        + " ".join(f"{label.replace('zh_', ''):>10}" for label in labels if label.startswith("zh_"))
    )
    for name, c in comp.items():
        print(
            f"{name:<14} "
            + " ".join(f"{c['files'][label]['chars_per_token']:>10.3f}" for label in labels if label.startswith("zh_"))
        )
    s, p = comp["skyloom"], comp["plain-bpe"]
    ratio_zh = s["zh_chars_per_token"] / p["zh_chars_per_token"]
    worse_en = p["en_bytes_per_token"] / s["en_bytes_per_token"] - 1
    print(
        f"\nskyloom vs plain-bpe: Chinese chars/token ×{ratio_zh:.3f} "
        f"({'≥' if s['zh_chars_per_token'] >= 1.3 else '<'} 1.3 target: {s['zh_chars_per_token']:.3f}); "
        f"English bytes/token {100 * (s['en_bytes_per_token'] / p['en_bytes_per_token'] - 1):+.1f}%, "
        f"{100 * (1 - s['en_tokens'] / p['en_tokens']):.1f}% fewer tokens (target: no more than 5% worse)"
    )
    print(
        f"\nencode throughput, 1 thread, {sum(map(len, sample)):,} chars (half Chinese, half English), "
        f"median of {args.rounds}:"
    )
    print_speed(speed)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "total": args.total,
                    "train_seconds": seconds,
                    "compression": comp,
                    "throughput": speed,
                    "ratio_zh_chars_per_token": ratio_zh,
                    "en_bytes_per_token_worse": worse_en,
                },
                indent=1,
                default=str,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
