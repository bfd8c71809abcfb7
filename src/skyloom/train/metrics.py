"""Where a run's numbers go: `metrics.jsonl` (every step), the console, and optionally TensorBoard.

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
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        enabled: bool = True,
        tensorboard: bool = False,
        log_every: int = 10,
        initial_step: int = 0,
    ):
        self.enabled = enabled
        self.total_steps = total_steps
        self.log_every = log_every
        self.file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8") if enabled else None
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError(
                    "train.tensorboard needs the tensorboard package: pip install 'skyloom[tensorboard]'"
                ) from None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.bar = None
        if enabled and sys.stderr.isatty():
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
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tb.add_scalar(f"train/{key}", value, step)
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
            if self.tb is not None:
                self.tb.add_scalar(f"val/{name}/loss", r["loss"], step)
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
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()
