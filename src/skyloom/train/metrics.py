"""Where a run's numbers go: `metrics.jsonl` (every step), the console, and TensorBoard / W&B when switched on.

metrics.jsonl lines: `{"kind": "train", …}` per step, `{"kind": "val", …}` per set and evaluation,
`{"kind": "event", "event": …}` for resumes, skipped steps, checkpoints. Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from skyloom.progress import draws_bar


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null (the event log says why)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def truncate_after(path: Path, step: int) -> int:
    """Drop train/val lines with a step after `step` (they are recomputed identically on resume); returns count."""
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1  # a line cut by the kill
            continue
        if record.get("kind") in ("train", "val") and record.get("step", 0) > step:
            dropped += 1
            continue
        keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep), encoding="utf-8")
    tmp.replace(path)
    return dropped


class MetricsLogger:
    """Fans each train line and validation result out to metrics.jsonl, the console and the trackers the config
    switches on (`train.tensorboard`, `train.wandb`: train/loggers.py); the trackers also get the resolved config
    (`hparams`) as hyper-parameters. Disabled (a no-op) on every rank but 0."""

    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        enabled: bool = True,
        tensorboard: bool = False,
        log_every: int = 10,
        initial_step: int = 0,
        wandb=None,
        hparams: dict[str, Any] | None = None,
        resume: bool = False,
    ):
        self.enabled = enabled
        self.total_steps = total_steps
        self.log_every = log_every
        self.file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if enabled else None
        self.trackers: list = []
        self.bar = None
        if enabled:
            from skyloom.train.loggers import TensorBoardLogger, WandbLogger

            try:
                if tensorboard:
                    sets = (hparams or {}).get("validation", {}).get("sets", {})
                    tags = ["train/loss", *(f"val/{name}/loss" for name in sets)]
                    first = initial_step + 1 if initial_step else 0  # the checkpoint's own step is kept
                    self.trackers.append(TensorBoardLogger(run_dir / "tensorboard", tags, first_step=first))
                if wandb is not None and wandb.mode != "disabled":
                    self.trackers.append(WandbLogger(run_dir, wandb, resume=resume))
                for tracker in self.trackers:
                    tracker.log_hparams(hparams or {})
            except BaseException:
                self.close()
                raise
        # a bar only on a terminal with a width (skyloom.progress's rule): logs, pipes and zero-width terminals
        # (where tqdm draws nothing) get the plain step lines below
        if enabled and draws_bar(sys.stderr):
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()

    def train(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.write({"kind": "train", **record, "time": time.time()})
        step = record["step"]
        for tracker in self.trackers:
            tracker.log_metrics(step, {f"train/{k}": v for k, v in record.items() if k != "step"})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{record['loss']:.4f}" if record["loss"] is not None else "nan",
                lr=f"{record['lr']:.2e}",
                tok_s=f"{record['tokens_per_sec']:.0f}",
            )
        elif step % self.log_every == 0 or step == self.total_steps:
            loss = record["loss"]
            self.console(
                f"step {step:>6}/{self.total_steps}  loss {loss:.4f}  lr {record['lr']:.2e}  "
                f"grad {record['grad_norm']:.3f}  {record['tokens_per_sec']:.0f} tok/s"
            )

    def val(self, step: int, tokens: int, results: dict[str, dict]) -> None:
        if not self.enabled:
            return
        for name, r in results.items():
            self.write({"kind": "val", "step": step, "tokens": tokens, "set": name, **r, "time": time.time()})
        values = {f"val/{name}/{k}": v for name, r in results.items() for k, v in r.items()}
        for tracker in self.trackers:
            tracker.log_metrics(step, values)
        summary = "  ".join(f"{n} {r['loss']:.4f} (ppl {r['ppl']:.1f})" for n, r in results.items())
        self.console(f"validation @ step {step}: {summary}")

    def event(self, step: int, event: str, **fields: Any) -> None:
        self.write({"kind": "event", "step": step, "event": event, **fields, "time": time.time()})

    def console(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        while self.trackers:  # each closed once, even when close() is called again
            self.trackers.pop().close()
        if self.file is not None:
            self.file.close()
