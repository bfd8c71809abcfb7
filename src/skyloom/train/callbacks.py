"""Extension points of the training step, in the order they run.

A callback overrides any of these; the trainer calls every callback in list order. They are how features that
are not part of plain pretraining plug in without touching the loop — e.g. a MoE run adds its routers'
auxiliary loss (`extra_loss`), adapts the aux-loss coefficients before the optimizer step (`pre_optim_step`)
and logs router statistics (`post_step`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from skyloom.data.batch import Batch
    from skyloom.train.trainer import Trainer


class Callback:
    def on_train_start(self, trainer: "Trainer") -> None:
        """After set-up and resume, before the first step of this process."""

    def extra_loss(self, trainer: "Trainer", batch: "Batch") -> torch.Tensor | None:
        """A scalar added to the micro-batch's loss after its forward pass (the trainer divides it by the number
        of accumulation micro-batches, so it enters the step as a mean); None adds nothing."""
        return None

    def post_backward(self, trainer: "Trainer") -> None:
        """Gradients of the whole step are accumulated (and synchronised); nothing is clipped yet."""

    def pre_optim_step(self, trainer: "Trainer") -> None:
        """The step is finite and clipped; the optimizer is about to update the weights."""

    def post_step(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        """After the update (or the skip); add keys to `metrics` to have them logged with the step."""

    def on_checkpoint(self, trainer: "Trainer", path) -> None:
        """A checkpoint directory was completed (rank 0 only)."""


class InjectNonFinite(Callback):
    """Fault drill: turn the gradients non-finite at the given (1-based) steps to exercise step skipping."""

    def __init__(self, steps, value: float = float("nan")):
        self.steps = set(steps)
        self.value = value

    def post_backward(self, trainer: "Trainer") -> None:
        if trainer.step + 1 in self.steps:
            for p in trainer.raw_model.parameters():
                if p.grad is not None:
                    p.grad.fill_(self.value)
                    break
