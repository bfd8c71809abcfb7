"""MoE layer forward+backward throughput vs a dense SwiGLU FFN with the same *active* parameters.

The peer: an MoE layer with n experts of width H and top-k routing runs k·3·D·H expert parameters per token, the
same as one dense SwiGLU of width k·H — the FFN a dense model of equal active size would have. Both get the same
[tokens, D] input and a backward pass; the ratio MoE/dense of tokens per second is the price of routing
(gate, sort/gather dispatch, per-expert matmuls on fewer rows, combine).

    .venv/bin/python benchmarks/bench_moe.py                 # CPU, 2 threads (CI-like), the shapes below
    .venv/bin/python benchmarks/bench_moe.py --threads 16 --shapes small
    .venv/bin/python benchmarks/bench_moe.py --device cuda   # bf16 autocast; grouped_mm vs the expert loop

Prints one line per case: tokens/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from skyloom.model.moe import MoE, grouped_mm_supported
from skyloom.model.moe_config import MoEConfig
from skyloom.model.transformer import SwiGLU

SHAPES = {  # name: (dim, expert width, experts, top-k)
    "tiny": (128, 352, 8, 2),
    "small": (512, 1408, 8, 2),
    "small-16e": (512, 1408, 16, 2),
}


def _time(fn, warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / iters


def step_fn(layer: torch.nn.Module, x: torch.Tensor, autocast: bool):
    def run():
        layer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        y.float().square().mean().backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per forward (batch × sequence)")
    parser.add_argument("--shapes", nargs="+", default=["tiny", "small"], choices=list(SHAPES))
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast = device.type == "cuda"
    print(f"device {device}{' (bf16 autocast)' if autocast else ', fp32'}, {args.threads} threads, "
          f"{args.tokens} tokens per forward+backward")
    for name in args.shapes:
        dim, hidden, n, k = SHAPES[name]
        torch.manual_seed(0)
        x = torch.randn(args.tokens, dim, device=device, requires_grad=True)
        dense = SwiGLU(dim, k * hidden).to(device)
        t_dense = _time(step_fn(dense, x, autocast), 2, args.iters, device)
        print(f"{name}: D={dim} H={hidden} n={n} k={k}; dense SwiGLU width {k * hidden}: "
              f"{args.tokens / t_dense:,.0f} tok/s")
        impls = ["loop"] + (["grouped_mm"] if grouped_mm_supported(device, torch.bfloat16) and autocast else [])
        for dropless in (True, False):
            cfg = MoEConfig(n_experts=n, top_k=k, dropless=dropless, capacity_factor=1.25, gate_norm=True)
            layer = MoE(dim, hidden, cfg).to(device)
            for impl in impls:
                layer.expert_impl = impl
                t = _time(step_fn(layer, x, autocast), 2, args.iters, device)
                label = "dropless" if dropless else "capacity 1.25"
                print(f"  MoE {label:<13} {impl:<10} {args.tokens / t:>10,.0f} tok/s   "
                      f"MoE/dense = {t_dense / t:.2f}")


if __name__ == "__main__":
    main()
