"""The callbacks every run gets from its config: speed/MFU/memory, the non-finite policy, validation, MoE.

`default_callbacks(cfg, tokenizer)` is the one place that decides which a config switches on — the loop has
no `if` for any of them.
"""

from __future__ import annotations

import resource
import time
from typing import TYPE_CHECKING, Any

import torch

from skyloom.model.accounting import peak_flops_for_device
from skyloom.train.callbacks import Callback
from skyloom.train.checkpointer import TrainingAborted

if TYPE_CHECKING:
    from skyloom.train.config import RunConfig
    from skyloom.train.trainer import Trainer


class SpeedMonitor(Callback):
    """`tokens_per_sec`, `mfu` (against `train.peak_tflops` or the GPU's known peak; None when unknown, e.g. CPU)
    and `mem_gb` (peak GPU memory, or the process's peak resident set on CPU) on every metrics line."""

    def __init__(self, peak_tflops: float | None = None):
        self.peak_tflops = peak_tflops
        self._t0 = 0.0
        self._tokens0 = 0

    def pre_step(self, trainer: Trainer) -> None:
        self._t0, self._tokens0 = time.perf_counter(), trainer.tokens

    def _peak_flops(self, device: torch.device) -> float | None:
        if self.peak_tflops:
            return self.peak_tflops * 1e12
        return peak_flops_for_device(torch.cuda.get_device_name(device)) if device.type == "cuda" else None

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        device = trainer.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        tps = (trainer.tokens - self._tokens0) / (time.perf_counter() - self._t0)
        peak = self._peak_flops(device)
        metrics["tokens_per_sec"] = tps
        metrics["mfu"] = (tps * trainer.flops_per_token / (peak * trainer.env.world_size)) if peak else None
        metrics["mem_gb"] = memory_gb(device)


def memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # peak resident set (Linux: KiB)


class NonFiniteGuard(Callback):
    """The trainer skips the update of a step whose loss or gradient norm is not finite; this logs each skip
    (a `skipped_step` event) and stops the run after `max_bad_steps` in a row (an `abort` event, no checkpoint of
    the bad weights — the last good one is what `--resume` continues from)."""

    def __init__(self, max_bad_steps: int = 5):
        self.max_bad_steps = max_bad_steps

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if not metrics["skipped"]:
            return
        loss, grad = metrics["loss"], metrics["grad_norm"]
        trainer.logger.event(
            trainer.step,
            "skipped_step",
            reason="non-finite loss or gradient",
            loss=loss,
            grad_norm=grad,
            consecutive=trainer.bad_steps,
            skipped_total=trainer.skipped_steps,
        )
        trainer.log(
            f"step {trainer.step}: non-finite loss/gradient (loss {loss}, grad norm {grad}); "
            f"update skipped ({trainer.bad_steps} in a row, {trainer.skipped_steps} in total)"
        )

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if trainer.bad_steps < self.max_bad_steps:
            return
        trainer.logger.event(
            trainer.step, "abort", reason="consecutive non-finite steps", consecutive=trainer.bad_steps
        )
        raise TrainingAborted(
            f"{trainer.bad_steps} consecutive steps had a non-finite loss or gradient (last at step "
            f"{trainer.step}); stopping without writing a checkpoint. Lower the learning rate or inspect "
            f"the data near this step, then resume from the last good checkpoint with --resume "
            f"(train.max_bad_steps={self.max_bad_steps})"
        )


class Validation(Callback):
    """Held-out loss (`validation.sets`) at step 0 (`at_start`), every `validation.every` steps and at the end;
    each result goes to metrics.jsonl and to every callback's `on_validation` (`Trainer.record_validation`)."""

    def __init__(self, monitor, every: int, at_start: bool):
        self.monitor, self.every, self.at_start = monitor, every, at_start

    def evaluate(self, trainer: Trainer) -> dict[str, dict]:
        # windows are split over the ranks only under plain DDP: a sharded forward (FSDP, TP, EP) is collective, so
        # every rank evaluates every window in step (the ranks of one TP group must see the same tokens); under
        # pipeline parallelism every data-parallel slot runs every window through its stages (Pipeline.loss_sums)
        p = getattr(trainer, "parallel", None)
        pipeline = getattr(trainer, "pipeline", None)
        split = not trainer.fsdp and pipeline is None and (p is None or (p.tp == 1 and p.ep == 1))
        results = self.monitor.evaluate(
            trainer.raw_model if not trainer.fsdp else trainer.model,
            trainer.device,
            trainer.autocast_dtype,
            trainer.env.rank,
            trainer.env.world_size,
            split=split,
            loss_sums=pipeline.loss_sums if pipeline is not None else None,
        )
        trainer.record_validation(results)
        return results

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.step == 0 and self.at_start and trainer.step < trainer.total_steps:
            self.evaluate(trainer)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.every and trainer.step % self.every == 0 and trainer.step < trainer.total_steps:
            self.evaluate(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        self.evaluate(trainer)


def default_callbacks(cfg: RunConfig, tokenizer=None) -> list[Callback]:
    """What the config switches on by itself, in the order they run."""
    out: list[Callback] = [SpeedMonitor(cfg.train.peak_tflops), NonFiniteGuard(cfg.train.max_bad_steps)]
    if cfg.validation.sets:
        from skyloom.train.validation import ValidationMonitor

        monitor = ValidationMonitor(
            cfg.validation.sets, cfg.seq_len, tokenizer, cfg.validation.batch_size, vocab_size=cfg.model.vocab_size
        )
        out.append(Validation(monitor, cfg.validation.every, cfg.validation.at_start))
    if cfg.model.moe is not None:  # aux losses, adaptive coefficients, router metrics (train/moe.py)
        from skyloom.train.moe import MoECallback

        out.append(MoECallback(cfg.model.moe))
    return out
