"""The external experiment trackers a run can log to: TensorBoard and Weights & Biases.

Both take the same three calls from `MetricsLogger` (rank 0 only): `log_metrics(step, {"train/loss": …})` for every
train line and validation result, `log_hparams(config)` once per session with the resolved config (what
RUN_DIR/config.yaml holds), and `close()`. The packages are imported only when the config switches a tracker on.
A user's own logger is a callback (`on_train_start` / `on_step_end` / `on_validation`; docs/training.md "Loggers").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from skyloom.config import ConfigError


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The plottable values: numbers (bools as 0/1); None (e.g. `mfu` on CPU) and text are left out."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys → scalars (`train.lr: 0.003`), the form hyper-parameter tables show; lists stay one value."""
    if isinstance(config, dict):
        out: dict[str, Any] = {}
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: config}


class TensorBoardLogger:
    """Event files under RUN_DIR/tensorboard/: scalars, the config as hyper-parameters (HPARAMS tab, one dotted key
    per setting, against `train/loss` and each validation set's loss) and as YAML text (TEXT tab).

    Each session opens a new event file that hides earlier events from `first_step` on (a `--resume` replays the
    steps after its checkpoint; a fresh start replaces everything), so TensorBoard shows one line per tag.
    """

    def __init__(self, log_dir: Path, metric_tags: list[str], first_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard", "needs the tensorboard package: pip install 'skyloom[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(str(log_dir), purge_step=first_step)
        self.metric_tags = metric_tags

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        for tag, value in numeric(metrics).items():
            self.writer.add_scalar(tag, value, step)

    def log_hparams(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        # the hparams plugin takes numbers, strings and bools: None and lists are written as their YAML text
        table = {
            k: v if isinstance(v, (bool, int, float, str)) else yaml.safe_dump(v, default_flow_style=True).strip()
            for k, v in flatten(config).items()
        }
        # written into this run's own event file (SummaryWriter.add_hparams would open a separate sub-run)
        writer = self.writer._get_file_writer()
        for summary in hparams(table, {tag: 0.0 for tag in self.metric_tags}):
            writer.add_summary(summary)
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        self.writer.add_text("config", "```yaml\n" + text + "```")

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """One W&B run per training run (`train.wandb`), its files under RUN_DIR/wandb/.

    RUN_DIR/wandb/skyloom_run.json keeps the W&B run id and the last step logged, so a `--resume` continues the same
    W&B run and skips the steps replayed after the checkpoint (recomputed identically): W&B never sees a step go
    backwards. A run that starts over (no `--resume`, or nothing intact to resume from) opens a new W&B run.
    """

    def __init__(self, run_dir: Path, settings, resume: bool):
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.wandb", "needs the wandb package: pip install 'skyloom[wandb]'") from None
        self.state_file = run_dir / "wandb" / "skyloom_run.json"
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        previous = self._read_state() if resume else {}
        self.last_step = int(previous.get("last_step", -1))
        self.logged_through = self.last_step  # what the earlier sessions of this W&B run logged
        run_id = previous.get("id")
        try:
            self.run = wandb.init(
                project=settings.project,
                entity=settings.entity,
                name=settings.name or run_dir.resolve().name,
                group=settings.group,
                tags=list(settings.tags) or None,
                notes=settings.notes,
                mode=settings.mode,
                dir=str(run_dir),
                id=run_id,
                resume="allow" if run_id else None,
                # W&B's console capture would wrap this process's stdout/stderr (and with it the progress bar)
                settings=wandb.Settings(console="off"),
            )
        except wandb.errors.Error as err:  # e.g. online without `wandb login`: say what to change, not a traceback
            raise ConfigError(
                "train.wandb", f"W&B could not start: {err} (log in with `wandb login`, or set mode: offline)"
            ) from None
        self._write_state()

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        tmp.write_text(json.dumps({"id": self.run.id, "last_step": self.last_step}), encoding="utf-8")
        os.replace(tmp, self.state_file)

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        if step <= self.logged_through:  # replayed after a --resume: W&B has this step already
            return
        self.run.log(numeric(metrics), step=step)
        if step > self.last_step:
            self.last_step = step
            self._write_state()

    def log_hparams(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def close(self) -> None:
        self.run.finish()
