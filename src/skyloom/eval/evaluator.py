"""`Evaluator`: registered eval tasks run inside training, their scores logged as metrics.

    callbacks:
      evaluator: {tasks: ["ceval", "gsm8k-chat"], every: 500, at_validation: false, limit: 200}

Every `every` steps (and/or after each validation) the model being trained is scored on each task, exactly as
`skyloom eval bench` would score a saved checkpoint, and each score goes to
- the step's metrics line as `eval/<task>` (when run from `every`), and
- metrics.jsonl as a `{"kind": "bench", "step", "task", "score", "metric", "n"}` line — what
  `skyloom eval correlate` reads as a recorded score, so a run's loss–score curve needs no re-evaluation.
Every rank runs the tasks (a sharded model needs all of them for its forward pass); only rank 0 writes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from skyloom.train.callbacks import Callback

if TYPE_CHECKING:
    from skyloom.train.trainer import Trainer


class Evaluator(Callback):
    def __init__(
        self,
        tasks: Sequence[str],
        every: int = 0,
        at_validation: bool = False,
        metric: str = "acc",
        shots: int | None = None,
        limit: int | None = None,
        max_new_tokens: int = 256,
        format: str = "letter",
        split: str | None = None,
    ):  # noqa: A002 - the `eval bench` option's name
        from skyloom.eval.bench import parse_task

        if isinstance(tasks, str):
            tasks = [tasks]
        if not tasks:
            raise ValueError("tasks: name at least one task (NAME or NAME:PATH)")
        if every < 0:
            raise ValueError(f"every must be ≥ 0, got {every}")
        if not every and not at_validation:
            raise ValueError("never runs: set every (steps) and/or at_validation: true")
        self.specs = [parse_task(t) for t in tasks]  # unknown names / missing paths are refused here
        for spec in self.specs:  # refused at start-up, not at the first evaluation hours into training
            if getattr(spec.task, "executes_code", False):
                raise ValueError(
                    f"tasks: {spec.name!r} executes model-written code; run it after training with "
                    "`skyloom eval bench --allow-code-execution` instead of inside the trainer"
                )
        self.every, self.at_validation, self.metric = every, at_validation, metric
        self.options = {"shots": shots, "limit": limit, "max_new_tokens": max_new_tokens, "fmt": format, "split": split}
        self.last: dict[str, float] = {}
        self.last_step: int | None = None  # a step is scored once, even when it is also a validation step

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """Score every task on the model as it is now; {task: score}, also logged as `bench` lines."""
        if self.last_step == trainer.step:
            return self.last
        import torch

        from skyloom.eval.backends import SkyloomLM
        from skyloom.eval.bench import run_task

        model = trainer.raw_model
        was_training = model.training
        lm = SkyloomLM(model, trainer.tokenizer, name=f"step {trainer.step}", progress=False)
        scores: dict[str, float] = {}
        try:
            with torch.no_grad():
                for spec in self.specs:
                    t0 = time.time()
                    result, _ = run_task(lm, spec, **self.options)
                    overall = result["overall"]
                    if self.metric not in overall:
                        raise ValueError(f"task {spec.name}: no metric {self.metric!r} (has {', '.join(overall)})")
                    scores[spec.name] = float(overall[self.metric])
                    if trainer.logger is not None:
                        trainer.logger.write(
                            {
                                "kind": "bench",
                                "step": trainer.step,
                                "task": spec.name,
                                "score": scores[spec.name],
                                "metric": self.metric,
                                "n": overall["n"],
                                "seconds": round(time.time() - t0, 2),
                                "time": time.time(),
                            }
                        )
        finally:
            model.train(was_training)
        summary = "  ".join(f"{k} {100 * v:.1f}%" for k, v in scores.items())
        trainer.log(f"eval @ step {trainer.step}: {summary}")
        self.last, self.last_step = scores, trainer.step
        return scores

    def post_step(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.every and trainer.step % self.every == 0:
            metrics.update({f"eval/{k}": v for k, v in self.evaluate(trainer).items()})

    def on_validation(self, trainer: Trainer, results: dict[str, dict[str, Any]]) -> None:
        if self.at_validation:
            self.evaluate(trainer)
