"""Extension points of the training loop, in the order they run, and the state a callback carries across resumes.

A callback overrides any of these; the trainer calls every callback in list order: the defaults for the run's
config first (speed/MFU/memory, the non-finite policy, validation, MoE — `standard_callbacks.default_callbacks`),
then those of the `callbacks:` section, then any passed to `Trainer`. Per step:
`pre_step` → forward/backward (`extra_loss` per micro-batch) → `post_backward` → clip → `pre_optim_step`
(finite steps) → `post_step` (add metrics) → the metrics line is written → `on_step_end` (may stop the run)
→ checkpoint.
`on_validation` receives every validation result; `state_dict`/`load_state_dict` (JSON-able) are saved in each
checkpoint's trainer_state.json and restored on `--resume`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from skyloom.config import ConfigError

if TYPE_CHECKING:
    from skyloom.data.batch import Batch
    from skyloom.train.trainer import Trainer


class Callback:
    state_key: str | None = None  # the key of its state in checkpoints (set to its name under `callbacks:`)
    # pipeline stages run no per-micro-batch hook: a callback whose `extra_loss` has a way through them says so
    extra_loss_under_pipeline: bool = False

    def on_train_start(self, trainer: Trainer) -> None:
        """After set-up and resume, before the first step of this process."""

    def pre_step(self, trainer: Trainer) -> None:
        """Before the step's batches are taken from the loader."""

    def extra_loss(self, trainer: Trainer, batch: Batch) -> torch.Tensor | None:
        """A scalar added to the micro-batch's loss after its forward pass (the trainer divides it by the number
        of accumulation micro-batches, so it enters the step as a mean); None adds nothing."""
        return None

    def post_backward(self, trainer: Trainer) -> None:
        """Gradients of the whole step are accumulated (and synchronised); nothing is clipped yet."""

    def pre_optim_step(self, trainer: Trainer) -> None:
        """The step is finite and clipped; the optimizer is about to update the weights. (On one process or DDP
        with the fused AdamW the clip's scaling is applied by the optimizer's kernel: the gradients read here are
        unscaled, and `trainer.optimizer.grad_scale` holds what they will be divided by, or None.)"""

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """After the update (or the skip); add keys to `metrics` to have them logged with the step."""

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """The step's metrics line is written; raise `TrainingAborted` to stop the run (no checkpoint follows)."""

    def on_validation(self, trainer: Trainer, results: dict[str, dict[str, Any]]) -> None:
        """A validation finished: {set name: {"loss", "ppl", "eval_tokens", …}} at `trainer.step`."""

    def on_train_end(self, trainer: Trainer) -> None:
        """The last step is done (not after an interruption); before the final checkpoint."""

    def on_checkpoint(self, trainer: Trainer, path) -> None:
        """A checkpoint directory was completed (rank 0 only)."""

    def state_dict(self) -> dict[str, Any]:
        """What must survive a resume (JSON-able); empty: nothing is saved."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, from the checkpoint a resume starts at."""


class InjectNonFinite(Callback):
    """Fault drill: turn the gradients non-finite at the given (1-based) steps to exercise step skipping."""

    def __init__(self, steps, value: float = float("nan")):
        self.steps = set(steps)
        self.value = value

    def post_backward(self, trainer: Trainer) -> None:
        if trainer.step + 1 in self.steps:
            for p in trainer.raw_model.parameters():
                if p.grad is not None:
                    p.grad.fill_(self.value)
                    break


def refuse_extra_losses_under_pipeline(callbacks: list[Callback], pp: int) -> None:
    """Under pipeline parallelism the schedule runs the micro-batches, so `extra_loss` is never called: a callback
    adding a loss would be silently ignored. Refused up front instead (MoE carries its own through the stages)."""
    if pp <= 1:
        return
    for cb in callbacks:
        if type(cb).extra_loss is not Callback.extra_loss and not cb.extra_loss_under_pipeline:
            raise ConfigError(
                "train.parallel.pp",
                f"callback {type(cb).__name__} adds a loss (extra_loss), which pipeline stages do not call; "
                "train it without pipeline parallelism (pp: 1)",
            )
