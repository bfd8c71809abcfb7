"""The one config `skyloom train` loads: `RunConfig` = model + data + train + validation + checkpoint.

Every section is a dataclass built by `skyloom.config.build`, so unknown keys, wrong types and impossible
values are refused before any work starts, naming the dotted key. `docs/training.md` documents every field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from skyloom.config import ConfigError
from skyloom.model.config import ModelConfig
from skyloom.train.parallel.config import ParallelConfig

# A weight is a constant or a piecewise-linear schedule [[fraction_of_training, weight], ...].
Weight = float | list[list[float]]


def check_weight(value: Any, key: str) -> None:
    """A mixture weight: a number ≥ 0, or points [[x, w], …] with x rising from 0 to 1 and w ≥ 0."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(key, f"a weight must be ≥ 0, got {value}")
        return
    if not isinstance(value, list) or not value:
        raise ConfigError(key, f"expected a number or a list of [fraction, weight] points, got {value!r}")
    xs = []
    for i, point in enumerate(value):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise ConfigError(f"{key}[{i}]", f"expected [fraction_of_training, weight], got {point!r}")
        x, w = point
        if not 0.0 <= x <= 1.0:
            raise ConfigError(f"{key}[{i}]", f"the fraction of training must be in [0, 1], got {x}")
        if w < 0:
            raise ConfigError(f"{key}[{i}]", f"a weight must be ≥ 0, got {w}")
        if xs and x <= xs[-1]:
            raise ConfigError(f"{key}[{i}]", f"fractions must strictly increase ({xs[-1]} then {x})")
        xs.append(x)


@dataclass
class SourceConfig:
    """One named token source of the mixture.

    `path` is a token-shard directory (`skyloom.data.shards`). When it holds no `index.json` yet and `raw`
    lists text files (globs; `.txt` = one document per file, `.jsonl`/`.json` = one document per line taken
    from `text_key`), `skyloom train` tokenizes them with the run's tokenizer and packs them there first.
    `raw_fallback` (e.g. `${stdlib}/**/*.py` — Python's own sources) stands in only when the data `raw` points
    into is absent altogether (no such directory), with a note; a `raw` entry that matches nothing while another
    does, or while its directory exists, is refused as a typo (`skyloom.train.prepare`).
    """

    path: str
    weight: Weight = 1.0
    max_epochs: float | None = None  # None: data.max_epochs
    raw: list[str] = field(default_factory=list)
    raw_fallback: list[str] = field(default_factory=list)
    text_key: str | list[str] = "text"  # JSONL field(s) holding the text; the first one present is used

    def validate(self) -> None:
        check_weight(self.weight, "weight")
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ConfigError("max_epochs", f"must be positive, got {self.max_epochs}")


@dataclass
class TokenizerTrainConfig:
    """Train a small byte-level BPE on the fly when `data.tokenizer` does not exist yet (demo recipes)."""

    files: list[str] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    text_key: str | list[str] = "text"
    vocab_size: int = 8192
    max_chars: int = 20_000_000

    def validate(self) -> None:
        if self.vocab_size < 300:
            raise ConfigError("vocab_size", f"must be ≥ 300 (256 bytes + merges), got {self.vocab_size}")
        if self.max_chars <= 0:
            raise ConfigError("max_chars", f"must be positive, got {self.max_chars}")


@dataclass
class DataConfig:
    """Mixture of token sources; windows of `seq_len`+1 tokens drawn deterministically from `seed`."""

    sources: dict[str, SourceConfig] = field(default_factory=dict)
    seq_len: int | None = None  # None: model.max_seq_len
    max_epochs: float = 5.0  # report §3.2: no source repeated more than 5 times
    seed: int = 0
    tokenizer: str | None = None  # tokenizer directory (copied into every checkpoint)
    train_tokenizer: TokenizerTrainConfig | None = None
    init_loader_from_checkpoint: bool = False  # chained session: continue each same-named source's position

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("sources", "at least one source is required")
        if self.seq_len is not None and self.seq_len <= 0:
            raise ConfigError("seq_len", f"must be positive, got {self.seq_len}")
        if self.max_epochs <= 0:
            raise ConfigError("max_epochs", f"must be positive, got {self.max_epochs}")


@dataclass
class WandbConfig:
    """`train.wandb`: log the run to Weights & Biases (rank 0 only; docs/training.md "Loggers").

    `mode: offline` needs no network: the run is written under RUN_DIR/wandb/ (upload it later with `wandb sync`).
    A `--resume` continues the same W&B run (its id is kept in RUN_DIR/wandb/skyloom_run.json).
    """

    project: str = "skyloom"
    name: str | None = None  # default: the run directory's name
    mode: Literal["online", "offline", "disabled"] = "online"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    notes: str | None = None


def _package_missing(name: str) -> bool:
    """Whether an optional package is absent (checked at config time, so the run is refused before any work)."""
    import importlib.util

    return importlib.util.find_spec(name) is None


@dataclass
class TrainConfig:
    """Optimizer, schedule, batch, precision and parallelism."""

    global_batch_tokens: int = 16384  # tokens per optimizer step over all ranks (report: 16M)
    micro_batch_size: int = 8  # windows per forward pass per rank
    max_steps: int | None = None
    max_tokens: int | None = None  # alternative to max_steps
    lr: float = 6e-4
    min_lr: float = 6e-5
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # matrices only (see docs/training.md)
    grad_clip: float = 1.0  # 0 disables clipping
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # also 'ddp' / 'fsdp' (train/parallel/config.py)
    activation_checkpointing: bool = False
    # CPU host memory (train/host_memory.py): lean = freed buffers go back to the OS (less RSS, ~30% more CPU time
    # per step); fast = glibc's default; auto = lean when the parameters are sharded (dp_shard > 1), else fast
    host_memory: Literal["auto", "lean", "fast"] = "auto"
    compile: bool = False
    seed: int = 0
    init_from: str | None = None  # chained session: start from another run's checkpoint (fresh schedule)
    init_optimizer: bool = False  # with init_from: also take its optimizer state
    # ffn: update only the blocks' FFNs, the rest frozen bit-identical (Skywork-MoE App. C.2, train/trainable.py)
    trainable: Literal["all", "ffn"] = "all"
    max_bad_steps: int = 5  # stop after this many consecutive non-finite steps
    log_every: int = 1  # metrics.jsonl gets every step; the console a line every `log_every` (non-TTY)
    tensorboard: bool = False  # RUN_DIR/tensorboard/ event files (needs the tensorboard package)
    wandb: WandbConfig | None = None  # Weights & Biases (None: off)
    peak_tflops: float | None = None  # per device, for MFU when the device's peak is unknown (e.g. CPU)

    @classmethod
    def expand_config(cls, data: dict[str, Any], prefix: str) -> dict[str, Any]:
        """Old spellings: `parallel: ddp | fsdp` and a top-level `zero1` become the `parallel` section."""
        if "parallel" in data:
            try:
                data["parallel"] = ParallelConfig.from_value(data["parallel"])
            except ConfigError as err:
                raise ConfigError(f"{prefix}.parallel" if prefix else "parallel", str(err)) from None
        if "zero1" in data:
            zero1 = data.pop("zero1")
            section = data.get("parallel")
            section = dict(section) if isinstance(section, dict) else {}
            if "zero1" in section and section["zero1"] != zero1:
                key = f"{prefix}.zero1" if prefix else "zero1"
                raise ConfigError(key, f"{zero1!r} contradicts parallel.zero1={section['zero1']!r}; give only one")
            section["zero1"] = zero1
            data["parallel"] = section
        return data

    @property
    def zero1(self) -> bool:
        """The old key, read from the parallel section."""
        return self.parallel.zero1

    def validate(self) -> None:
        """Each rule names the one key it is about (no shared messages: the key is what the user edits)."""
        for name in ("global_batch_tokens", "micro_batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        if (self.max_steps is None) == (self.max_tokens is None):
            raise ConfigError("max_steps", "give exactly one of train.max_steps and train.max_tokens")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ConfigError("max_steps", f"must be positive, got {self.max_steps}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ConfigError("max_tokens", f"must be positive, got {self.max_tokens}")
        if self.lr <= 0:
            raise ConfigError("lr", f"must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError("min_lr", f"need 0 ≤ min_lr ≤ lr, got lr={self.lr} min_lr={self.min_lr}")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps", f"must be ≥ 0, got {self.warmup_steps}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError("betas", f"must be in [0, 1), got {self.betas}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(name, f"must be ≥ 0, got {getattr(self, name)}")
        if self.eps <= 0:
            raise ConfigError("eps", f"must be positive, got {self.eps}")
        if self.max_bad_steps < 1:
            raise ConfigError("max_bad_steps", f"must be ≥ 1, got {self.max_bad_steps}")
        if self.init_optimizer and not self.init_from:
            raise ConfigError("init_optimizer", "needs train.init_from")
        if self.trainable != "all" and self.parallel.tp > 1:  # torch's SequenceParallel re-creates the norm
            raise ConfigError(  # weights as trainable parameters: they would not stay frozen
                "trainable",
                f"{self.trainable} is not supported with tensor parallelism (train.parallel.tp={self.parallel.tp}); "
                "use data/pipeline/expert parallelism or FSDP for an FFN-only session",
            )
        if self.init_optimizer and self.trainable != "all":
            raise ConfigError(
                "init_optimizer",
                f"cannot be combined with train.trainable: {self.trainable} (the checkpoint's AdamW state covers other "
                "parameters); start the session with a fresh optimizer",
            )
        if self.log_every < 1:
            raise ConfigError("log_every", f"must be ≥ 1, got {self.log_every}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError("peak_tflops", f"must be positive, got {self.peak_tflops}")
        if self.tensorboard and _package_missing("tensorboard"):
            raise ConfigError("tensorboard", "needs the tensorboard package: pip install 'skyloom[tensorboard]'")
        if self.wandb is not None and self.wandb.mode != "disabled" and _package_missing("wandb"):
            raise ConfigError("wandb", "needs the wandb package: pip install 'skyloom[wandb]' (or set mode: disabled)")


@dataclass
class ValidationSetConfig:
    """A held-out set: a token-shard directory, or text files (globs) tokenized with the run's tokenizer."""

    path: str
    max_tokens: int = 65536  # fixed budget of predicted tokens per evaluation
    text_key: str | list[str] = "text"
    fallback: list[str] = field(default_factory=list)  # globs used when `path` matches nothing

    def validate(self) -> None:
        if self.max_tokens <= 0:
            raise ConfigError("max_tokens", f"must be positive, got {self.max_tokens}")


@dataclass
class ValidationConfig:
    sets: dict[str, ValidationSetConfig] = field(default_factory=dict)
    every: int = 100  # steps; 0 = only at the end
    batch_size: int = 8
    at_start: bool = True

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError("every", f"must be ≥ 0, got {self.every}")
        if self.batch_size <= 0:
            raise ConfigError("batch_size", f"must be positive, got {self.batch_size}")


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps; 0 = only the final checkpoint
    keep_last: int = 3
    keep_every: int | None = None  # also keep every checkpoint whose step is a multiple of this
    save_final: bool = True

    def validate(self) -> None:
        if self.every < 0:
            raise ConfigError("every", f"must be ≥ 0, got {self.every}")
        if self.keep_last < 1:
            raise ConfigError("keep_last", f"must be ≥ 1, got {self.keep_last}")
        if self.keep_every is not None and self.keep_every <= 0:
            raise ConfigError("keep_every", f"must be positive, got {self.keep_every}")


@dataclass
class RunConfig:
    """Everything one training run needs; saved as RUN_DIR/config.yaml."""

    model: ModelConfig
    data: DataConfig
    train: TrainConfig
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    # name → constructor arguments: a registered name (train/callback_registry.py) or a class of your own,
    # 'package.module:Class' (importable from the working directory) or 'path/to/file.py:Class'
    callbacks: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    out_dir: str | None = None  # default: runs/<config file name>

    @property
    def seq_len(self) -> int:
        return self.data.seq_len or self.model.max_seq_len

    def validate(self) -> None:
        # Every architecture: the checkpoint's model.json records max_seq_len, and a model trained on longer
        # windows than it says would be misdescribed to everything that loads it (HF export, eval, SFT).
        if self.seq_len > self.model.max_seq_len:
            raise ConfigError(
                "data.seq_len",
                f"{self.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}; "
                "raise model.max_seq_len or lower data.seq_len",
            )
        self.train.parallel.check_model(self.model, seq_len=self.seq_len)
        if self.train.global_batch_tokens % self.seq_len:
            raise ConfigError(
                "train.global_batch_tokens",
                f"{self.train.global_batch_tokens} is not a multiple of seq_len={self.seq_len}",
            )
        from skyloom.train.callback_registry import check_callback_args

        for name, args in self.callbacks.items():
            check_callback_args(name, args)
