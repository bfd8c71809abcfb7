"""`skyloom train CONFIG [key=value …] [--resume] [--out RUN_DIR] [--plan-only]`."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from skyloom.commandline import add_command, add_config_arguments, option
from skyloom.config import config_file, load_config


@dataclass
class TrainCommand:
    """`skyloom train`'s arguments; the run itself is the YAML's RunConfig (--print-config shows it resolved)."""

    config: str = option(
        positional=True, metavar="CONFIG", help="YAML recipe (or a run directory to reuse its config.yaml)"
    )
    overrides: list[str] = option(
        [],
        positional=True,
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.lr=3e-4 (or --train.lr=3e-4)",
    )
    out: str | None = option(
        None, metavar="RUN_DIR", help="run directory (default: out_dir from the config, else runs/<config name>)"
    )
    resume: bool = option(
        False, help="continue from the newest intact checkpoint in RUN_DIR (broken ones are reported and skipped)"
    )
    overwrite: bool = option(False, help="delete an existing run's metrics and checkpoints first")
    no_verify: bool = option(
        False,
        help="do not check checkpoints (--resume, train.init_from) against their "
        "manifest's sha256 (faster; --resume still checks sizes; an FSDP checkpoint's "
        "pickled dcp/.metadata is then opened unverified)",
    )
    plan_only: bool = option(False, help="print the run plan (and check it) without training")


# What the config, the data or the disk can make impossible: `skyloom: error: …`, exit 2, for the run and for
# --plan-only alike (PlanError and ConfigError are ValueErrors; OSError: e.g. the disk filled up).
RUN_ERRORS = (ValueError, OSError)


def _fail(err: BaseException) -> int:
    print(f"skyloom: error: {err}", file=sys.stderr)
    return 2


def memory_warning(cfg, world_size: int, gpu_bytes: float) -> str | None:
    """The planner's (skyloom.model.memory) warning when the run's layout needs more than `gpu_bytes` per GPU, else
    None. A layout the world cannot take is left for the trainer to refuse with its own error."""
    from skyloom.model.memory import GB, format_memory, layout_from_parallel, plan_memory

    try:
        layout = layout_from_parallel(
            cfg.train.parallel,
            world_size,
            micro_batch_size=cfg.train.micro_batch_size,
            seq_len=cfg.seq_len,
            global_batch=max(1, cfg.train.global_batch_tokens // cfg.seq_len),
            precision="torch-amp",
            activation_checkpointing=cfg.train.activation_checkpointing,
        )
    except ValueError:
        return None
    plan = plan_memory(cfg.model, layout, gpu_bytes)
    if plan.fits:
        return None
    return (
        f"skyloom: warning: the memory planner expects {plan.peak.total / GB:.1f} GB per GPU for this layout, "
        f"more than the device's {gpu_bytes / GB:.1f} GB; it will likely run out of memory (shard more: "
        f"train.parallel dp_shard / pp / tp, or train.activation_checkpointing: true)\n{format_memory(plan)}"
    )


def _warn_if_it_will_not_fit(cfg) -> None:
    """On CUDA only, before training starts: compare the planner's figure with this GPU's memory (stderr)."""
    import os

    import torch

    if cfg.train.device == "cpu" or not torch.cuda.is_available():
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    total = torch.cuda.get_device_properties(local_rank % torch.cuda.device_count()).total_memory
    warning = memory_warning(cfg, int(os.environ.get("WORLD_SIZE", "1")), float(total))
    if warning:
        print(warning, file=sys.stderr)


def load_run_config(spec: str, overrides: list[str]):
    """A YAML recipe, or a run directory (its saved config.yaml), plus dotted overrides."""
    from skyloom.train.config import RunConfig

    return load_config(RunConfig, spec, overrides), config_file(spec)


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from skyloom.rundir import clear_outputs, open_run_dir, resolve_run_dir

    cfg, _ = load_run_config(args.config, args.overrides)
    run_dir = resolve_run_dir(args.out, args.config, cfg.out_dir, "runs")
    is_main = int(os.environ.get("RANK", "0")) == 0
    if args.plan_only:
        try:
            return _plan_only(cfg, run_dir)
        except RUN_ERRORS as err:
            return _fail(err)
    from skyloom.train.distributed import shutdown
    from skyloom.train.trainer import Trainer, TrainingAborted

    # the lock is taken before anything in RUN_DIR is touched; the trainer saves the resolved config.yaml
    with open_run_dir(
        run_dir,
        markers=("metrics.jsonl", "checkpoints"),
        resume=args.resume,
        overwrite=args.overwrite,
        is_main=is_main,
        clear=clear_outputs(("checkpoints", "metrics.jsonl")),
        overwrite_hint="delete its metrics and checkpoints",
    ):
        try:
            if is_main:
                _warn_if_it_will_not_fit(cfg)
            from skyloom.train.prepare import prepare_run_data

            prepare_run_data(cfg)  # tokenizer training and packing: before the Trainer, which only builds
            trainer = Trainer(cfg, run_dir, resume=args.resume, verify=not args.no_verify)
            rows = trainer.loader.plan() if hasattr(trainer.loader, "plan") else None
            trainer.log(trainer.plan_text(rows))
            if rows is not None:
                trainer.loader.check_plan(rows)
            status = trainer.fit()
            if is_main:
                _print_summary(trainer)
            return 0 if status == "finished" else 128 + int(trainer.stop_signal or 15)
        except (TrainingAborted, *RUN_ERRORS) as err:
            return _fail(err)
        finally:
            shutdown()


def _plan_only(cfg, run_dir: Path) -> int:
    """Print the plan and check it; errors propagate to cmd_train's one error path (RUN_ERRORS)."""
    from skyloom.train.prepare import prepare_data
    from skyloom.train.trainer import build_mixture_loader, load_tokenizer, plan_text

    prepare_data(cfg.data)
    loader = build_mixture_loader(cfg, load_tokenizer(cfg))
    rows = loader.plan()
    print(plan_text(cfg, loader, run_dir, "as launched (this printout assumes 1 rank)", 1, rows))
    loader.check_plan(rows)
    print("plan OK")
    return 0


def _print_summary(trainer) -> None:
    import json

    last_train, first_train = None, None
    for line in (trainer.run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "train" and rec.get("loss") is not None:
            first_train = first_train or rec
            last_train = rec
    if last_train:
        print(
            f"train loss: {first_train['loss']:.4f} (step {first_train['step']}) → {last_train['loss']:.4f} "
            f"(step {last_train['step']}), {trainer.tokens:,} tokens"
        )
    for name, r in (trainer.last_validation or {}).items():
        print(f"validation {name}: loss {r['loss']:.4f}, perplexity {r['ppl']:.2f} ({r['eval_tokens']:,} tokens)")
    from skyloom.train.checkpointing import latest_complete

    # not the newest name on disk: that may be a broken leftover from before a resume fell back
    found = trainer.last_checkpoint or latest_complete(trainer.run_dir / "checkpoints", checksums=False)[0]
    if found is not None:
        print(f"checkpoint: {found}  (open with skyloom.load_model)")


def register(sub) -> None:
    p = add_command(
        sub,
        "train",
        "pretrain a model from a YAML recipe (single process, or torchrun for DDP/FSDP)",
        description=(
            "Train the model a recipe describes on its data mixture and write RUN_DIR/config.yaml, metrics.jsonl\n"
            "and checkpoints/step_XXXXXXXX/ (safetensors weights + optimizer, loader and RNG state).\n"
            "The run plan (model size, batch arithmetic, per-source tokens and epochs) is printed first;\n"
            "a plan that repeats a source more than its epoch cap is refused.\n\n"
            "examples:\n"
            "  skyloom train recipes/tiny.yaml\n"
            "  skyloom train recipes/tiny.yaml train.max_steps=50 --out runs/quick\n"
            "  skyloom train recipes/tiny.yaml --resume               # continue after a crash or kill\n"
            "  torchrun --nproc_per_node 2 -m skyloom train recipes/tiny.yaml   # DDP + ZeRO-1\n"
            "  skyloom train recipes/tiny.yaml --plan-only"
        ),
    )
    add_config_arguments(p, TrainCommand, resolve=lambda args: load_run_config(args.config, args.overrides)[0])
    p.set_defaults(handler=cmd_train)
