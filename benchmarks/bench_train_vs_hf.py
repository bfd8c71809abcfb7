"""Training throughput: skyloom's trainer step vs Hugging Face `LlamaForCausalLM`, same everything.

Both train the same shape (a skyloom preset, converted with `skyloom.model.hf.hf_config`), on the same batches
(skyloom's mixture loader over a random-token shard), with the same precision, micro-batching / gradient
accumulation, cross-entropy over every position, gradient clipping at 1.0 and AdamW (β 0.9/0.95, eps 1e-8,
weight decay 0.1 on matrices only). skyloom's side is the real `Trainer.train_step` (loader, loss, backward,
clip, schedule, optimizer, metrics); the peer is the equivalent hand-written loop around transformers' model
(attention through SDPA, as ours). Steps alternate one by one between the two so that a shared, noisy machine
affects both alike; throughput = tokens per step / median step time (wall clock, and process CPU time).
The peer's AdamW is the same kernel as ours (fused on CPU/CUDA), so the optimizer's implementation is not the
difference measured.

The limit: skyloom's model alone (same shape, same batches' shape, same precision), forward + backward with a plain
`F.cross_entropy` over the whole batch's logits, then the same AdamW step — no loader, metrics, clipping or schedule
— timed in the same rotation. Its forward+backward and its optimizer step are timed apart, so the table gives our
fraction (and the peer's) of both the bare forward+backward and the bare forward+backward+optimizer step.
Each side's share of CPU time spent in the OS kernel is printed too: on a CPU it is mostly the zeroing of fresh pages
the C allocator maps for large tensors, and it moves with the allocator's state from run to run.
With --compile every transformer block is torch.compile'd on all three sides (eager otherwise).

    .venv/bin/python benchmarks/bench_train_vs_hf.py                  # tiny, small and base-150m, this CPU
    .venv/bin/python benchmarks/bench_train_vs_hf.py --presets small --precision bf16 --device cuda
    .venv/bin/python benchmarks/bench_train_vs_hf.py --presets small --compile --out benchmarks/results/train_vs_hf_compiled.txt

Each preset runs at its own CPU-sized shape unless --seq-len / --global-batch-tokens / --steps say otherwise
(`PRESET_SHAPES`); the table, the command, the machine's load (`uptime`) and the versions go to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# (seq_len, global batch tokens, timed steps) per preset on the CPU; base-150m is smaller so a few steps fit
PRESET_SHAPES = {"tiny": (256, 4096, 12), "small": (256, 4096, 12), "base-150m": (128, 1024, 4)}
RESULTS = Path(__file__).parent / "results" / "train_vs_hf.txt"


def make_source(directory: Path, vocab: int, n_tokens: int) -> Path:
    from skyloom.data.shards import finalize_index, write_shard

    rng = np.random.default_rng(0)
    write_shard(directory, "000", [rng.integers(0, vocab, n_tokens)], vocab_size=vocab, source="random")
    finalize_index(directory)
    return directory


def skyloom_trainer(preset: str, data_dir: Path, run_dir: Path, args):
    from skyloom.config import build
    from skyloom.train.config import RunConfig
    from skyloom.train.trainer import Trainer

    cfg = build(
        RunConfig,
        {
            "model": {"preset": preset, "max_seq_len": args.seq_len},
            "data": {"seq_len": args.seq_len, "sources": {"random": {"path": str(data_dir)}}, "max_epochs": 1000},
            "train": {
                "global_batch_tokens": args.global_batch_tokens,
                "micro_batch_size": args.micro_batch,
                "max_steps": 10_000,
                "precision": args.precision,
                "device": args.device,
                "log_every": 10**9,
                "compile": args.compile,
            },
            "checkpoint": {"every": 0, "save_final": False},
        },
    )
    return Trainer(cfg, run_dir, log=lambda *_: None)


class HFStep:
    """The peer: transformers' LlamaForCausalLM trained with the same recipe, one global batch per call."""

    def __init__(self, trainer, args):
        import transformers

        from skyloom.model.hf import hf_config
        from skyloom.train.optim import param_groups

        cfg = trainer.cfg.model
        hf_cfg = transformers.LlamaConfig(
            **{
                k: v
                for k, v in hf_config(cfg).items()
                if k not in ("architectures", "model_type", "torch_dtype", "dtype")
            }
        )
        hf_cfg._attn_implementation = "sdpa"
        torch.manual_seed(0)
        self.model = transformers.LlamaForCausalLM(hf_cfg).to(trainer.device).train()
        if args.compile:  # as skyloom's `train.compile`: each decoder layer on its own
            for layer in self.model.model.layers:
                layer.compile()
        groups = [{k: v for k, v in g.items() if k not in ("names", "lr_scale")} for g in param_groups(self.model, 0.1)]
        fused = {"fused": True} if trainer.device.type in ("cpu", "cuda") else {}  # build_optimizer's kernel
        self.opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8, **fused)
        self.loader = trainer.loader
        self.device = trainer.device
        self.dtype = trainer.autocast_dtype

    def step(self) -> tuple[float, int]:
        batches = [b.to(self.device) for b in self.loader.next_batches()]
        n = sum(b.n_targets for b in batches)
        total = 0.0
        for b in batches:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.model(input_ids=b.input_ids, use_cache=False).logits
                loss = (
                    F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), b.labels.reshape(-1), reduction="sum")
                    / n
                )
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return total, n


class BareStep:
    """The limit: skyloom's model alone on fixed batches of the same shape — forward, plain cross-entropy over the
    whole batch's logits, backward, AdamW step; nothing else. Returns (forward+backward seconds, optimizer seconds)
    for wall clock and CPU time."""

    def __init__(self, trainer, args):
        from skyloom.model.transformer import Transformer
        from skyloom.train.optim import build_optimizer

        cfg = trainer.cfg
        torch.manual_seed(0)
        self.model = Transformer(cfg.model).to(trainer.device).train()
        if args.compile:
            for layer in self.model.layers:
                layer.compile()
        self.opt = build_optimizer(self.model, cfg.train)
        g = torch.Generator().manual_seed(1)
        windows = args.global_batch_tokens // args.seq_len
        ids = torch.randint(0, cfg.model.vocab_size, (windows, args.seq_len + 1), generator=g).to(trainer.device)
        self.batches = [(w[:, :-1], w[:, 1:]) for w in ids.split(args.micro_batch)]
        self.device = trainer.device
        self.dtype = trainer.autocast_dtype

    def step(self) -> tuple[float, tuple[float, float, float, float]]:
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(y.numel() for _, y in self.batches)
        total = 0.0
        for x, y in self.batches:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.model(x)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum") / n
            loss.backward()
            total += loss.detach()
        total = float(total)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t1, c1 = time.perf_counter(), time.process_time()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return total, (t1 - t0, c1 - c0, time.perf_counter() - t1, time.process_time() - c1)


def bench(preset: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        from skyloom.config import build
        from skyloom.model.config import ModelConfig

        vocab = build(ModelConfig, {"preset": preset}).vocab_size
        data = make_source(Path(tmp) / "data", vocab, 4_000_000)
        trainer = skyloom_trainer(preset, data, Path(tmp) / "run", args)
        trainer.logger = type("Quiet", (), {"event": lambda *a, **k: None})()
        peer = HFStep(trainer, args)
        bare = BareStep(trainer, args)
        sides = ("skyloom", "transformers", "bare")
        times = {name: [] for name in (*sides, "bare_fb")}
        cpu = {name: [] for name in times}
        kernel = {name: 0.0 for name in sides}  # system CPU time: mostly the kernel zeroing freshly mapped pages
        losses = {name: [] for name in sides}
        tokens = args.global_batch_tokens
        for i in range(args.warmup + args.steps):
            order = sides[i % 3 :] + sides[: i % 3]  # one step each, rotating who goes first
            for name in order:
                t0, c0, s0 = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
                if name == "bare":
                    loss, (fb_wall, fb_cpu, _, _) = bare.step()
                else:
                    loss = trainer.train_step()["loss"] if name == "skyloom" else peer.step()[0]
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if i >= args.warmup:
                    times[name].append(dt)
                    cpu[name].append(dc)
                    kernel[name] += resource.getrusage(resource.RUSAGE_SELF).ru_stime - s0
                    if name == "bare":
                        times["bare_fb"].append(fb_wall)
                        cpu["bare_fb"].append(fb_cpu)
                losses[name].append(loss)
        out = {"preset": preset, "params": trainer.n_params, "chunked_loss": trainer.chunked_loss}
        for name, ts in times.items():
            # medians: robust to the spikes of a machine shared with other work
            out[name] = tokens / statistics.median(ts)
            out[name + "_per_cpu_s"] = tokens / statistics.median(cpu[name])
        for name in sides:
            out[name + "_first_loss"] = losses[name][0]
            out[name + "_system_share"] = kernel[name] / sum(cpu[name])
        out["ratio"] = out["skyloom"] / out["transformers"]
        out["cpu_ratio"] = out["skyloom_per_cpu_s"] / out["transformers_per_cpu_s"]
        for name in ("skyloom", "transformers"):  # fractions of the limit, per CPU-second
            out[name + "_of_bare"] = out[name + "_per_cpu_s"] / out["bare_per_cpu_s"]
            out[name + "_of_bare_fb"] = out[name + "_per_cpu_s"] / out["bare_fb_per_cpu_s"]
        if trainer.device.type == "cuda":
            from skyloom.model.accounting import peak_flops_for_device

            peak = peak_flops_for_device(torch.cuda.get_device_name(trainer.device))
            if peak:
                out["skyloom_mfu"] = out["skyloom"] * trainer.flops_per_token / peak
                out["transformers_mfu"] = out["transformers"] * trainer.flops_per_token / peak
        return out


def preset_args(preset: str, args) -> argparse.Namespace:
    """args with this preset's seq_len / batch tokens / steps (PRESET_SHAPES) where the command left them unset."""
    seq_len, batch_tokens, steps = PRESET_SHAPES.get(preset, PRESET_SHAPES["small"])
    if args.device != "cpu" and not (args.device == "auto" and not torch.cuda.is_available()):
        seq_len, batch_tokens, steps = PRESET_SHAPES["small"]  # an accelerator takes the full shape
    resolved = argparse.Namespace(**vars(args))
    resolved.seq_len = args.seq_len or seq_len
    resolved.global_batch_tokens = args.global_batch_tokens or batch_tokens
    resolved.steps = args.steps or steps
    return resolved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "base-150m"])
    p.add_argument("--seq-len", type=int, default=None, help="default: PRESET_SHAPES")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--global-batch-tokens", type=int, default=None, help="default: PRESET_SHAPES")
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, default=None, help="timed steps per side, rotating (default: PRESET_SHAPES)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side at the start")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every transformer block, on all three sides (skyloom's train.compile; each of "
        "transformers' decoder layers; the limit's blocks); the warm-up steps absorb the compilation",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results file (table, command, load); '-' = none")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    command = "python benchmarks/bench_train_vs_hf.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    say(f"command: {command}")
    say(
        f"load before (uptime): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
        f"on {os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}"
    )
    say(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
        f"micro-batches of {args.micro_batch}, precision {args.precision}, warm-up {args.warmup} step(s) per side"
        + (", every block torch.compile'd on every side" if args.compile else ", eager")
    )
    say("tok/s = wall-clock training throughput; tok/CPU-s = tokens per second of process CPU time (robust to a")
    say("machine shared with other work). Limit = skyloom's model alone: bare fwd+bwd (+ AdamW), plain cross-entropy.")
    say("sky/HF = skyloom ÷ transformers; of limit = tok/CPU-s ÷ the bare fwd+bwd+AdamW's (÷ bare fwd+bwd's).")
    say("system CPU = each side's share of CPU time spent in the OS kernel (sky / HF / limit): on a CPU, mostly the")
    say(
        "zeroing of fresh pages that the C allocator maps for large tensors (a whole batch's float32 logits) each step."
    )
    say(
        f"{'preset':<10} {'params':>12} {'shape':>10} {'sky tok/s':>10} {'HF tok/s':>9} {'sky/HF':>7} "
        f"{'sky tok/CPU-s':>14} {'HF tok/CPU-s':>13} {'sky/HF':>7} {'limit tok/CPU-s':>16} "
        f"{'sky of limit':>13} {'HF of limit':>12}  extra"
    )
    for preset in args.presets:
        pa = preset_args(preset, args)
        r = bench(preset, pa)
        extra = (
            f"first loss {r['skyloom_first_loss']:.3f} / {r['transformers_first_loss']:.3f} / {r['bare_first_loss']:.3f}"
            f", {'chunked' if r['chunked_loss'] else 'plain'} loss, {pa.steps} steps, system CPU "
            f"{r['skyloom_system_share']:.1%} / {r['transformers_system_share']:.1%} / {r['bare_system_share']:.1%}"
        )
        if "skyloom_mfu" in r:
            extra += f", MFU {r['skyloom_mfu']:.1%} / {r['transformers_mfu']:.1%}"
        shape = f"{pa.global_batch_tokens // pa.seq_len}x{pa.seq_len}"
        say(
            f"{preset:<10} {r['params']:>12,} {shape:>10} {r['skyloom']:>10,.0f} {r['transformers']:>9,.0f} "
            f"{r['ratio']:>7.3f} {r['skyloom_per_cpu_s']:>14,.0f} {r['transformers_per_cpu_s']:>13,.0f} "
            f"{r['cpu_ratio']:>7.3f} {r['bare_per_cpu_s']:>7,.0f} ({r['bare_fb_per_cpu_s']:>6,.0f}) "
            f"{r['skyloom_of_bare']:>5.3f} ({r['skyloom_of_bare_fb']:.3f}) "
            f"{r['transformers_of_bare']:>5.3f} ({r['transformers_of_bare_fb']:.3f})  {extra}"
        )
    say(f"load after (uptime): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    if str(args.out) != "-":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
