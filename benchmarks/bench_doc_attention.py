"""Packed-document attention: today's dense [B,1,T,T] mask vs `DocumentMask` (model/doc_attention.py), on CPU.

One attention call, forward + backward, on packed rows of documents (lengths drawn uniformly from
[--doc-min, --doc-max], seeded; the row's tail is padding, its own document), for each T. Paths:

* `dense`: `sft.packing.block_causal_mask` (what packed SFT built until now) + SDPA with that mask;
* `doc`: `DocumentMask(doc_ids)` → `document_attention` (on CPU: the fused flash kernel once per document), the
  document spans found inside the timed call;
* `bucketed`: the generic fallback (`segment_attention`: documents gathered into bucketed windows, batched causal
  SDPA; what runs with attention dropout or on other devices);
* `causal`: plain causal SDPA over the whole row (no documents), for reference: the fused kernel's cost for the
  same T, which document masking can undercut because it skips the cross-document blocks.

Peak memory: torch's own allocations during the call (forward, backward, the mask or plan it builds, kernel
workspaces; the gradients it leaves), from the profiler's allocation events: the peak of their running sum.
Deterministic, so one call per path and T. Time: the paths alternate call by call in one process (a shared machine
slows all alike); medians of wall and process CPU time. Results go to benchmarks/results/doc_attention.txt.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_doc_attention.py              # ~2 min
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

PATHS = ("dense", "doc", "bucketed", "causal")
RESULTS = Path(__file__).parent / "results" / "doc_attention.txt"


def packed_doc_ids(batch: int, t: int, lo: int, hi: int, seed: int):
    import torch

    rng = random.Random(seed)
    rows = []
    for _ in range(batch):
        row, doc = [], 0
        while True:
            n = rng.randint(lo, hi)
            if len(row) + n > t:
                break
            row += [doc] * n
            doc += 1
        rows.append(row + [-1] * (t - len(row)))
    return torch.tensor(rows)


def attention_step(path: str, q, k, v, doc_ids) -> None:
    """Forward + backward of one attention call by `path`, building whatever the path needs from doc_ids."""
    import torch.nn.functional as F

    from skyloom.model.doc_attention import DocumentMask, document_attention, segment_attention
    from skyloom.sft.packing import block_causal_mask

    if path == "dense":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(doc_ids))
    elif path == "doc":
        out = document_attention(q, k, v, DocumentMask(doc_ids))
    elif path == "bucketed":
        out = segment_attention(q, k, v, DocumentMask(doc_ids))
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.sum().backward()


def qkv(args, t: int):
    import torch

    g = torch.Generator().manual_seed(t)
    shape = (args.batch, t, args.heads, args.head_dim)  # [B, T, H, D] seen as [B, H, T, D], as the model's q/k/v
    leaves = [torch.randn(shape, generator=g, requires_grad=True) for _ in range(3)]
    return leaves, [x.transpose(1, 2) for x in leaves]


def peak_mib(path: str, q, k, v, doc_ids) -> float:
    """Peak of torch's live allocations (MiB) during one forward + backward, from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        attention_step(path, q, k, v, doc_ids)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--doc-min", type=int, default=32)
    ap.add_argument("--doc-max", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5, help="timed calls per path and T (after one warm-up)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    lines = [
        f"# {' '.join(['OMP_NUM_THREADS=' + os.environ.get('OMP_NUM_THREADS', '1'), '.venv/bin/python'] + sys.argv)}",
        f"# torch {torch.__version__}, {torch.get_num_threads()} thread(s); load before: {os.getloadavg()}",
        f"# batch {args.batch} × {args.heads} heads × head_dim {args.head_dim}, fp32, forward+backward of one "
        f"attention call; documents {args.doc_min}-{args.doc_max} tokens packed per row, tail = padding",
        "",
        "| T | docs/row | path | peak extra memory (MiB) | wall (ms, median) | CPU (ms, median) | dense/doc wall |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for t in args.seq_lens:
        doc_ids = packed_doc_ids(args.batch, t, args.doc_min, args.doc_max, args.seed)
        docs = (doc_ids.max(1).values + 1).float().mean().item()
        leaves, (q, k, v) = qkv(args, t)
        memory = {}
        for path in PATHS:
            for x in leaves:
                x.grad = None
            memory[path] = peak_mib(path, q, k, v, doc_ids)
        wall = {p: [] for p in PATHS}
        cpu = {p: [] for p in PATHS}
        for rep in range(args.reps + 1):
            for path in PATHS:
                for x in leaves:
                    x.grad = None
                t0, c0 = time.perf_counter(), time.process_time()
                attention_step(path, q, k, v, doc_ids)
                if rep:
                    wall[path].append(time.perf_counter() - t0), cpu[path].append(time.process_time() - c0)
        med = {p: (statistics.median(wall[p]) * 1e3, statistics.median(cpu[p]) * 1e3) for p in PATHS}
        for path in PATHS:
            ratio = f"{med['dense'][0] / med['doc'][0]:.2f}×" if path == "doc" else ""
            lines.append(
                f"| {t} | {docs:.1f} | {path} | {memory[path]:.1f} | {med[path][0]:.1f} | {med[path][1]:.1f} | {ratio} |"
            )
        print(lines[-3], lines[-2], lines[-1], sep="\n", flush=True)
    lines.append(f"\n# load after: {os.getloadavg()}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
