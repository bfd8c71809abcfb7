"""GPU acceptance check (issue 16, item 9): a ~1B model trained on one GPU the way the reports' runs train.

bf16 (FSDP2's mixed-precision policy: bf16 parameters in compute, fp32 master weights and gradient reduction),
attention forced onto the FlashAttention kernel (`torch.nn.attention.sdpa_kernel(FLASH_ATTENTION)`: SDPA raises
instead of falling back; a profiled step must also show a flash kernel), every block `torch.compile`d and
`fully_shard`ed (FSDP2 over a one-GPU mesh, the trainer's layout code path), the project's model, init, loss,
optimizer and FLOP accounting. It prints tokens/s, MFU (6·N + 12·L·H·S FLOPs per token over the device's
dense bf16 peak, skyloom.model.accounting) and the peak memory (`torch.cuda.max_memory_allocated`) next to
the memory planner's prediction (skyloom.model.memory, when present).

NOT MEASURED YET: no GPU was lent to the session that wrote this script, so every GPU figure is still to be
taken; run it the day a GPU is at hand and record the printout. On CPU, `--dry-run` exercises the shared logic
(config and shape, the model built on `meta` against the accounting's parameter count, FLOPs per token, the
planner's prediction, and two steps of the same FSDP2 step loop on a tiny fp32 model over gloo); the GPU-only
parts (bf16, flash, compile timing, CUDA memory) are reported as skipped with the reason.

    .venv/bin/python benchmarks/gpu_check.py                       # one CUDA GPU, the ~1.2B shape below
    .venv/bin/python benchmarks/gpu_check.py --preset llama-7b --micro-batch 1 --activation-checkpointing
    .venv/bin/python benchmarks/gpu_check.py --dry-run --json out.json   # CPU: shared logic only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

# ~1.2B parameters (1.19e9: 0.93B in 18 blocks + 0.27B untied embeddings), the Skywork vocabulary.
SHAPE_1B: dict[str, Any] = dict(
    arch="llama", vocab_size=65536, dim=2048, ffn_dim=5632, n_heads=16, n_layers=18, max_seq_len=4096, norm_eps=1e-6
)
DRY_RUN_SHAPE: dict[str, Any] = dict(preset="tiny")  # the step loop on CPU: tiny, fp32, no compile


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", help="a model preset instead of the built-in ~1.2B shape (skyloom.model.presets)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model field, e.g. --model n_layers=24 (repeatable)",
    )
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=4, help="sequences per forward/backward")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--no-compile", action="store_true", help="eager blocks (compare against the compiled run)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device (default: from its name)")
    p.add_argument(
        "--gpu-mem", type=float, help="GPU memory as sold, in GB, for the planner's verdict (default: the device's own)"
    )
    p.add_argument("--dry-run", action="store_true", help="CPU: the shared logic only, GPU-only parts skipped")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    for name in ("seq_len", "micro_batch", "steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    if not args.dry_run and not torch.cuda.is_available():
        p.error(
            "no CUDA GPU here: this check needs one (GPU-only: bf16, flash attention, compile timing, CUDA "
            "memory); use --dry-run to exercise the shared logic on CPU"
        )
    return args


def _override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--model {text!r}: expected KEY=VALUE")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def model_config(args: argparse.Namespace, *, dry_run_steps: bool = False):
    """The ModelConfig to check: the preset (or the built-in ~1.2B shape) with the overrides, long enough for seq."""
    from skyloom.config import build
    from skyloom.model.config import ModelConfig

    data = dict(DRY_RUN_SHAPE) if dry_run_steps else ({"preset": args.preset} if args.preset else dict(SHAPE_1B))
    if not dry_run_steps:
        data.update(_override(o) for o in args.model)
    cfg = build(ModelConfig, data, "model")
    seq = 64 if dry_run_steps else args.seq_len
    if cfg.max_seq_len < seq:
        cfg = build(ModelConfig, {**data, "max_seq_len": seq}, "model")
    return cfg


def accounting(cfg, seq_len: int) -> dict[str, Any]:
    """Parameter count and FLOPs per token (the project's accounting), and the count of a model built on meta."""
    from skyloom.model.accounting import count_params, flops_per_token
    from skyloom.model.transformer import Transformer

    counts = count_params(cfg)
    with torch.device("meta"):
        built = sum(p.numel() for p in Transformer(cfg).parameters())
    return {
        "params": counts.total,
        "active_params": counts.active,
        "params_built_on_meta": built,
        "params_match": built == counts.total,
        "flops_per_token": flops_per_token(cfg, seq_len),
    }


def planner_prediction(cfg, args: argparse.Namespace, gpu_bytes: float | None) -> dict[str, Any]:
    """The memory planner's estimate for this run — one GPU, skyloom's bf16 (fp32 master weights, gradients and
    Adam state: the planner's `torch-amp` profile), flash attention — or why there is none."""
    try:
        from skyloom.model.memory import Layout, plan_memory
    except ImportError as err:
        return {"available": False, "note": f"planner unavailable ({err})"}
    try:
        layout = Layout(
            micro_batch_size=args.micro_batch,
            seq_len=args.seq_len,
            global_batch=args.micro_batch,
            activation_checkpointing=args.activation_checkpointing,
            flash_attention=True,
            precision="torch-amp",
        )
        peak = plan_memory(cfg, layout, gpu_bytes).peak
    except Exception as err:  # noqa: BLE001  another part's code: its failure must not hide the measurement
        return {"available": False, "note": f"planner unavailable ({type(err).__name__}: {err})"}
    terms = {
        name: getattr(peak, name) / 1e9
        for name in ("weights", "gradients", "optimizer", "fsdp_buffers", "activations", "logits", "runtime")
    }
    out = {
        "available": True,
        "predicted_gb": peak.total / 1e9,
        "terms_gb": terms,
        "note": "skyloom.model.memory, torch-amp profile",
    }
    if gpu_bytes:
        out["verdict"] = "fits" if peak.total <= gpu_bytes else "OOM"
    return out


def init_process_group(device: torch.device) -> None:
    """FSDP2 needs a process group, even over one device: torchrun's, or an in-process one of size 1."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def build_fsdp_model(
    cfg,
    device: torch.device,
    *,
    bf16: bool,
    compile: bool,
    activation_checkpointing: bool,
    seed: int = 0,
    fsdp: bool = True,
) -> torch.nn.Module:
    """The trainer's path: built on meta, blocks checkpointed/compiled, FSDP2 per block and on the root over a
    one-rank mesh (train/parallel/apply.py's FSDP branch), then this rank's shards materialised and initialised.
    `fsdp=False` leaves the sharding out (the dry run's single-process reference)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from skyloom.model.transformer import Transformer
    from skyloom.train.parallel.apply import blocks_of, enable_activation_checkpointing

    with torch.device("meta"):
        model = Transformer(cfg)
    if activation_checkpointing:
        enable_activation_checkpointing(model)
    if compile:
        for block in blocks_of(model):
            block.compile()
    if not fsdp:
        model.to_empty(device=device)
        torch.manual_seed(seed)
        model.init_weights()
        return model
    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("dp_shard",))
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    )
    for block in blocks_of(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    model.init_weights()
    return model


def build_optimizer(model: torch.nn.Module):
    from skyloom.config import build
    from skyloom.train.config import TrainConfig
    from skyloom.train.optim import build_optimizer as project_optimizer

    return project_optimizer(model, build(TrainConfig, {"lr": 3e-4, "max_steps": 1}, "train"))


def train_step(model, optimizer, tokens: torch.Tensor) -> torch.Tensor:
    """One optimizer step on [B, T+1] tokens: mean token loss, backward, clip at 1.0, AdamW; the loss, detached."""
    from skyloom.model.loss import token_loss

    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    loss = token_loss(model(inputs), labels) / labels.numel()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def flash_only():
    """Attention may only use the FlashAttention kernel: SDPA raises rather than silently falling back."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def flash_kernel_names(model, optimizer, tokens: torch.Tensor) -> list[str]:
    """Names of the profiled kernels/ops of one step that are FlashAttention's."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof, flash_only():
        train_step(model, optimizer, tokens)
        torch.cuda.synchronize()
    return sorted({e.key for e in prof.key_averages() if "flash" in e.key.lower()})


def run_steps(
    model,
    optimizer,
    vocab: int,
    args: argparse.Namespace,
    device: torch.device,
    *,
    seq_len: int,
    micro_batch: int,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """Warm-up steps, then timed ones on random tokens; per-step wall times and losses."""
    gen = torch.Generator(device="cpu").manual_seed(0)

    def batch() -> torch.Tensor:
        return torch.randint(0, vocab, (micro_batch, seq_len + 1), generator=gen).to(device, non_blocking=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    losses, times = [], []
    for i in range(warmup + steps):
        tokens = batch()
        sync()
        start = time.perf_counter()
        loss = train_step(model, optimizer, tokens)
        value = float(loss)  # the one host read of the step; also waits for the GPU
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(value)
    tokens_per_step = micro_batch * seq_len
    median = statistics.median(times)
    return {
        "losses": losses,
        "step_seconds": times,
        "median_step_seconds": median,
        "tokens_per_step": tokens_per_step,
        "tokens_per_second": tokens_per_step / median,
    }


def dry_run(args: argparse.Namespace) -> dict[str, Any]:
    """CPU: the real shape's config, meta build, FLOPs and planner; the step loop on a tiny fp32 model via FSDP2."""
    cfg = model_config(args)
    out: dict[str, Any] = {
        "mode": "dry-run (CPU)",
        "model": _shape(cfg),
        **accounting(cfg, args.seq_len),
        "planner": planner_prediction(cfg, args, _capacity(args.gpu_mem)),
    }
    device = torch.device("cpu")
    init_process_group(device)
    tiny = model_config(args, dry_run_steps=True)
    losses = {}
    for fsdp in (True, False):  # the FSDP2 step loop against the plain model: same seed, same batches
        model = build_fsdp_model(tiny, device, bf16=False, compile=False, activation_checkpointing=False, fsdp=fsdp)
        losses[fsdp] = run_steps(
            model, build_optimizer(model), tiny.vocab_size, args, device, seq_len=64, micro_batch=2, steps=3, warmup=0
        )["losses"]
    out["dry_run_steps"] = {
        "model": _shape(tiny),
        "losses": losses[True],
        "single_process_losses": losses[False],
        "finite": all(math.isfinite(x) for x in losses[True]),
        "max_abs_diff": max(abs(a - b) for a, b in zip(losses[True], losses[False])),
    }
    out["skipped"] = {
        "bf16, flash attention, torch.compile, tokens/s, MFU, CUDA peak memory": "GPU-only: no CUDA device in a dry run"
    }
    return out


def gpu_run(args: argparse.Namespace) -> dict[str, Any]:
    from skyloom.model.accounting import mfu, peak_flops_for_device

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(device)
    init_process_group(device)
    cfg = model_config(args)
    props = torch.cuda.get_device_properties(device)
    gpu_bytes = _capacity(args.gpu_mem) or float(props.total_memory)
    out: dict[str, Any] = {
        "mode": "GPU",
        "device": props.name,
        "gpu_mem_gb": gpu_bytes / 1e9,
        "model": _shape(cfg),
        **accounting(cfg, args.seq_len),
        "planner": planner_prediction(cfg, args, gpu_bytes),
        "torch": torch.__version__,
    }
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.cuda.reset_peak_memory_stats(device)
    model = build_fsdp_model(
        cfg, device, bf16=True, compile=not args.no_compile, activation_checkpointing=args.activation_checkpointing
    )
    optimizer = build_optimizer(model)
    with flash_only():  # any attention call that cannot use flash raises here
        run = run_steps(
            model,
            optimizer,
            cfg.vocab_size,
            args,
            device,
            seq_len=args.seq_len,
            micro_batch=args.micro_batch,
            steps=args.steps,
            warmup=args.warmup,
        )
    peak_bytes = torch.cuda.max_memory_allocated(device)
    gen = torch.Generator(device="cpu").manual_seed(1)
    probe = torch.randint(0, cfg.vocab_size, (args.micro_batch, args.seq_len + 1), generator=gen).to(device)
    flash = flash_kernel_names(model, optimizer, probe)
    if not flash:
        raise RuntimeError("no FlashAttention kernel in the profiled step: SDPA did not use the flash backend")
    peak_flops = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops_for_device(props.name)
    out.update(
        compile=not args.no_compile,
        activation_checkpointing=args.activation_checkpointing,
        seq_len=args.seq_len,
        micro_batch=args.micro_batch,
        flash_kernels=flash,
        **run,
        peak_memory_gb=peak_bytes / 1e9,
        peak_reserved_gb=torch.cuda.max_memory_reserved(device) / 1e9,
        peak_tflops=peak_flops / 1e12 if peak_flops else None,
        mfu=mfu(run["tokens_per_second"], out["flops_per_token"], peak_flops) if peak_flops else None,
    )
    return out


def _capacity(gpu_gb: float | None) -> float | None:
    """Bytes of a card sold as `gpu_gb` GB (the planner's convention: an "80 GB" card holds 80 GiB)."""
    if not gpu_gb:
        return None
    from skyloom.model.memory import gpu_capacity_bytes

    return gpu_capacity_bytes(gpu_gb)


def _shape(cfg) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in ("arch", "vocab_size", "dim", "ffn_dim", "n_heads", "n_layers")}


def report(out: dict[str, Any]) -> str:
    """The printout: what ran, the accounting, the measurements (or why they were skipped), the planner."""
    lines = [
        f"gpu_check — {out['mode']}" + (f" on {out['device']}" if "device" in out else ""),
        f"  model           {out['model']}",
        f"  parameters      {out['params']:,} (built on meta: {out['params_built_on_meta']:,}"
        f"{'' if out['params_match'] else '  MISMATCH'})",
        f"  FLOPs/token     {out['flops_per_token']:.4g}",
    ]
    if "tokens_per_second" in out:
        lines += [
            f"  flash kernels   {', '.join(out['flash_kernels'])}",
            f"  tokens/s        {out['tokens_per_second']:,.0f} (median of {len(out['step_seconds'])} steps, "
            f"{out['median_step_seconds'] * 1e3:.1f} ms; compile {'on' if out['compile'] else 'off'})",
            "  MFU             "
            + (
                f"{out['mfu']:.1%} of {out['peak_tflops']:g} TFLOP/s bf16"
                if out["mfu"] is not None
                else "unknown peak (pass --peak-tflops)"
            ),
            f"  peak memory     {out['peak_memory_gb']:.2f} GB allocated ({out['peak_reserved_gb']:.2f} reserved)",
            f"  losses          {', '.join(f'{x:.3f}' for x in out['losses'])}",
        ]
    if "dry_run_steps" in out:
        d = out["dry_run_steps"]
        lines.append(
            f"  step loop       FSDP2 over gloo, {d['model']['n_layers']}-layer tiny fp32 model: losses "
            f"{', '.join(f'{x:.4f}' for x in d['losses'])} (single process: max |Δ| {d['max_abs_diff']:.1e})"
        )
        lines += [f"  skipped         {what}: {why}" for what, why in out["skipped"].items()]
    plan = out["planner"]
    if plan["available"]:
        terms = ", ".join(f"{k} {v:.2f}" for k, v in plan["terms_gb"].items() if v)
        lines.append(
            f"  planner         {plan['predicted_gb']:.2f} GB predicted"
            + (f" ({plan['verdict']})" if "verdict" in plan else "")
            + f": {terms}"
        )
    else:
        lines.append(f"  planner         {plan['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from skyloom.config import ConfigError

    try:
        out = dry_run(args) if args.dry_run else gpu_run(args)
    except (ConfigError, ValueError) as err:
        print(f"skyloom: error: {err}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
