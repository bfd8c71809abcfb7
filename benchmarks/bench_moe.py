"""MoE layer forward+backward throughput vs a dense SwiGLU FFN with the same *active* parameters.

The peer: an MoE layer with n experts of width H and top-k routing runs k·3·D·H expert parameters per token, the
same as one dense SwiGLU of width k·H — the FFN a dense model of equal active size would have. Both get the same
[tokens, D] input and a backward pass; the ratio MoE/dense of tokens per second is the price of routing
(gate, sort/gather dispatch, per-expert matmuls on fewer rows, combine).

    .venv/bin/python benchmarks/bench_moe.py                 # CPU, 2 threads (CI-like), the shapes below
    .venv/bin/python benchmarks/bench_moe.py --threads 16 --shapes small
    .venv/bin/python benchmarks/bench_moe.py --device cuda   # bf16 autocast; grouped_mm vs the expert loop

Prints a table per shape: tokens/s (wall and per CPU-second) of each case and the ratio to dense; the cases
alternate round by round so a busy, shared machine slows them alike.
"""

from __future__ import annotations

import argparse
import statistics
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


def _time(fn, iters: int, device: torch.device) -> tuple[float, float]:
    """Seconds per call: (wall, CPU time of this process)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters


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
    parser.add_argument("--iters", type=int, default=5, help="forward+backward calls per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the cases alternate within each round")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    autocast = device.type == "cuda"
    print(
        f"device {device}{' (bf16 autocast)' if autocast else ', fp32'}, {args.threads} threads, "
        f"{args.tokens} tokens per forward+backward; medians of {args.rounds} interleaved rounds × {args.iters} calls"
    )
    for name in args.shapes:
        dim, hidden, n, k = SHAPES[name]
        torch.manual_seed(0)
        x = torch.randn(args.tokens, dim, device=device, requires_grad=True)
        cases = {f"dense SwiGLU width {k * hidden}": step_fn(SwiGLU(dim, k * hidden).to(device), x, autocast)}
        impls = ["loop"] + (["grouped_mm"] if grouped_mm_supported(device, torch.bfloat16) and autocast else [])
        for dropless in (True, False):
            cfg = MoEConfig(n_experts=n, top_k=k, dropless=dropless, capacity_factor=1.25, gate_norm=True)
            layer = MoE(dim, hidden, cfg).to(device)
            for impl in impls:
                # one layer object per implementation, so the cases can alternate
                case_layer = layer if impl == impls[0] else MoE(dim, hidden, cfg).to(device)
                case_layer.load_state_dict(layer.state_dict())
                case_layer.expert_impl = impl
                label = "dropless" if dropless else "capacity 1.25"
                cases[f"MoE {label} {impl}"] = step_fn(case_layer, x, autocast)
        for fn in cases.values():  # warm-up
            fn()
        times: dict[str, list[tuple[float, float]]] = {c: [] for c in cases}
        for _ in range(args.rounds):
            for case, fn in cases.items():
                times[case].append(_time(fn, args.iters, device))
        print(f"\n{name}: D={dim} H={hidden} n={n} k={k} (equal active parameters: dense width k·H = {k * hidden})")
        print("| case | tokens/s (wall) | tokens/CPU-s | ratio to dense (wall) | ratio to dense (CPU) |")
        print("|---|---|---|---|---|")
        med = {c: (statistics.median(w for w, _ in t), statistics.median(p for _, p in t)) for c, t in times.items()}
        base = next(iter(med.values()))
        for case, (wall, cpu) in med.items():
            print(
                f"| {case} | {args.tokens / wall:,.0f} | {args.tokens / cpu:,.0f} | {base[0] / wall:.2f} | "
                f"{base[1] / cpu:.2f} |"
            )


if __name__ == "__main__":
    main()
