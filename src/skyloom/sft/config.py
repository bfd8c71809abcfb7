"""`SFTConfig`: what `skyloom sft CONFIG` reads. Optimizer/schedule/precision/parallel settings are the
training engine's own `TrainConfig` and `CheckpointConfig` sections (docs/training.md), unchanged."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from skyloom.config import ConfigError, apply_overrides, build, read_yaml
from skyloom.train.config import CheckpointConfig, TrainConfig


@dataclass
class SFTSourceConfig:
    """One instruction-data JSONL file. `weight` = how many times each of its samples is used per epoch
    (2 = twice, 0.5 = a fixed half of them), which is how data kinds are mixed in proportion."""

    path: str
    weight: float = 1.0
    limit: int | None = None  # read only the first N records

    def validate(self) -> None:
        if self.weight < 0:
            raise ConfigError("weight", f"must be ≥ 0, got {self.weight}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError("limit", f"must be ≥ 1 (or left out), got {self.limit}")


@dataclass
class SFTDataConfig:
    sources: dict[str, SFTSourceConfig] = field(default_factory=dict)
    template: str = "skywork"
    layout: Literal["packed", "padded"] = "packed"
    seq_len: int | None = None  # default: the model's max_seq_len
    epochs: float | None = None  # default 3 when train.max_steps/max_tokens are not given
    seed: int = 0
    val_fraction: float = 0.0  # held out of the training samples for a masked validation loss
    val_max_samples: int = 256

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources", "at least one SFT data file is required")
        from skyloom.tokenizer.chat import TEMPLATES

        if self.template not in TEMPLATES:
            raise ConfigError("template", f"unknown chat template {self.template!r}; known: {', '.join(TEMPLATES)}")
        if self.seq_len is not None and self.seq_len <= 0:
            raise ConfigError("seq_len", f"must be positive, got {self.seq_len}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError("epochs", f"must be positive, got {self.epochs}")
        if self.val_max_samples < 1:
            raise ConfigError("val_max_samples", f"must be ≥ 1, got {self.val_max_samples}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")


@dataclass
class SFTValidationConfig:
    every: int = 50  # steps; 0 = only at the start and the end

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError("every", f"must be ≥ 0, got {self.every}")


@dataclass
class SFTConfig:
    base: str  # skyloom checkpoint, run directory (→ newest checkpoint) or Hugging Face Llama directory
    data: SFTDataConfig
    train: TrainConfig
    tokenizer: str | None = None  # default: the tokenizer files inside `base`
    validation: SFTValidationConfig = field(default_factory=SFTValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=0, keep_last=2))
    export_hf: bool = True  # write RUN_DIR/hf (LlamaForCausalLM + tokenizer with the chat template) at the end
    out_dir: str | None = None
    steps_from_epochs: bool = False  # set by the loader: train.max_steps is computed from data.epochs

    def validate(self) -> None:
        if self.steps_from_epochs is False and self.data.epochs is not None:
            raise ConfigError("data.epochs", "give either data.epochs or train.max_steps/max_tokens, not both")


def build_sft_config(raw: dict[str, Any]) -> SFTConfig:
    """Build from a mapping; without train.max_steps/max_tokens the step count comes from data.epochs (3)."""
    raw = copy.deepcopy(raw)
    train = raw.setdefault("train", {}) or {}
    raw["train"] = train
    if train.get("max_steps") is None and train.get("max_tokens") is None:
        train["max_steps"] = 1  # placeholder, replaced once the data is laid out
        raw["steps_from_epochs"] = True
        data = raw.setdefault("data", {})
        if isinstance(data, dict) and data.get("epochs") is None:
            data["epochs"] = 3.0
    return build(SFTConfig, raw)


def load_sft_config(path: str | Path, overrides: Iterable[str] = ()) -> SFTConfig:
    raw = apply_overrides(read_yaml(path), list(overrides))
    return build_sft_config(raw)
