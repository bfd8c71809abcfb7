"""The pipeline YAML: inputs, ordered steps with parameters, output folder, executor (tasks/workers).

    output_dir: runs/skypile-example
    executor: {type: local, tasks: 2, workers: 2}
    keep_rejects: false
    inputs:
      - {path: ../shared/data/extraction/html, format: html, source: web_en}
    steps:
      - {type: extract}
      - {type: langid, languages: [en, zh]}
      - {type: heuristics, skip_sources: [gsm8k]}
      - {type: minhash_dedup}
      - {type: stem_split}

Every step takes ``name`` (its label in reports; default: its type, numbered if repeated), ``sources`` /
``skip_sources`` (restrict a filter to some inputs) and its own parameters (unknown keys are errors).
Paths may use ``${VAR}`` / ``${VAR:-default}`` environment variables.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from skyloom.config import ConfigError, build
from skyloom.data.pipeline.readers import InputConfig


@dataclass
class ExecutorConfig:
    type: Literal["local", "slurm"] = "local"
    tasks: int = 1  # per-document stages run this many tasks (inputs are sharded by file)
    workers: int = 1  # local: tasks running at once (processes); 1 runs them in this process
    # slurm only
    partition: str | None = None
    time: str = "24:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    venv_path: str | None = None
    job_name: str = "skypile"
    sbatch_args: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.tasks < 1:
            raise ConfigError("tasks", "must be ≥ 1")
        if self.workers < 1:
            raise ConfigError("workers", "must be ≥ 1")
        for name in ("cpus_per_task", "mem_per_cpu_gb"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be ≥ 1, got {getattr(self, name)}")
        if self.type == "slurm" and not self.partition:
            raise ConfigError("partition", "is required with type: slurm")


@dataclass
class PipelineConfig:
    output_dir: str
    inputs: list[InputConfig]
    steps: list[dict[str, Any]]
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    keep_rejects: bool = False
    compression: Literal["gzip", "none"] = "gzip"
    output_format: Literal["jsonl", "parquet"] = "jsonl"  # parquet: datatrove's ParquetWriter, <subset>/<rank>.parquet
    name: str = "skypile"

    def validate(self) -> None:
        if not self.inputs:
            raise ConfigError("inputs", "list at least one input")
        if not self.steps:
            raise ConfigError("steps", "list at least one step")
        for i, step in enumerate(self.steps):
            if not isinstance(step, dict) or "type" not in step:
                raise ConfigError(f"steps[{i}]", "each step is a mapping with a 'type' key")


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, key: str = "") -> Any:
    """``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree; an unset variable names the config key."""
    if isinstance(value, str):

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(key, f"environment variable ${{{name}}} is not set and has no default")

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand_env(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    return value


def load_pipeline_config(data: dict[str, Any]) -> PipelineConfig:
    return build(PipelineConfig, expand_env(data))
