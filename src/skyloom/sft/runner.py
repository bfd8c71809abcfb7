"""`skyloom sft` as a function: prepare the base model and tokenizer, lay out the samples, hand everything to
the training engine (`skyloom.train.trainer.Trainer` with an `SFTBatchSource`), export for Hugging Face.

Run directory:
    RUN_DIR/sft.yaml            the SFT config as given (re-run or resume with it)
    RUN_DIR/tokenizer/          base tokenizer + the template's special tokens + chat_template
    RUN_DIR/init/               the base model with grown embedding/output rows (train.init_from points here)
    RUN_DIR/config.yaml, metrics.jsonl, checkpoints/   the trainer's own (docs/training.md)
    RUN_DIR/hf/                 LlamaForCausalLM export carrying the chat template and a generation_config.json
                                that stops at the template's turn end ([SEP]) as well as EOS (export_hf: true)
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from skyloom.sft.config import SFTConfig
from skyloom.sft.data import Sample, encode_conversations, read_conversations
from skyloom.sft.packing import SFTBatchSource, layout_windows, make_batch
from skyloom.tokenizer.chat import Message, TemplateEncoder, get_template
from skyloom.train.callbacks import Callback

Conversations = Sequence[Sequence[Message]]


def base_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, run directory (newest intact checkpoint) or Hugging Face directory."""
    from skyloom.train.trainer import find_checkpoint

    p = Path(path)
    if (p / "config.json").is_file() and not (p / "model.json").is_file():
        return p
    return find_checkpoint(p)


def prepare_base(cfg: SFTConfig, run_dir: Path, log: Callable[[str], None] = print):
    """(init checkpoint dir, tokenizer dir, model config): tokenizer with the template's tokens added and the
    base model's rows grown to match (done once per run directory; a resumed run reuses it)."""
    from skyloom.model.checkpoint import is_skyloom_checkpoint, load_model, read_model_config, save_model
    from skyloom.sft.vocab import add_special_tokens, grow_vocab
    from skyloom.tokenizer.loading import TextTokenizer

    template = get_template(cfg.data.template)
    init_dir, tok_dir = run_dir / "init", run_dir / "tokenizer"
    if is_skyloom_checkpoint(init_dir) and (tok_dir / "tokenizer.json").is_file():
        return init_dir, tok_dir, read_model_config(init_dir)
    base = base_checkpoint(cfg.base)
    tok_src = Path(cfg.tokenizer) if cfg.tokenizer else base
    if not (tok_src / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{tok_src}: no tokenizer.json (set `tokenizer:` to the base model's tokenizer directory)"
        )
    model = load_model(base)
    sft_model_config(cfg, model.config, base, log=lambda _: None)  # a refusal leaves nothing to --overwrite
    old = TextTokenizer.from_dir(tok_src)
    missing = [t for t in template.added_tokens if old.tokenizer.token_to_id(t) is None]
    add_special_tokens(tok_src, tok_dir, template.added_tokens, template.jinja)
    new = TextTokenizer.from_dir(tok_dir)
    if missing or new.vocab_size > model.config.vocab_size:
        new_vocab = max(model.config.vocab_size, new.vocab_size)
        log(
            f"added {missing} to the tokenizer (ids {[new.tokenizer.token_to_id(t) for t in missing]}); "
            f"embedding/output rows {model.config.vocab_size} → {new_vocab}, rows ≥ {old.vocab_size} set to the mean"
        )
        model = grow_vocab(model, new_vocab, old.vocab_size)
    model.config.preset = None
    tmp = run_dir / "init.tmp"
    save_model(model, tmp, {"base": str(base), "template": template.name})
    new.copy_files_to(tmp)
    if init_dir.exists():
        import shutil

        shutil.rmtree(init_dir)
    tmp.replace(init_dir)
    return init_dir, tok_dir, model.config


def sft_model_config(cfg: SFTConfig, model_cfg, base: str | Path, log: Callable[[str], None] = print):
    """(window length, the run's model config). An SFT `data.seq_len` above the base's `max_seq_len` is fine for a
    RoPE model (no weight depends on the length): the run's config is raised to it, so every checkpoint's model.json
    (and the HF export) states the length the model was trained on. A GPT model's learned positions end at
    `max_seq_len`: refused, naming both keys."""
    from skyloom.config import ConfigError

    seq_len = cfg.data.seq_len or model_cfg.max_seq_len
    if seq_len <= model_cfg.max_seq_len:
        return seq_len, model_cfg
    from skyloom.model.arch import arch_spec

    if arch_spec(model_cfg).learned_positions:
        raise ConfigError(
            "data.seq_len",
            f"{seq_len} exceeds the base model's model.max_seq_len="
            f"{model_cfg.max_seq_len} ({base}); a GPT model's learned positions end "
            "there: lower data.seq_len",
        )
    log(
        f"note: data.seq_len={seq_len} exceeds the base model's max_seq_len={model_cfg.max_seq_len} ({base}); "
        f"RoPE has no per-position weights, so this run's model config is raised: max_seq_len "
        f"{model_cfg.max_seq_len} → {seq_len}"
    )
    return seq_len, replace(model_cfg, max_seq_len=seq_len)


def _weighted(samples: list[Sample], weight: float, seed: int) -> list[Sample]:
    """Each sample `floor(weight)` times, plus a fixed random `frac(weight)` share of them once more."""
    whole, frac = int(weight), weight - int(weight)
    out = samples * whole
    if frac > 1e-9:
        order = list(range(len(samples)))
        random.Random(seed).shuffle(order)
        out += [samples[i] for i in sorted(order[: round(frac * len(samples))])]
    return out


def load_samples(
    cfg: SFTConfig,
    encoder: TemplateEncoder,
    seq_len: int,
    extra: dict[str, tuple[Conversations, float]] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    """(train samples, validation samples, per-source counts) from the config's files (plus `extra`
    in-memory sources: name → (conversations, weight))."""
    named: dict[str, tuple[Conversations, float]] = {}
    for name, src in cfg.data.sources.items():
        named[name] = (read_conversations(src.path, src.limit), src.weight)
    named.update(extra or {})
    train, val, report = [], [], {}
    for name, (convs, weight) in named.items():
        samples, cut = encode_conversations(encoder, convs, seq_len + 1)
        seed = cfg.data.seed * 1000003 + zlib.crc32(name.encode())
        held: list[Sample] = []
        if cfg.data.val_fraction > 0 and len(samples) > 1:
            order = list(range(len(samples)))
            random.Random(seed).shuffle(order)
            k = min(max(1, round(cfg.data.val_fraction * len(samples))), len(samples) - 1)
            held_idx = set(order[:k])
            held = [samples[i] for i in sorted(held_idx)]
            samples = [s for i, s in enumerate(samples) if i not in held_idx]
        used = _weighted(samples, weight, seed + 1)
        train += used
        val += held
        report[name] = {
            "records": len(convs),
            "samples": len(samples),
            "held_out": len(held),
            "cut": cut,
            "used_per_epoch": len(used),
            "tokens": sum(len(s) for s in samples),
        }
        if cut:
            log(f"sft data {name}: {cut} of {len(convs)} samples longer than {seq_len + 1} tokens were cut")
    if not train:
        raise ValueError("no SFT training samples (all sources empty or weight 0)")
    return train, val[: cfg.data.val_max_samples], report


@torch.no_grad()
def masked_loss(
    model: torch.nn.Module,
    samples: Sequence[Sample],
    seq_len: int,
    pad_id: int,
    batch_size: int = 8,
    layout: str = "packed",
    device: torch.device | None = None,
) -> tuple[float, int]:
    """Mean answer-token cross-entropy over `samples` (the SFT validation loss) and the number of targets."""
    from skyloom.model.loss import token_loss

    device = device or next(model.parameters()).device
    lengths = [len(s) for s in samples]
    windows = layout_windows(lengths, range(len(samples)), seq_len, layout)
    total, n = 0.0, 0
    was_training = model.training
    model.eval()
    for k in range(0, len(windows), batch_size):
        batch = make_batch([[samples[i] for i in w] for w in windows[k : k + batch_size]], seq_len, pad_id, layout).to(
            device
        )
        logits = model(batch.input_ids, position_ids=batch.position_ids, attn_mask=batch.attn_mask)
        total += float(token_loss(logits, batch.labels))
        n += batch.n_targets
    model.train(was_training)
    return total / max(n, 1), n


class SFTValidation(Callback):
    """Answer-token loss on held-out samples at step 0, every `every` steps and at the end (a `val` line)."""

    def __init__(self, samples: Sequence[Sample], seq_len: int, pad_id: int, every: int, total_steps: int):
        self.samples, self.seq_len, self.pad_id = list(samples), seq_len, pad_id
        self.every, self.total_steps = every, total_steps
        self.last: dict[str, Any] | None = None

    def _run(self, trainer) -> None:
        import math

        loss, n = masked_loss(trainer.raw_model, self.samples, self.seq_len, self.pad_id, device=trainer.device)
        self.last = {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "eval_tokens": n}
        trainer.record_validation({"sft_val": self.last})  # logged, and seen by every callback's on_validation

    def on_train_start(self, trainer) -> None:
        if trainer.step == 0 and self.samples:
            self._run(trainer)

    def post_step(self, trainer, metrics) -> None:
        if self.samples and ((self.every and trainer.step % self.every == 0) or trainer.step == self.total_steps):
            self._run(trainer)


def build_trainer(
    cfg: SFTConfig,
    run_dir: str | Path,
    resume: bool = False,
    extra: dict[str, tuple[Conversations, float]] | None = None,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Callback] = (),
):
    """(trainer, batch source, validation callback, data report): everything `run_sft` runs, set up."""
    from skyloom.tokenizer.loading import TextTokenizer
    from skyloom.train.config import DataConfig, RunConfig, ValidationConfig
    from skyloom.train.trainer import Trainer

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if rank == 0:
        init_dir, tok_dir, model_cfg = prepare_base(cfg, run_dir, log)
    if world > 1:
        from skyloom.train.distributed import barrier, init_distributed

        init_distributed(cfg.train.device)
        barrier()
    if rank != 0:
        from skyloom.model.checkpoint import read_model_config

        init_dir, tok_dir = run_dir / "init", run_dir / "tokenizer"
        model_cfg = read_model_config(init_dir)
    tokenizer = TextTokenizer.from_dir(tok_dir)
    encoder = TemplateEncoder(get_template(cfg.data.template), tokenizer)
    seq_len, model_cfg = sft_model_config(cfg, model_cfg, cfg.base, log)
    if cfg.train.global_batch_tokens % seq_len:
        raise ValueError(
            f"train.global_batch_tokens={cfg.train.global_batch_tokens} is not a multiple of seq_len={seq_len}"
        )
    train_samples, val_samples, report = load_samples(cfg, encoder, seq_len, extra, log)
    global_windows = cfg.train.global_batch_tokens // seq_len
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    if cfg.steps_from_epochs:
        source = SFTBatchSource(
            train_samples,
            seq_len,
            global_windows,
            cfg.train.micro_batch_size,
            cfg.data.epochs,
            pad_id,
            cfg.data.layout,
            cfg.data.seed,
            rank,
            world,
        )
        steps = source.total_steps
    else:
        steps = cfg.train.max_steps or -(-cfg.train.max_tokens // cfg.train.global_batch_tokens)
        source = SFTBatchSource(
            train_samples,
            seq_len,
            global_windows,
            cfg.train.micro_batch_size,
            None,
            pad_id,
            cfg.data.layout,
            cfg.data.seed,
            rank,
            world,
            min_windows=steps * global_windows,
        )
    stats = source.stats()
    train_cfg = replace(cfg.train, max_steps=steps, max_tokens=None, init_from=str(init_dir), init_optimizer=False)
    run_cfg = RunConfig(
        model=model_cfg,
        data=DataConfig(sources={}, seq_len=seq_len, tokenizer=str(tok_dir), seed=cfg.data.seed),
        train=train_cfg,
        validation=ValidationConfig(sets={}),
        checkpoint=cfg.checkpoint,
        out_dir=str(run_dir),
    )
    for section in (run_cfg.model, run_cfg.train, run_cfg):  # built, not build()-loaded: check what build() would
        section.validate()
    val_cb = SFTValidation(val_samples, seq_len, pad_id, cfg.validation.every, steps)
    trainer = Trainer(run_cfg, run_dir, resume=resume, batch_source=source, callbacks=[val_cb, *callbacks], log=log)
    trainer.log(trainer.plan_text())
    trainer.log(
        f"sft data     template {cfg.data.template}, {cfg.data.layout}: {len(train_samples):,} samples/epoch "
        f"in {stats['windows']:,} windows over {len(source.epoch_windows)} epoch(s), "
        f"{stats['samples_per_window']:.2f} samples/window, non-pad share {stats['non_pad_share']:.1%}, "
        f"{stats['target_tokens']:,} answer tokens"
    )
    return trainer, source, val_cb, report


def run_sft(
    cfg: SFTConfig,
    run_dir: str | Path,
    resume: bool = False,
    extra: dict[str, tuple[Conversations, float]] | None = None,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Fine-tune as `cfg` says; returns a summary (status, steps, losses, data stats, checkpoint, hf dir)."""
    from skyloom.train.trainer import find_checkpoint

    run_dir = Path(run_dir)
    trainer, source, val_cb, report = build_trainer(cfg, run_dir, resume, extra, log, callbacks)
    stats, steps, tok_dir, model_cfg = source.stats(), trainer.total_steps, run_dir / "tokenizer", trainer.cfg.model
    status = trainer.fit()
    summary: dict[str, Any] = {
        "status": status,
        "steps": trainer.step,
        "total_steps": steps,
        "data": report,
        "layout": stats,
        "val": val_cb.last,
        "tokens": trainer.tokens,
    }
    if status == "finished" and trainer.env.is_main:
        final = find_checkpoint(run_dir)
        summary["checkpoint"] = str(final)
        from skyloom.model.arch import arch_spec

        if cfg.export_hf and arch_spec(model_cfg).hf_architecture and model_cfg.moe is None:
            from skyloom.model.checkpoint import load_model
            from skyloom.model.hf import export_hf

            export_hf(load_model(final), run_dir / "hf", source_dir=tok_dir)
            summary["hf"] = str(run_dir / "hf")
            trainer.log(
                f"exported {run_dir / 'hf'} (LlamaForCausalLM; tokenizer with the {cfg.data.template} chat template, "
                "generation stops at its turn end)"
            )
    return summary
