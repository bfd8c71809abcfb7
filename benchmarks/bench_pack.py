"""Packing throughput: `skyloom data pack` vs the bare encoder it is built on.

The reference is the raw-encode limit of any packer built on `tokenizers`: reading the same JSON lines and
calling `tokenizers`' bare `encode_batch` on them, nothing written; "read+encode" is the same with skyloom's
`encode_batch` (its FastEncoder: same ids, from an empty cache each round), which is what packing calls. `skyloom data pack` adds planning, EOS, uint16/uint32 shards with document offsets,
sha256 per shard, metadata and the index. Both run with one encoder thread per process; pack also runs with
several worker processes (the speed-up is bounded by the cores the machine really has free). Runs alternate
(peer, pack, peer, pack …) and the median is taken, as wall time and as CPU time of this process and its
children, because the machine may be shared.

    .venv/bin/python benchmarks/bench_pack.py --tokenizer TOKENIZER_DIR        # default input: skywork zh_* + WikiText
    .venv/bin/python benchmarks/bench_pack.py --tokenizer tok/ --workers 1 4 --rounds 5 data/*.jsonl
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")

import argparse
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MISTRAL = DATA / "tokenizers" / "mistral-7b-v0.1.model"


def _cpu() -> float:
    self_, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + children.ru_utime + children.ru_stime


def default_inputs(work: Path) -> list[Path]:
    """The six Chinese domain sets plus WikiText-2 test as JSON lines (one paragraph per record)."""
    files = sorted((DATA / "skywork").glob("zh_*.jsonl"))
    wiki = work / "wikitext2_test.jsonl"
    with open(wiki, "w", encoding="utf-8") as f:
        for para in (DATA / "wikitext2" / "test.txt").read_text(encoding="utf-8").split("\n \n"):
            if para.strip():
                f.write(json.dumps({"text": para}, ensure_ascii=False) + "\n")
    return files + [wiki]


def peer(tok, files: list[Path], batch: int = 256, fast: bool = False) -> tuple[int, int]:
    """Read + encode_batch, nothing written: (documents, tokens + one EOS per document). `fast=False`: the bare
    `tokenizers` batch encoding (the raw-encode limit); `fast=True`: skyloom's `encode_batch` (its FastEncoder,
    from an empty cache), what `data pack` calls."""
    docs = tokens = 0
    for path in files:
        texts = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                texts.append(json.loads(line)["text"])
                if len(texts) == batch:
                    tokens += sum(len(ids) + 1 for ids in tok.encode_batch(texts, fast=fast))
                    docs += len(texts)
                    texts = []
        if texts:
            tokens += sum(len(ids) + 1 for ids in tok.encode_batch(texts, fast=fast))
            docs += len(texts)
    return docs, tokens


class _SentencePiece:
    """Mistral-7B's model in SentencePiece's own C++ encoder, one thread: the outside peer (another vocabulary,
    so compare characters per CPU-second, not tokens)."""

    def __init__(self):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor(model_file=str(MISTRAL))

    def encode_batch(self, texts, fast: bool = False):
        return self.sp.encode(texts, num_threads=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", type=Path, help="JSON-lines files with a 'text' field")
    ap.add_argument(
        "--tokenizer", type=Path, default=None, help="tokenizer directory (default: Mistral-7B's, converted)"
    )
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shard-bytes", type=int, default=1 << 20)
    args = ap.parse_args()

    from skyloom.data.pack import pack
    from skyloom.tokenizer import TextTokenizer

    work = Path(tempfile.mkdtemp(prefix="skyloom-bench-pack-"))
    try:
        tok_dir = args.tokenizer
        if tok_dir is None:
            from skyloom.cli import main as cli

            tok_dir = work / "tok"
            cli(["tokenizer", "convert", str(MISTRAL), str(tok_dir)])
        files = args.inputs or default_inputs(work)
        tok = TextTokenizer.from_dir(tok_dir)
        size = sum(p.stat().st_size for p in files)
        chars = sum(len(json.loads(line)["text"]) for p in files for line in open(p, encoding="utf-8"))
        names = ["bare encode (limit)", "read+encode", "sentencepiece peer"] + [f"pack x{w}" for w in args.workers]
        sp = _SentencePiece()
        times: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        counts = {}
        for r in range(args.rounds):
            for name, fast in (("bare encode (limit)", False), ("read+encode", True)):
                fresh = TextTokenizer.from_dir(tok_dir)  # an empty FastEncoder cache, like a new pack worker
                w0, c0 = time.perf_counter(), _cpu()
                counts[name] = peer(fresh, files, fast=fast)
                times[name].append((time.perf_counter() - w0, _cpu() - c0))
            w0, c0 = time.perf_counter(), _cpu()
            sp_counts = peer(sp, files)
            times["sentencepiece peer"].append((time.perf_counter() - w0, _cpu() - c0))
            for w in args.workers:
                out = work / f"out{w}"
                shutil.rmtree(out, ignore_errors=True)
                w0, c0 = time.perf_counter(), _cpu()
                summary = pack(
                    [f"all={p}" for p in files], tok_dir, out, workers=w, shard_bytes=args.shard_bytes, progress=False
                )
                times[f"pack x{w}"].append((time.perf_counter() - w0, _cpu() - c0))
                counts[f"pack x{w}"] = (summary.sources["all"]["documents"], summary.sources["all"]["tokens"])
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
        assert len(set(counts.values())) == 1, counts  # every packer wrote exactly what the peer counted
        docs, tokens = counts["bare encode (limit)"]
        print(
            f"input: {len(files)} files, {size / 1e6:.1f} MB, {chars:,} characters, {docs:,} documents, "
            f"{tokens:,} tokens (EOS included); tokenizer {tok_dir} ({tok.vocab_size:,}); "
            f"{os.cpu_count()} CPUs visible; median of {args.rounds}; load: {os.getloadavg()}"
        )
        peer_wall = statistics.median(t[0] for t in times["bare encode (limit)"])
        peer_cpu = statistics.median(t[1] for t in times["bare encode (limit)"])
        for name, ts in times.items():
            wall, cpu = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
            if name == "sentencepiece peer":
                print(
                    f"  {name:<20} {chars / wall / 1e6:5.2f} M chars/s wall, {chars / cpu / 1e6:5.2f} M chars/CPU-s "
                    f"(Mistral-7B's 32,000 vocabulary, {sp_counts[1]:,} tokens);  CPU ×{peer_cpu / cpu:.2f} of the "
                    "bare-encode limit"
                )
                continue
            print(
                f"  {name:<20} {tokens / wall / 1e6:6.2f} M tokens/s wall ({chars / wall / 1e6:5.2f} M chars/s), "
                f"{tokens / cpu / 1e6:6.2f} M tokens/CPU-s ({chars / cpu / 1e6:5.2f} M chars/CPU-s);  "
                f"wall ×{peer_wall / wall:.2f}, CPU ×{peer_cpu / cpu:.2f} of the bare-encode limit"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
