"""`skyloom sft CONFIG [k=v …]` and `skyloom skymath CONFIG [k=v …]`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from skyloom.commandline import add_command


def _run_dir(args, cfg, config_path: Path, default_root: str) -> Path:
    if args.out:
        return Path(args.out)
    if cfg.out_dir:
        return Path(cfg.out_dir)
    return Path(default_root) / config_path.stem


def _prepare_dir(run_dir: Path, args, files: tuple[str, ...], is_main: bool = True) -> bool:
    """Whether the run may start in RUN_DIR (called with its lock held); --overwrite empties it, lock file kept."""
    from skyloom.train.run_lock import clear_run_dir

    started = any((run_dir / f).exists() for f in files)
    if started and not args.resume:
        if not args.overwrite:
            print(f"skyloom: error: {run_dir} already holds a run; continue it with --resume, choose another --out, "
                  "or pass --overwrite to start over", file=sys.stderr)
            return False
        if is_main:
            clear_run_dir(run_dir)
    return True


def cmd_sft(args: argparse.Namespace) -> int:
    from skyloom.config import apply_overrides, read_yaml, save
    from skyloom.sft.config import build_sft_config
    from skyloom.train.distributed import shutdown
    from skyloom.train.run_lock import hold_run_dir
    from skyloom.train.trainer import TrainingAborted

    config_path = Path(args.config)
    if config_path.is_dir():
        config_path = config_path / "sft.yaml"
    raw = apply_overrides(read_yaml(config_path), args.overrides)
    cfg = build_sft_config(raw)
    run_dir = _run_dir(args, cfg, config_path, "runs/sft")
    is_main = int(os.environ.get("RANK", "0")) == 0
    with hold_run_dir(run_dir) if is_main else contextlib.nullcontext():  # before anything in RUN_DIR is touched
        if not _prepare_dir(run_dir, args, ("metrics.jsonl", "checkpoints", "init"), is_main):
            return 2
        run_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        (run_dir / "sft.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
        from skyloom.sft.runner import run_sft

        try:
            summary = run_sft(cfg, run_dir, resume=args.resume)
        except (TrainingAborted, ValueError, FileNotFoundError) as err:
            print(f"skyloom: error: {err}", file=sys.stderr)
            return 2
        finally:
            shutdown()
    print(json.dumps({k: summary.get(k) for k in ("status", "steps", "val", "checkpoint", "hf")}, indent=1))
    return 0 if summary["status"] == "finished" else 130


def cmd_skymath(args: argparse.Namespace) -> int:
    from skyloom.sft.skymath import run_skymath_command

    return run_skymath_command(args)


def register(sub) -> None:
    p = add_command(
        sub, "sft", "supervised fine-tuning on instruction data with a chat template (prompt-masked, packed)",
        description=(
            "Fine-tune a skyloom checkpoint (or an imported Hugging Face Llama directory) on instruction JSONL\n"
            "(Alpaca instruction/input/output, messages, GSM8K question/answer, prompt/completion).\n"
            "The chat template's special tokens are added to the tokenizer and the embedding/output rows grown;\n"
            "only answer tokens carry a loss; samples are packed into full windows with positions and attention\n"
            "reset per sample (data.layout=padded for one sample per window). Optimizer, schedule, checkpoints,\n"
            "resume and metrics are the training engine's (docs/training.md); see docs/sft.md.\n\n"
            "example: skyloom sft recipes/sft/gsm8k-alpaca.yaml train.lr=1e-4\n"
            "         skyloom sft runs/sft/gsm8k-alpaca --resume"
        ),
    )
    p.add_argument("config", metavar="CONFIG", help="SFT YAML (or a run directory to reuse its sft.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.layout=padded")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: out_dir, else runs/sft/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.set_defaults(handler=cmd_sft)

    q = add_command(
        sub, "skymath", "SkyMath self-compare fine-tuning in rounds (sample, grade, build data, fine-tune, evaluate)",
        description=(
            "Each round: sample K solutions per training question from the current model; grade them against\n"
            "the reference answer and check every <<a=b>> annotation; build training data from the references,\n"
            "the model's own correct distinct solutions (RFT) and self-compare examples (the first step where a\n"
            "wrong solution departs from the reference, why, and the corrected solution); fine-tune on the mix\n"
            "with `skyloom sft`'s engine; evaluate; next round. Each kind can be switched off (plain SFT and RFT\n"
            "are ablations of this command). Rounds are recorded in RUN_DIR/rounds.jsonl and resume with\n"
            "--resume. See docs/sft.md.\n\n"
            "example: skyloom skymath recipes/sft/skymath-gsm8k.yaml rounds=2 mix.compare=0   # RFT ablation"
        ),
    )
    q.add_argument("config", metavar="CONFIG", help="SkyMath YAML (or a run directory to reuse its skymath.yaml)")
    q.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. mix.compare=0")
    q.add_argument("--out", metavar="RUN_DIR", help="run directory (default: out_dir, else runs/skymath/<name>)")
    q.add_argument("--resume", action="store_true", help="continue the interrupted round")
    q.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    q.set_defaults(handler=cmd_skymath)
