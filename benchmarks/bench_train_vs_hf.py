"""Training throughput: skyloom's trainer step vs Hugging Face `LlamaForCausalLM`, same everything.

Both train the same shape (a skyloom preset, converted with `skyloom.model.hf.hf_config`), on the same batches
(skyloom's mixture loader over a random-token shard), with the same precision, micro-batching / gradient
accumulation, cross-entropy over every position, gradient clipping at 1.0 and AdamW (β 0.9/0.95, eps 1e-8,
weight decay 0.1 on matrices only). skyloom's side is the real `Trainer.train_step` (loader, loss, backward,
clip, schedule, optimizer, metrics); the peer is the equivalent hand-written loop around transformers' model
(attention through SDPA, as ours). Steps alternate one by one between the two so that a shared, noisy machine
affects both alike; throughput = tokens per step / median step time (wall clock, and process CPU time).

    .venv/bin/python benchmarks/bench_train_vs_hf.py                  # tiny and small presets, this CPU
    .venv/bin/python benchmarks/bench_train_vs_hf.py --presets small --precision bf16 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


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
        groups = [{k: v for k, v in g.items() if k not in ("names", "lr_scale")} for g in param_groups(self.model, 0.1)]
        self.opt = torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), eps=1e-8)
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


def bench(preset: str, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        from skyloom.config import build
        from skyloom.model.config import ModelConfig

        vocab = build(ModelConfig, {"preset": preset}).vocab_size
        data = make_source(Path(tmp) / "data", vocab, 4_000_000)
        trainer = skyloom_trainer(preset, data, Path(tmp) / "run", args)
        trainer.logger = type("Quiet", (), {"event": lambda *a, **k: None})()
        peer = HFStep(trainer, args)
        times = {"skyloom": [], "transformers": []}
        cpu = {"skyloom": [], "transformers": []}
        losses = {"skyloom": [], "transformers": []}
        tokens = args.global_batch_tokens
        for i in range(args.warmup + args.steps):
            order = ("skyloom", "transformers") if i % 2 == 0 else ("transformers", "skyloom")
            for name in order:  # one step each, alternating who goes first
                t0, c0 = time.perf_counter(), time.process_time()
                loss = trainer.train_step()["loss"] if name == "skyloom" else peer.step()[0]
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                if i >= args.warmup:
                    times[name].append(dt)
                    cpu[name].append(dc)
                losses[name].append(loss)
        out = {"preset": preset, "params": trainer.n_params}
        for name, ts in times.items():
            # medians: robust to the spikes of a machine shared with other work
            out[name] = tokens / statistics.median(ts)
            out[name + "_per_cpu_s"] = tokens / statistics.median(cpu[name])
            out[name + "_first_loss"] = losses[name][0]
            out[name + "_last_loss"] = losses[name][-1]
        out["ratio"] = out["skyloom"] / out["transformers"]
        out["cpu_ratio"] = out["skyloom_per_cpu_s"] / out["transformers_per_cpu_s"]
        if trainer.device.type == "cuda":
            from skyloom.model.accounting import peak_flops_for_device

            peak = peak_flops_for_device(torch.cuda.get_device_name(trainer.device))
            if peak:
                out["skyloom_mfu"] = out["skyloom"] * trainer.flops_per_token / peak
                out["transformers_mfu"] = out["transformers"] * trainer.flops_per_token / peak
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--global-batch-tokens", type=int, default=4096)
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, default=12, help="timed steps per side (alternating)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side at the start")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
        f"seq {args.seq_len}, {args.global_batch_tokens} tokens/step in micro-batches of {args.micro_batch}, "
        f"precision {args.precision}"
    )
    print("tok/s = wall-clock training throughput; tok/CPU-s = tokens per second of process CPU time (robust to a")
    print("machine shared with other work; with N threads it is about tok/s ÷ N when the cores are free)")
    print(
        f"{'preset':<8} {'params':>12} {'skyloom tok/s':>14} {'HF tok/s':>10} {'ratio':>7} "
        f"{'skyloom tok/CPU-s':>18} {'HF tok/CPU-s':>13} {'ratio':>7}  extra"
    )
    for preset in args.presets:
        r = bench(preset, args)
        extra = f"first loss {r['skyloom_first_loss']:.3f} / {r['transformers_first_loss']:.3f}"
        if "skyloom_mfu" in r:
            extra += f", MFU {r['skyloom_mfu']:.1%} / {r['transformers_mfu']:.1%}"
        print(
            f"{preset:<8} {r['params']:>12,} {r['skyloom']:>14,.0f} {r['transformers']:>10,.0f} "
            f"{r['ratio']:>7.3f} {r['skyloom_per_cpu_s']:>18,.0f} {r['transformers_per_cpu_s']:>13,.0f} "
            f"{r['cpu_ratio']:>7.3f}  {extra}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
