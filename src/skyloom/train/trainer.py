"""The training loop: set-up, one optimizer step at a time, validation, checkpoints, resume, faults.

One step, in order (the order is what makes runs reproducible and resumable):
  1. take this rank's micro-batches of the next global batch from the loader;
  2. count the global number of target tokens (one all-reduce), so the loss of every layout is
     sum(token losses) / global targets — the same number on 1 or N ranks;
  3. forward + backward each micro-batch (gradient sync only on the last one), callbacks' extra losses added;
  4. global gradient norm, clipped to `grad_clip`; a non-finite loss or norm skips the update (logged), and
     `max_bad_steps` consecutive skips stop the run without writing a checkpoint of bad weights;
  5. learning rate from the schedule, AdamW update;
  6. metrics line; validation every `validation.every`; checkpoint every `checkpoint.every`;
     SIGTERM/SIGINT end the run after the current step with a final checkpoint.

Checkpoints are verified against their manifest before anything reads them (`verify=False` skips it); a
resume falls back past checkpoints that are broken or fail to read; a checkpoint that cannot be written
(disk full) stops the run with an `abort` event and leaves the earlier ones as they were.
"""

from __future__ import annotations

import contextlib
import math
import resource
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import save_file

from skyloom.config import save as save_config, to_dict
from skyloom.data.mixture import MixtureLoader, MixtureSourceSpec, WeightSchedule, format_plan
from skyloom.data.shards import TokenSource
from skyloom.model import loss as lm_loss
from skyloom.model.accounting import count_params, flops_per_token, peak_flops_for_device
from skyloom.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_state_into, read_weights, write_model_json
from skyloom.model.manifest import NO_VERIFY_HINT, CheckpointError, check as check_manifest, ensure_intact
from skyloom.model.transformer import Transformer
from skyloom.train import checkpointing as ckpt
from skyloom.data.batch import IGNORE_INDEX, Batch
from skyloom.train.callbacks import Callback
from skyloom.train.config import RunConfig
from skyloom.train.distributed import DistEnv, all_gather_object, all_reduce_sum, barrier, init_distributed
from skyloom.train.metrics import MetricsLogger, truncate_after
from skyloom.train.optim import build_optimizer, lr_at, set_lr


class TrainingAborted(RuntimeError):
    """The run cannot go on (e.g. too many consecutive non-finite steps); the message says why."""


def total_steps_for(cfg: RunConfig) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    return math.ceil(cfg.train.max_tokens / cfg.train.global_batch_tokens)


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU by default, fp32 (no autocast) on CPU unless bf16 is asked for."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def enable_activation_checkpointing(model: Transformer) -> None:
    """Recompute each block's activations in backward (saves memory, costs ~1/3 more compute)."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        inner = block.forward

        def forward(*args, _inner=inner):
            return checkpoint(_inner, *args, use_reentrant=False)

        block.forward = forward


def plan_text(cfg: RunConfig, loader, run_dir: Path, layout: str, world_size: int, rows=None) -> str:
    """The run-planning printout: model size and FLOPs, batch arithmetic, schedule, and the per-source data plan."""
    t = cfg.train
    seq_len = cfg.seq_len
    global_windows = t.global_batch_tokens // seq_len
    accum = global_windows // world_size // t.micro_batch_size
    steps = total_steps_for(cfg)
    counts = count_params(cfg.model)
    n_params = counts.total
    active = f" ({counts.active:,} active per token)" if counts.active != counts.total else ""
    lines = [
        f"run dir      {run_dir}",
        f"model        {cfg.model.preset or 'custom'} ({cfg.model.arch}): {n_params:,} parameters{active}, "
        f"{flops_per_token(cfg.model, seq_len) / 1e6:,.1f} MFLOP/token (6N + 12·L·H·S)",
        f"layout       {layout}",
        f"batch        {t.global_batch_tokens:,} tokens/step = {global_windows} windows × {seq_len} tokens "
        f"= {world_size} rank(s) × {accum} accumulation × {t.micro_batch_size} micro-batch",
        f"steps        {steps:,} ({steps * t.global_batch_tokens:,} tokens)",
        f"lr           {t.schedule}: {t.lr:g}" + (f" → {t.min_lr:g}" if t.schedule == "cosine" else "")
        + f", warmup {t.warmup_steps}; AdamW β={tuple(t.betas)}, eps {t.eps:g}, wd {t.weight_decay:g} "
        f"(matrices only), clip {t.grad_clip:g}",
    ]
    if isinstance(loader, MixtureLoader):
        lines.append("data plan (per source):")
        lines.extend("  " + line for line in format_plan(rows if rows is not None else loader.plan()).splitlines())
    return "\n".join(lines)


def build_mixture_loader(cfg: RunConfig, tokenizer=None, rank: int = 0, world_size: int = 1) -> MixtureLoader:
    """The pretraining loader the config describes (the shards must exist; see `prepare_data`)."""
    data = cfg.data
    specs = []
    for name, src in data.sources.items():
        source = TokenSource(src.path)
        source.check_model_fit(f"data.sources.{name}", cfg.model.vocab_size,
                               tokenizer.tokenizer_id if tokenizer is not None else None, str(data.tokenizer or ""))
        specs.append(MixtureSourceSpec(name, source, WeightSchedule(src.weight),
                                       src.max_epochs if src.max_epochs is not None else data.max_epochs))
    return MixtureLoader(specs, seq_len=cfg.seq_len, global_windows=cfg.train.global_batch_tokens // cfg.seq_len,
                         micro_batch_size=cfg.train.micro_batch_size, total_steps=total_steps_for(cfg),
                         seed=data.seed, rank=rank, world_size=world_size)


def load_tokenizer(cfg: RunConfig):
    if not cfg.data.tokenizer:
        return None
    from skyloom.tokenizer.loading import TextTokenizer

    tok = TextTokenizer.from_dir(cfg.data.tokenizer)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"tokenizer {cfg.data.tokenizer} has {tok.vocab_size} entries, more than "
                         f"model.vocab_size={cfg.model.vocab_size}")
    return tok


def find_checkpoint(path: str | Path, verify: bool = True) -> Path:
    """A checkpoint directory (checked against its manifest, if it has one), or a run directory (→ its newest
    intact checkpoint). `verify=False`: sizes only, no checksums."""
    p = Path(path)
    if (p / ckpt.MANIFEST).is_file() or (p / WEIGHTS_FILE).is_file():
        ensure_intact(p, verify)
        return p
    found, broken = ckpt.latest_complete(p / "checkpoints", checksums=verify)
    if found is None:
        extra = f" (broken: {', '.join(f'{b.name}: {r}' for b, r in broken)})" if broken else ""
        raise FileNotFoundError(f"{p}: no intact checkpoint{extra}")
    return found


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_changes(saved: Path, cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """{dotted key: {"old", "new"}} for every setting that differs between a run's saved config.yaml and `cfg`."""
    import yaml

    if not saved.is_file():
        return {}
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return {"config.yaml": {"old": f"unreadable ({err})", "new": "rewritten"}}
    new = yaml.safe_load(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    a, b = _flatten(old), _flatten(new)
    return {k: {"old": a.get(k), "new": b.get(k)} for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        callbacks: Sequence[Callback] = (),
        batch_source=None,
        lr_scale_fn: Callable | None = None,
        log: Callable[[str], None] | None = None,
        verify: bool = True,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.verify = verify  # check checkpoints against their manifests before reading them
        self._verified: set[Path] = set()
        self._broken: list[tuple[Path, str]] = []
        self.last_checkpoint: Path | None = None
        self.callbacks = list(callbacks)
        if cfg.model.moe is not None:  # MoE: aux losses, adaptive coefficients, router metrics (train/moe.py)
            from skyloom.train.moe import MoECallback, lr_scale_fn_for

            self.callbacks.append(MoECallback(cfg.model.moe))
            lr_scale_fn = lr_scale_fn or lr_scale_fn_for(cfg.model.moe)
        self.env: DistEnv = init_distributed(cfg.train.device)
        self.device = self.env.device
        self._print = log or print
        self.autocast_dtype = autocast_dtype_for(cfg.train.precision, self.device)
        self.precision_name = "bf16" if self.autocast_dtype is not None else "fp32"
        self.fsdp = cfg.train.parallel == "fsdp" and self.env.distributed
        self.total_steps = total_steps_for(cfg)
        self.seq_len = cfg.seq_len
        self.global_windows = cfg.train.global_batch_tokens // self.seq_len
        self.step = 0
        self.tokens = 0
        self.bad_steps = 0
        self.skipped_steps = 0
        self.stop_signal: int | None = None
        self.ckpt_root = self.run_dir / "checkpoints"
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        # Data: rank 0 creates what is missing, then everyone opens it.
        if self.env.is_main:
            from skyloom.train.prepare import prepare_data

            prepare_data(cfg.data, self.log)
        barrier()
        self.tokenizer = load_tokenizer(cfg)
        self.loader = batch_source if batch_source is not None else \
            build_mixture_loader(cfg, self.tokenizer, self.env.rank, self.env.world_size)

        # Model: the same seed on every rank gives the same initial weights.
        torch.manual_seed(cfg.train.seed)
        self.raw_model = self._build_model()
        self.n_params = count_params(cfg.model).total
        self.flops_per_token = flops_per_token(cfg.model, self.seq_len)
        self.model = self._wrap(self.raw_model)
        use_zero = self.env.distributed and not self.fsdp and cfg.train.zero1
        self.optimizer = build_optimizer(self.raw_model, cfg.train, zero1=use_zero, lr_scale_fn=lr_scale_fn)

        self.validation = None
        if cfg.validation.sets:
            from skyloom.train.validation import ValidationMonitor

            self.validation = ValidationMonitor(cfg.validation.sets, self.seq_len, self.tokenizer,
                                                cfg.validation.batch_size, vocab_size=cfg.model.vocab_size)

        resumed_from = self._resume() if resume else None
        if resumed_from is None and cfg.train.init_from:
            self._init_from(cfg.train.init_from)
        dropped, changes = 0, {}
        if self.env.is_main:
            if resume:
                changes = config_changes(self.run_dir / "config.yaml", cfg)
            save_config(cfg, self.run_dir / "config.yaml")
            if resume:  # from scratch (nothing intact): every train/val line belongs to lost steps
                dropped = truncate_after(self.run_dir / "metrics.jsonl", self.step if resumed_from else -1)
        barrier()
        self.logger = MetricsLogger(self.run_dir, self.total_steps, enabled=self.env.is_main,
                                    tensorboard=cfg.train.tensorboard, log_every=cfg.train.log_every,
                                    initial_step=self.step)
        broken = [{"path": str(p), "reason": r} for p, r in self._broken]
        if changes:
            self.log("--resume: settings changed since the last session (recorded as a config_changed event):\n"
                     + "\n".join(f"  {k}: {v['old']!r} → {v['new']!r}" for k, v in changes.items()))
            self.logger.event(self.step, "config_changed", changes=changes)
        if resumed_from is not None:
            self.logger.event(self.step, "resume", checkpoint=str(resumed_from), tokens=self.tokens,
                              world_size=self.env.world_size, replayed_lines_dropped=dropped,
                              broken_checkpoints=broken)
        elif resume and (dropped or broken):
            self.log(f"--resume: dropped {dropped} train/validation line(s) of the lost steps from metrics.jsonl")
            self.logger.event(0, "resume_from_scratch", replayed_lines_dropped=dropped, broken_checkpoints=broken)

    # ---- set-up pieces ----

    def log(self, text: str) -> None:
        if self.env.is_main:
            logger = getattr(self, "logger", None)
            (logger.console if logger is not None else self._print)(text)

    def _build_model(self) -> Transformer:
        model = Transformer(self.cfg.model)
        if self.cfg.train.activation_checkpointing:
            enable_activation_checkpointing(model)
        if not self.fsdp:
            model.to(self.device)
        return model

    def _wrap(self, model: Transformer) -> torch.nn.Module:
        if self.cfg.train.compile:
            for block in model.layers:
                block.compile()
        if self.fsdp:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
                if self.autocast_dtype is not None else MixedPrecisionPolicy()
            self.autocast_dtype = None  # the policy casts; no autocast on top
            for block in model.layers:
                fully_shard(block, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
            if self.device.type == "cuda":
                model.to(self.device)
            return model
        if self.env.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            return DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model

    # ---- plan ----

    def plan_text(self, rows=None) -> str:
        layout = ("FSDP2" if self.fsdp else ("DDP + ZeRO-1" if self.env.distributed and self.cfg.train.zero1
                                            else ("DDP" if self.env.distributed else "single process")))
        return plan_text(self.cfg, self.loader, self.run_dir, f"{self.device} × {self.env.world_size} rank(s), "
                         f"{layout}, {self.precision_name}", self.env.world_size, rows)

    # ---- checkpoints ----

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step, "tokens": self.tokens, "bad_steps": self.bad_steps,
            "skipped_steps": self.skipped_steps, "world_size": self.env.world_size,
            "parallel": "fsdp" if self.fsdp else ("ddp" if self.env.distributed else "single"),
            "loader": self.loader.state_dict(), "total_steps": self.total_steps,
            "init_from": self.cfg.train.init_from,
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (collective: every rank must call it)."""
        if not self._weights_finite():
            self.logger.event(self.step, "checkpoint_refused", reason="non-finite weights")
            raise TrainingAborted(f"step {self.step}: weights are not finite; refusing to write a checkpoint")
        tmp = None
        if self.env.is_main:
            try:
                tmp = ckpt.begin(self.ckpt_root, self.step)
            except OSError as err:
                self._checkpoint_write_failed(None, err)
        tmp = Path(self._broadcast_path(tmp))
        rngs = all_gather_object({k: v.tolist() for k, v in ckpt.rng_state().items()})
        if self.fsdp:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

            from torch.distributed.checkpoint.api import CheckpointException

            msd, osd = get_state_dict(self.model, self.optimizer)
            try:
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
            except (CheckpointException, OSError) as err:  # raised on every rank (a BaseException, not an Exception)
                self._checkpoint_write_failed(tmp if self.env.is_main else None, err)
            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            opt_state = None
        else:
            full = {k: v.detach().contiguous().cpu() for k, v in self.raw_model.state_dict().items()}
            if hasattr(self.optimizer, "consolidate_state_dict"):
                self.optimizer.consolidate_state_dict(to=0)
                opt_state = self.optimizer.state_dict() if self.env.is_main else None
            else:
                opt_state = self.optimizer.state_dict()
        path = None
        if self.env.is_main:
            if self.cfg.model.tie_embeddings:
                full.pop("output.weight", None)
            try:
                self._write_checkpoint_files(tmp, full, opt_state, rngs)
                path = ckpt.commit(tmp, self.step, self.tokens)
            except (OSError, SafetensorError) as err:
                self._checkpoint_write_failed(tmp, err)
            self.last_checkpoint = path
            deleted = ckpt.prune(self.ckpt_root, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every,
                                 newest=path)
            self.logger.event(self.step, "checkpoint", path=str(path), deleted=[p.name for p in deleted])
            for cb in self.callbacks:
                cb.on_checkpoint(self, path)
        barrier()
        return path

    def _write_checkpoint_files(self, tmp: Path, full: dict, opt_state: dict | None, rngs: list) -> None:
        save_file({k: v.contiguous() for k, v in full.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_model_json(self.cfg.model, tmp, {"step": self.step, "tokens": self.tokens, "run": str(self.run_dir)})
        if self.tokenizer is not None:
            self.tokenizer.copy_files_to(tmp)
        if opt_state is not None:
            ckpt.optimizer_state_to_files(opt_state, tmp)
        save_file({f"{k}.rank{r}": torch.tensor(v, dtype=torch.uint8) for r, d in enumerate(rngs)
                   for k, v in d.items()}, str(tmp / "rng.safetensors"))
        ckpt.write_json(tmp / ckpt.TRAINER_STATE, self._state())

    def _checkpoint_write_failed(self, tmp: Path | None, err: Exception):
        """Disk full or unwritable: drop the partial directory (freeing its space), log an `abort` event (best
        effort — the log may sit on the full disk) and stop; the earlier checkpoints are untouched."""
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        last_line = (str(err).strip().splitlines() or [type(err).__name__])[-1]  # DCP's carry a whole traceback
        reason = f"cannot write the checkpoint of step {self.step}: {last_line}"
        with contextlib.suppress(OSError):
            self.logger.event(self.step, "abort", reason=reason)
        kept = ", ".join(p.name for _, p in ckpt.list_checkpoints(self.ckpt_root)) or "none"
        raise TrainingAborted(f"{reason}. The partial checkpoint was removed and the earlier ones are untouched "
                              f"({kept}); free some space, then continue with --resume")

    def _broadcast_path(self, path):
        from skyloom.train.distributed import broadcast_object

        return broadcast_object(str(path) if path is not None else None)

    def _weights_finite(self) -> bool:
        local = [p.to_local() if hasattr(p, "to_local") else p for p in self.raw_model.parameters()]
        ok = torch.tensor([all(bool(torch.isfinite(t).all()) for t in local)],
                          dtype=torch.float32, device=self.device)
        return bool(all_reduce_sum(ok).item() == self.env.world_size)

    def _load_weights(self, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        if self.fsdp and (path / "dcp").is_dir():
            self._load_sharded(path, optimizer=False)
            return
        if state is None:
            state = read_weights(path / WEIGHTS_FILE)
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))
            return
        if self.cfg.model.tie_embeddings:
            state.pop("output.weight", None)
        with torch.no_grad():
            load_state_into(self.raw_model, {k: v.to(self.device) for k, v in state.items()}, str(path / WEIGHTS_FILE))

    def _require_verified(self, path: Path) -> None:
        """DCP's `.metadata` is a pickle: it is opened only once the manifest has vouched for every byte."""
        if not self.verify or path in self._verified:
            return
        reason = check_manifest(path, require=True, complete_under=ckpt.DCP_DIR)
        if reason is not None:
            raise CheckpointError(f"{path}: {reason}; its dcp/.metadata is a pickle, opened only when the manifest "
                                  f"verifies it ({NO_VERIFY_HINT}, for a checkpoint you wrote yourself)")
        self._verified.add(path)

    def _load_sharded(self, path: Path, optimizer: bool) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_model_state_dict, set_state_dict

        self._require_verified(path)
        msd, osd = get_state_dict(self.model, self.optimizer)
        state = {"model": msd, "optim": osd} if optimizer else {"model": msd}
        dcp.load(state, checkpoint_id=str(path / "dcp"))
        if optimizer:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        else:
            set_model_state_dict(self.model, state["model"])

    def _load_optimizer(self, path: Path, state: dict | None = None) -> None:
        if self.fsdp:
            if not (path / "dcp").is_dir():
                raise ValueError(f"{path}: not an FSDP checkpoint; its optimizer state cannot be sharded in — "
                                 "use train.init_from without init_optimizer for a fresh optimizer")
            self._load_sharded(path, optimizer=True)
            return
        if not (path / "optimizer.safetensors").is_file():
            raise ValueError(f"{path}: no optimizer.safetensors (an FSDP checkpoint? resume it with parallel=fsdp)")
        self.optimizer.load_state_dict(state if state is not None else ckpt.optimizer_state_from_files(path))

    def _read_checkpoint(self, path: Path) -> dict[str, Any]:
        """What a resume needs from `path`, read into memory before any of it is applied, so a checkpoint that
        verifies but cannot be read (e.g. re-signed garbage) leaves the model untouched for the next older one."""
        state = ckpt.read_trainer_state(path)
        out: dict[str, Any] = {"state": state, "rng": read_weights(path / "rng.safetensors")}
        if not (self.fsdp and (path / "dcp").is_dir()):
            out["weights"] = read_weights(path / WEIGHTS_FILE)
        if not self.fsdp and (path / "optimizer.safetensors").is_file():
            out["optimizer"] = ckpt.optimizer_state_from_files(path)
        return out

    def _newest_readable(self) -> tuple[Path | None, dict | None]:
        """Rank 0: the newest checkpoint that verifies and reads (with what was read); the others go to _broken."""
        for _, path in reversed(ckpt.list_checkpoints(self.ckpt_root)):
            reason = ckpt.verify(path, checksums=self.verify)
            if reason is None:
                try:
                    return path, self._read_checkpoint(path)
                except CheckpointError as err:
                    reason = f"verified, but cannot be read: {err}"
            self._broken.append((path, reason))
        return None, None

    def _resume(self) -> Path | None:
        found, loaded = self._newest_readable() if self.env.is_main else (None, None)
        found = self._broadcast_path(found)
        self._broken = [(Path(p), r) for p, r in _broadcast_list(self._broken)]
        for p, reason in self._broken:
            self.log(f"skipping broken checkpoint {p.name}: {reason}")
        if found is None:
            self.log(f"--resume: no intact checkpoint in {self.ckpt_root}; starting from scratch")
            return None
        path = Path(found)
        if self.verify:
            self._verified.add(path)
        loaded = loaded if loaded is not None else self._read_checkpoint(path)
        state = loaded["state"]
        if state.get("total_steps") not in (None, self.total_steps):
            raise ValueError(f"{path}: the run was planned for {state['total_steps']} steps, now {self.total_steps}; "
                             "the schedule would change — start a chained session (train.init_from) instead")
        self._load_weights(path, loaded.get("weights"))
        self._load_optimizer(path, loaded.get("optimizer"))
        self.loader.load_state_dict(state["loader"])
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        self.bad_steps, self.skipped_steps = int(state.get("bad_steps", 0)), int(state.get("skipped_steps", 0))
        mine = {k.rsplit(".rank", 1)[0]: v for k, v in loaded["rng"].items() if k.endswith(f".rank{self.env.rank}")}
        if mine and state.get("world_size") == self.env.world_size:
            ckpt.set_rng_state(mine)
        else:
            torch.manual_seed(self.cfg.train.seed + 1000003 * self.step + self.env.rank)
        self.log(f"resumed from {path} (step {self.step}, {self.tokens:,} tokens)")
        return path

    def _init_from(self, source: str) -> None:
        path, error = None, None
        if self.env.is_main:  # one rank reads every byte to verify; the others take its word
            try:
                path = find_checkpoint(source, self.verify)
            except (CheckpointError, FileNotFoundError) as err:
                error = err
        path, message = _broadcast_pair(path, str(error) if error else None)
        if error is not None:
            raise error
        if message is not None:
            raise CheckpointError(message)
        path = Path(path)
        if self.verify and (path / ckpt.MANIFEST).is_file():
            self._verified.add(path)
        self._load_weights(path)
        if self.cfg.train.init_optimizer:
            self._load_optimizer(path)
        if self.cfg.data.init_loader_from_checkpoint and isinstance(self.loader, MixtureLoader):
            state = ckpt.read_trainer_state(path)
            self.loader.load_state_dict(state["loader"], sources_only=True)
        self.log(f"initialised from {path} ({'with' if self.cfg.train.init_optimizer else 'fresh'} optimizer state, "
                 "fresh schedule)")

    # ---- the loop ----

    def _signal(self, signum, frame) -> None:
        self.stop_signal = signum
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once

    def _install_signals(self) -> dict:
        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, self._signal)
            except ValueError:  # not the main thread
                pass
        return previous

    def validate(self) -> dict[str, dict] | None:
        if self.validation is None:
            return None
        results = self.validation.evaluate(self.raw_model if not self.fsdp else self.model, self.device,
                                           self.autocast_dtype, self.env.rank, self.env.world_size,
                                           split=not self.fsdp)
        self.logger.val(self.step, self.tokens, results)
        self.last_validation = results
        return results

    def train_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        batches = [b.to(self.device) for b in self.loader.next_batches()]
        n_local = sum(b.n_targets for b in batches)
        n_global = int(all_reduce_sum(torch.tensor([n_local], dtype=torch.float64, device=self.device)).item())
        world = self.env.world_size
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with self._sync_context(last), torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                                          enabled=self.autocast_dtype is not None):
                logits = self.model(batch.input_ids, position_ids=batch.position_ids, attn_mask=batch.attn_mask)
                token_loss = lm_loss.token_loss(logits, batch.labels)  # float32 sum over labels ≠ -100
                # gradient of sum/n_global; ×world because DDP/FSDP average gradients over ranks
                loss = token_loss * (world / max(n_global, 1))
                for cb in self.callbacks:
                    extra = cb.extra_loss(self, batch)
                    if extra is not None:
                        loss = loss + extra / len(batches)
                loss.backward()
            loss_sum += token_loss.detach().double()
        for cb in self.callbacks:
            cb.post_backward(self)
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        stop = 1.0 if self.stop_signal is not None else 0.0
        totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(stop, dtype=torch.float64, device=self.device)]))
        loss_value = float(totals[0]) / max(n_global, 1)
        grad_value = float(grad_norm)
        self.stop_requested = float(totals[1]) > 0
        lr = lr_at(self.step, self.cfg.train, self.total_steps)
        finite = math.isfinite(loss_value) and math.isfinite(grad_value)
        if finite:
            set_lr(self.optimizer, lr)
            for cb in self.callbacks:
                cb.pre_optim_step(self)
            self.optimizer.step()
            self.bad_steps = 0
        else:
            self.bad_steps += 1
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens += n_global
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - t0
        tps = n_global / elapsed
        peak = (self.cfg.train.peak_tflops * 1e12 if self.cfg.train.peak_tflops else
                (peak_flops_for_device(torch.cuda.get_device_name(self.device)) if self.device.type == "cuda" else None))
        metrics = {
            "step": self.step, "tokens": self.tokens, "loss": loss_value, "lr": lr, "grad_norm": grad_value,
            "tokens_per_sec": tps, "mfu": (tps * self.flops_per_token / (peak * world)) if peak else None,
            "mem_gb": self._memory_gb(), "skipped": not finite,
        }
        if isinstance(self.loader, MixtureLoader) and len(self.loader.sources) > 1:
            metrics.update({f"weight/{k}": v for k, v in self.loader.current_weights().items()})
        if not finite:
            self.logger.event(self.step, "skipped_step", reason="non-finite loss or gradient", loss=loss_value,
                              grad_norm=grad_value, consecutive=self.bad_steps, skipped_total=self.skipped_steps)
            self.log(f"step {self.step}: non-finite loss/gradient (loss {loss_value}, grad norm {grad_value}); "
                     f"update skipped ({self.bad_steps} in a row, {self.skipped_steps} in total)")
        for cb in self.callbacks:
            cb.post_step(self, metrics)
        return metrics

    def _sync_context(self, sync: bool):
        if self.fsdp:
            self.model.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        if self.env.distributed and not sync:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _memory_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 1e9
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # peak resident set (Linux: KiB)

    def fit(self) -> str:
        """Train to the end (or to a signal); returns "finished" or "interrupted"."""
        previous = self._install_signals()
        self.stop_requested = False
        self.last_validation = None
        v_every, c_every = self.cfg.validation.every, self.cfg.checkpoint.every
        last_saved = -1
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            if self.step >= self.total_steps:
                self.log(f"the run already finished ({self.step} of {self.total_steps} steps); nothing to do")
                return "finished"
            if self.step == 0 and self.cfg.validation.at_start:
                self.validate()
            while self.step < self.total_steps:
                metrics = self.train_step()
                self.logger.train(metrics)
                if self.bad_steps >= self.cfg.train.max_bad_steps:
                    self.logger.event(self.step, "abort", reason="consecutive non-finite steps",
                                      consecutive=self.bad_steps)
                    raise TrainingAborted(
                        f"{self.bad_steps} consecutive steps had a non-finite loss or gradient (last at step "
                        f"{self.step}); stopping without writing a checkpoint. Lower the learning rate or inspect "
                        f"the data near this step, then resume from the last good checkpoint with --resume "
                        f"(train.max_bad_steps={self.cfg.train.max_bad_steps})")
                done = self.step >= self.total_steps
                if v_every and self.step % v_every == 0 and not done:
                    self.validate()
                if (c_every and self.step % c_every == 0) or self.stop_requested:
                    if self.bad_steps and not self.stop_requested:
                        # weights are unchanged by skipped steps, but a streak may end in an abort: keep the
                        # last checkpoint from before it as the one to resume from
                        self.logger.event(self.step, "checkpoint_deferred", reason="in a run of non-finite steps")
                    else:
                        self.save_checkpoint()
                        last_saved = self.step
                if self.stop_requested:
                    name = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal on another rank"
                    self.logger.event(self.step, "interrupted", signal=name)
                    self.log(f"stopped by {name} at step {self.step}; checkpoint saved — continue with --resume")
                    return "interrupted"
            self.validate()
            if self.cfg.checkpoint.save_final and last_saved != self.step:
                self.save_checkpoint()
            self.logger.event(self.step, "finished", tokens=self.tokens, skipped_steps=self.skipped_steps)
            return "finished"
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            with contextlib.suppress(OSError):  # a full disk must not hide the error that ended the run
                self.logger.close()


def _broadcast_list(items):
    from skyloom.train.distributed import broadcast_object

    return broadcast_object([(str(p), r) for p, r in items])


def _broadcast_pair(path: Path | None, message: str | None) -> tuple[str | None, str | None]:
    from skyloom.train.distributed import broadcast_object

    return broadcast_object((str(path) if path is not None else None, message))
