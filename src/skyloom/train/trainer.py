"""The training loop: set-up, then one optimizer step at a time with hooks; everything else is a component.

One step, in order (the order is what makes runs reproducible and resumable):
  1. take this rank's micro-batches of the next global batch from the loader;
  2. count the global number of target tokens (one all-reduce), so the loss of every layout is
     sum(token losses) / global targets — the same number on 1 or N ranks;
  3. forward + backward each micro-batch (gradient sync only on the last one), callbacks' extra losses added;
  4. global gradient norm, clipped to `grad_clip`; a non-finite loss or norm skips the update;
  5. learning rate from the schedule, AdamW update;
  6. callbacks add to the metrics line; it is written; callbacks' `on_step_end` (validation, the abort policy);
     checkpoint every `checkpoint.every`; SIGTERM/SIGINT end the run after the current step with a final checkpoint.

Components: `Checkpointer` (save / resume / init-from / pruning, train/checkpointer.py); the callbacks the config
switches on (speed/MFU/memory, non-finite policy, validation, MoE: train/standard_callbacks.py; the `callbacks:`
section: train/callback_registry.py). Data preparation (tokenizer training, packing) is the command layer's
(`skyloom.train.prepare.prepare_run_data`), done before a Trainer is built.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from skyloom.config import to_dict
from skyloom.data.mixture import MixtureLoader, MixtureSourceSpec, WeightSchedule, format_plan
from skyloom.data.shards import TokenSource
from skyloom.model import loss as lm_loss
from skyloom.model.accounting import count_params, flops_per_token
from skyloom.model.transformer import Transformer
from skyloom.train.callback_registry import build_callbacks
from skyloom.train.callbacks import Callback, refuse_extra_losses_under_pipeline
from skyloom.train.checkpointer import (  # noqa: F401  (some re-exported)
    CallbackStates,
    Checkpointer,
    TrainerState,
    TrainingAborted,
    config_changes,
    find_checkpoint,
)
from skyloom.train.config import RunConfig
from skyloom.train.distributed import DistEnv, all_reduce_sum, init_distributed
from skyloom.train.host_memory import limit_heap_retention, wants_lean_heap
from skyloom.train.metrics import MetricsLogger
from skyloom.train.optim import build_optimizer, clip_in_step, clips_in_step, lr_at, set_lr
from skyloom.train.parallel.apply import enable_activation_checkpointing, parallelize  # noqa: F401  (re-exported)
from skyloom.train.parallel.mesh import build_mesh, data_parallel_rank, sub_mesh
from skyloom.train.standard_callbacks import default_callbacks
from skyloom.train.trainable import apply_trainable


def total_steps_for(cfg: RunConfig) -> int:
    if cfg.train.max_steps is not None:
        return cfg.train.max_steps
    return math.ceil(cfg.train.max_tokens / cfg.train.global_batch_tokens)


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU by default, fp32 (no autocast) on CPU unless bf16 is asked for."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


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
        f"lr           {t.schedule}: {t.lr:g}"
        + (f" → {t.min_lr:g}" if t.schedule == "cosine" else "")
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
        source.check_model_fit(
            f"data.sources.{name}",
            cfg.model.vocab_size,
            tokenizer.tokenizer_id if tokenizer is not None else None,
            str(data.tokenizer or ""),
        )
        specs.append(
            MixtureSourceSpec(
                name,
                source,
                WeightSchedule(src.weight),
                src.max_epochs if src.max_epochs is not None else data.max_epochs,
            )
        )
    return MixtureLoader(
        specs,
        seq_len=cfg.seq_len,
        global_windows=cfg.train.global_batch_tokens // cfg.seq_len,
        micro_batch_size=cfg.train.micro_batch_size,
        total_steps=total_steps_for(cfg),
        seed=data.seed,
        rank=rank,
        world_size=world_size,
    )


def load_tokenizer(cfg: RunConfig):
    if not cfg.data.tokenizer:
        return None
    from skyloom.tokenizer.loading import TextTokenizer

    tok = TextTokenizer.from_dir(cfg.data.tokenizer)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ValueError(
            f"tokenizer {cfg.data.tokenizer} has {tok.vocab_size} entries, more than "
            f"model.vocab_size={cfg.model.vocab_size}"
        )
    return tok


class Trainer:
    """Builds the run's parts (nothing is prepared here: the data must exist) and runs the loop."""

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
        self.env: DistEnv = init_distributed(cfg.train.device)
        self.device = self.env.device
        self._print = log or print
        self.logger: MetricsLogger | None = None
        self.autocast_dtype = autocast_dtype_for(cfg.train.precision, self.device)
        self.precision_name = "bf16" if self.autocast_dtype is not None else "fp32"
        self.parallel = cfg.train.parallel.resolved(self.env.world_size)  # refused here when it does not fit
        if wants_lean_heap(cfg.train.host_memory, self.parallel.dp_shard):
            limit_heap_retention(self.device.type)  # CPU: freed buffers go back to the OS (host_memory.py)
        self.mesh = build_mesh(self.parallel, self.env.world_size, self.device.type)
        self.dp_rank, self.dp_size = data_parallel_rank(self.parallel, self.env.rank)
        self.fsdp = self.parallel.dp_shard > 1
        # ranks holding each data-parallel slot's loss: its tensor-parallel ranks (pipelines: the last stage's)
        self.loss_copies = self.parallel.tp
        self.total_steps = total_steps_for(cfg)
        self.seq_len = cfg.seq_len
        self.global_windows = cfg.train.global_batch_tokens // self.seq_len
        self.state = TrainerState()
        self.stop_signal: int | None = None
        self.stop_requested = False
        self.last_validation: dict[str, dict] | None = None
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

        self.tokenizer = load_tokenizer(cfg)
        self.loader = (
            batch_source
            if batch_source is not None
            else build_mixture_loader(cfg, self.tokenizer, self.dp_rank, self.dp_size)
        )
        self.callbacks: list[Callback] = [
            *default_callbacks(cfg, self.tokenizer),
            *build_callbacks(cfg.callbacks),
            *callbacks,
        ]
        refuse_extra_losses_under_pipeline(self.callbacks, self.parallel.pp)

        # Model: the same seed on every rank gives the same initial weights.
        torch.manual_seed(cfg.train.seed)
        self.raw_model = self._build_model()
        apply_trainable(self.raw_model, cfg.train.trainable)  # before any layout: wrappers keep requires_grad
        self.n_params = count_params(cfg.model).total
        self.flops_per_token = flops_per_token(cfg.model, self.seq_len)
        self.pipeline = None
        if self.parallel.pp > 1:
            self._build_pipeline()
        else:
            self.model = self._wrap(self.raw_model)
            self._materialize(self.raw_model)
        # One process, plain parameters: the loss applies the output projection itself, chunk by chunk of rows
        # (model/loss.py `linear_token_loss`), never holding [rows, vocab] float32 logits. Wrapped/sharded layouts
        # (DDP, FSDP, TP, pipelines) keep logits from the model's forward, where their hooks expect them.
        self.chunked_loss = (
            self.pipeline is None
            and self.model is self.raw_model
            and type(self.raw_model.output.weight) is torch.nn.Parameter
        )
        if lr_scale_fn is None and cfg.model.moe is not None:
            from skyloom.train.moe import lr_scale_fn_for

            lr_scale_fn = lr_scale_fn_for(cfg.model.moe)
        p = self.parallel
        zero1_group = sub_mesh(self.mesh, "dp_replicate").get_group() if p.zero1_applies else None
        self.optimizer = build_optimizer(
            self.raw_model, cfg.train, zero1=zero1_group is not None, zero1_group=zero1_group, lr_scale_fn=lr_scale_fn
        )
        # one process or DDP on a fused AdamW: the clip's scaling happens inside the optimizer's kernel
        self.clip_folded = self.pipeline is None and p.ep == 1 and clips_in_step(self.optimizer)

        self.checkpointer = Checkpointer(
            cfg,
            self.run_dir,
            self.env,
            model=self.model,
            raw_model=self.raw_model,
            optimizer=self.optimizer,
            loader=self.loader,
            state=self.state,
            callbacks=CallbackStates(self.callbacks),
            total_steps=self.total_steps,  # sharded (DCP) checkpoints:
            fsdp=self.fsdp or self.pipeline is not None or self.parallel.ep > 1 or self.parallel.tp > 1,
            tokenizer=self.tokenizer,
            verify=verify,
            log=self.log,
        )
        start = self.checkpointer.start(resume)
        self.logger = MetricsLogger(
            self.run_dir,
            self.total_steps,
            enabled=self.env.is_main,
            tensorboard=cfg.train.tensorboard,
            log_every=cfg.train.log_every,
            initial_step=self.step,
            wandb=cfg.train.wandb,
            hparams=to_dict(cfg),  # the resolved config, as RUN_DIR/config.yaml holds it
            resume=start.resumed_from is not None,  # trackers continue their run only where the steps do
        )
        self.checkpointer.logger = self.logger
        self.checkpointer.report_start(start)

    # ---- the loop's counters (TrainerState, checkpointed) ----

    step = property(lambda self: self.state.step, lambda self, v: setattr(self.state, "step", v))
    tokens = property(lambda self: self.state.tokens, lambda self, v: setattr(self.state, "tokens", v))
    bad_steps = property(lambda self: self.state.bad_steps, lambda self, v: setattr(self.state, "bad_steps", v))
    skipped_steps = property(
        lambda self: self.state.skipped_steps, lambda self, v: setattr(self.state, "skipped_steps", v)
    )

    @property
    def last_checkpoint(self) -> Path | None:
        return self.checkpointer.last_checkpoint

    @property
    def validation(self):
        """The validation sets' monitor (None without `validation.sets`)."""
        from skyloom.train.standard_callbacks import Validation

        return next((cb.monitor for cb in self.callbacks if isinstance(cb, Validation)), None)

    # ---- set-up pieces ----

    def log(self, text: str) -> None:
        if self.env.is_main:
            (self.logger.console if self.logger is not None else self._print)(text)

    def _build_model(self) -> Transformer:
        """The model on `meta`: no storage until the layout is applied (`_materialize`), so a rank never holds
        more than its shards — a 13B model is not built 8 times over on an 8-GPU node."""
        with torch.device("meta"):
            model = Transformer(self.cfg.model)
        return model

    def _materialize(self, model: torch.nn.Module) -> None:
        """Storage for this rank's part of a meta-built model (after FSDP/TP/EP sharding, before DDP), then the
        documented init from the run's seed — a function of (seed, parameter name), so every layout starts from
        the same full weights. A model already materialised is left alone."""
        local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
        if not any(t.device.type == "meta" for t in local):
            return
        model.to_empty(device=self.device)
        torch.manual_seed(self.cfg.train.seed)
        model.init_weights()

    def _build_pipeline(self) -> None:
        """Pipeline stages (train/parallel/pipeline.py): `raw_model` and `model` become this rank's part (its stages'
        modules under their full-model names); the schedule runs the stages."""
        from skyloom.train.parallel.pipeline import build_pipeline

        n_microbatches = self.global_windows // (self.dp_size * self.cfg.train.micro_batch_size)
        self._pp_losses: list[torch.Tensor] = []
        self._pp_scale = 0.0
        self.pipeline = build_pipeline(
            self.raw_model,
            self.parallel,
            self.mesh,
            self.env.rank,
            self.device,
            n_microbatches=n_microbatches,
            loss_fn=self._pipeline_loss,
            wrap=lambda stage: self._wrap(stage, ddp=False),
        )
        self.raw_model = self.model = self.pipeline.rank_model

    def _pipeline_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The last stage's loss of one micro-batch: sum of token losses × dp / global targets (as without PP)."""
        token_loss = lm_loss.token_loss(logits, labels)
        self._pp_losses.append(token_loss.detach())
        return token_loss * self._pp_scale

    def _pipeline_forward_backward(self, batches: list, n_global: int) -> torch.Tensor:
        if any(b.position_ids is not None or b.attn_mask is not None for b in batches):
            raise ValueError(
                "pipeline parallelism runs plain windows only (no per-sample positions or attention "
                "masks); train this data with train.parallel.pp: 1"
            )
        self._pp_scale = self.dp_size / max(n_global, 1)
        self._pp_losses = []
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            # MoE aux losses: weight 1/len(batches) per micro-batch, as `extra / len(batches)` below
            inputs, labels = torch.cat([b.input_ids for b in batches]), torch.cat([b.labels for b in batches])
            self.pipeline.step(inputs, labels, aux_loss_scale=1.0 / len(batches))
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        # only on the rank holding the last stage; the first step's shape inference may call the loss on garbage
        for token_loss in self._pp_losses[-len(batches) :]:
            loss_sum += token_loss.double()
        return loss_sum

    def _wrap(self, model: torch.nn.Module, ddp: bool = True) -> torch.nn.Module:
        """The layout applied to the model (or one pipeline stage, `ddp=False`): train/parallel/apply.py."""
        mixed_precision = self.autocast_dtype
        if self.fsdp:
            self.autocast_dtype = None  # FSDP2's MixedPrecisionPolicy casts; no autocast on top
        return parallelize(
            model,
            self.parallel,
            self.mesh,
            device=self.device,
            mixed_precision=mixed_precision,
            compile=self.cfg.train.compile,
            activation_checkpointing=self.cfg.train.activation_checkpointing,
            materialize=self._materialize,
            ddp=ddp,
        )

    def plan_text(self, rows=None) -> str:
        layout = self.parallel.describe()
        return plan_text(
            self.cfg,
            self.loader,
            self.run_dir,
            f"{self.device} × {self.env.world_size} rank(s), {layout}, {self.precision_name}",
            self.dp_size,
            rows,
        )

    # ---- hooks, validation, checkpoints ----

    def _call(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def record_validation(self, results: dict[str, dict]) -> None:
        """A validation result: to metrics.jsonl, `last_validation`, and every callback's `on_validation`."""
        self.logger.val(self.step, self.tokens, results)
        self.last_validation = results
        self._call("on_validation", results)

    def validate(self) -> dict[str, dict] | None:
        """Evaluate the validation sets now (None without any)."""
        from skyloom.train.standard_callbacks import Validation

        found = next((cb for cb in self.callbacks if isinstance(cb, Validation)), None)
        return found.evaluate(self) if found is not None else None

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (collective: every rank must call it)."""
        path = self.checkpointer.save()
        if self.env.is_main:
            self._call("on_checkpoint", path)
        return path

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

    def _forward_backward(self, batches: list, n_global: int) -> torch.Tensor:
        """Every micro-batch's forward and backward; returns the sum of token losses (this rank, float64)."""
        if self.pipeline is not None:
            return self._pipeline_forward_backward(batches, n_global)
        dp = self.dp_size
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with (
                self._sync_context(last),
                torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None),
            ):
                inputs = dict(position_ids=batch.position_ids, attn_mask=batch.attn_mask)
                if self.chunked_loss:  # float32 sum over labels ≠ -100, without the whole batch's logits
                    hidden = self.model(batch.input_ids, **inputs, return_hidden=True)
                    token_loss = lm_loss.linear_token_loss(hidden, self.raw_model.output.weight, batch.labels)
                else:
                    logits = self.model(batch.input_ids, **inputs)
                    token_loss = lm_loss.token_loss(logits, batch.labels)  # float32 sum over labels ≠ -100
                # gradient of sum/n_global; ×dp because DDP/FSDP average gradients over the data-parallel ranks
                loss = token_loss * (dp / max(n_global, 1))
                for cb in self.callbacks:
                    extra = cb.extra_loss(self, batch)
                    if extra is not None:
                        loss = loss + extra / len(batches)
                loss.backward()
            loss_sum += token_loss.detach().double()
        return loss_sum

    def _clip_gradients(self) -> float:
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip > 0 else float("inf")
        if self.pipeline is None and self.parallel.ep > 1:  # experts sharded beside plain weights
            from skyloom.train.parallel.expert import clip_grad_norm_ as clip_with_experts

            return float(clip_with_experts(self.model.parameters(), max_norm))
        if self.clip_folded:
            return clip_in_step(self.optimizer, self.model.parameters(), max_norm)
        if self.pipeline is None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
            return float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        from skyloom.train.parallel.pipeline import clip_grad_norm_over_stages

        return clip_grad_norm_over_stages(self.model.parameters(), max_norm, sub_mesh(self.mesh, "pp").get_group())

    def train_step(self) -> dict[str, Any]:
        self._call("pre_step")
        batches = [b.to(self.device) for b in self.loader.next_batches()]
        n_local = sum(b.n_targets for b in batches)
        # every rank of one data-parallel slot (its pipeline stages, tensor-parallel ranks) holds the same batch
        copies = self.env.world_size // self.dp_size
        n_global = (
            int(all_reduce_sum(torch.tensor([n_local], dtype=torch.float64, device=self.device)).item()) // copies
        )
        loss_sum = self._forward_backward(batches, n_global)
        self._call("post_backward")
        grad_value = self._clip_gradients()
        stop = 1.0 if self.stop_signal is not None else 0.0
        totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(stop, dtype=torch.float64, device=self.device)]))
        loss_value = float(totals[0]) / self.loss_copies / max(n_global, 1)
        self.stop_requested = float(totals[1]) > 0
        lr = lr_at(self.step, self.cfg.train, self.total_steps)
        finite = math.isfinite(loss_value) and math.isfinite(grad_value)
        if finite:
            set_lr(self.optimizer, lr)
            self._call("pre_optim_step")
            self.optimizer.step()
            self.bad_steps = 0
        else:  # the update is skipped; NonFiniteGuard logs it and applies the abort policy
            self.bad_steps += 1
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.clip_folded:
            self.optimizer.grad_scale = None
        self.step += 1
        self.tokens += n_global
        metrics = {
            "step": self.step,
            "tokens": self.tokens,
            "loss": loss_value,
            "lr": lr,
            "grad_norm": grad_value,
            "skipped": not finite,
        }
        if isinstance(self.loader, MixtureLoader) and len(self.loader.sources) > 1:
            metrics.update({f"weight/{k}": v for k, v in self.loader.current_weights().items()})
        self._call("post_step", metrics)
        return metrics

    def _sync_context(self, sync: bool):
        if self.fsdp:
            self.model.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        if not sync and hasattr(self.model, "no_sync"):  # DDP
            return self.model.no_sync()
        return contextlib.nullcontext()

    def _checkpoint_now(self) -> bool:
        """Save at `checkpoint.every` and on a stop; a checkpoint due inside a streak of non-finite steps is
        deferred (the weights are unchanged, but the streak may end in an abort: the last one before it is kept)."""
        every = self.cfg.checkpoint.every
        if not ((every and self.step % every == 0) or self.stop_requested):
            return False
        if self.bad_steps and not self.stop_requested:
            self.logger.event(self.step, "checkpoint_deferred", reason="in a run of non-finite steps")
            return False
        return True

    def fit(self) -> str:
        """Train to the end (or to a signal); returns "finished" or "interrupted"."""
        previous = self._install_signals()
        self.stop_requested = False
        self.last_validation = None
        last_saved = -1
        try:
            self._call("on_train_start")
            if self.step >= self.total_steps:
                self.log(f"the run already finished ({self.step} of {self.total_steps} steps); nothing to do")
                return "finished"
            while self.step < self.total_steps:
                metrics = self.train_step()
                self.logger.train(metrics)
                self._call("on_step_end", metrics)
                if self._checkpoint_now():
                    self.save_checkpoint()
                    last_saved = self.step
                if self.stop_requested:
                    name = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal on another rank"
                    self.logger.event(self.step, "interrupted", signal=name)
                    self.log(f"stopped by {name} at step {self.step}; checkpoint saved — continue with --resume")
                    return "interrupted"
            self._call("on_train_end")
            if self.cfg.checkpoint.save_final and last_saved != self.step:
                self.save_checkpoint()
            self.logger.event(self.step, "finished", tokens=self.tokens, skipped_steps=self.skipped_steps)
            return "finished"
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            with contextlib.suppress(OSError):  # a full disk must not hide the error that ended the run
                self.logger.close()
