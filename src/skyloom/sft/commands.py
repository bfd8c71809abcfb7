"""`skyloom sft CONFIG [k=v …]` and `skyloom skymath CONFIG [k=v …]`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

from skyloom.commandline import add_command, add_config_arguments, option
from skyloom.config import load_config, to_dict


@dataclass
class SFTCommand:
    """`skyloom sft`'s arguments; the run itself is the YAML's SFTConfig (--print-config shows it resolved)."""

    config: str = option(positional=True, metavar="CONFIG", help="SFT YAML (or a run directory to reuse its sft.yaml)")
    overrides: list[str] = option(
        [], positional=True, nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. data.layout=padded"
    )
    out: str | None = option(
        None, metavar="RUN_DIR", help="run directory (default: out_dir, else runs/sft/<config name>)"
    )
    resume: bool = option(False, help="continue from the newest intact checkpoint")
    overwrite: bool = option(False, help="delete an existing run directory first")


@dataclass
class SkyMathCommand:
    """`skyloom skymath`'s arguments; the run itself is the YAML's SkyMathConfig."""

    config: str = option(
        positional=True, metavar="CONFIG", help="SkyMath YAML (or a run directory to reuse its skymath.yaml)"
    )
    overrides: list[str] = option(
        [], positional=True, nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. mix.compare=0"
    )
    out: str | None = option(None, metavar="RUN_DIR", help="run directory (default: out_dir, else runs/skymath/<name>)")
    resume: bool = option(False, help="continue the interrupted round")
    overwrite: bool = option(False, help="delete an existing run directory first")


def load_sft(spec: str, overrides: list[str]):
    """An SFT YAML, or a run directory (its saved sft.yaml), plus dotted overrides → SFTConfig."""
    from skyloom.sft.config import build_sft_config

    return load_config(None, spec, overrides, saved_name="sft.yaml", builder=build_sft_config)


def resolved_sft_mapping(cfg) -> dict:
    """The resolved SFT config to save in RUN_DIR/sft.yaml: every default written out, and with the step count
    still to come from data.epochs when it did (the loader's placeholder max_steps is not a setting)."""
    plain = to_dict(cfg)
    if plain.pop("steps_from_epochs", False):
        plain["train"]["max_steps"] = None
        plain["train"]["max_tokens"] = None
    return plain


def cmd_sft(args: argparse.Namespace) -> int:
    from skyloom.rundir import open_run_dir, resolve_run_dir
    from skyloom.train.distributed import shutdown
    from skyloom.train.trainer import TrainingAborted

    cfg = load_sft(args.config, args.overrides)
    run_dir = resolve_run_dir(args.out, args.config, cfg.out_dir, "runs/sft")
    is_main = int(os.environ.get("RANK", "0")) == 0
    with open_run_dir(
        run_dir,
        markers=("metrics.jsonl", "checkpoints", "init"),
        resume=args.resume,
        overwrite=args.overwrite,
        is_main=is_main,
        save=("sft.yaml", resolved_sft_mapping(cfg)),
    ):
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


def load_skymath(spec: str, overrides: list[str]):
    """A SkyMath YAML, or a run directory (its saved skymath.yaml), plus dotted overrides → SkyMathConfig."""
    from skyloom.sft.skymath import SkyMathConfig

    return load_config(SkyMathConfig, spec, overrides, saved_name="skymath.yaml")


def cmd_skymath(args: argparse.Namespace) -> int:
    from skyloom.rundir import open_run_dir, resolve_run_dir
    from skyloom.sft.skymath import run_skymath

    cfg = load_skymath(args.config, args.overrides)
    run_dir = resolve_run_dir(args.out, args.config, cfg.out_dir, "runs/skymath")
    # locked before anything in RUN_DIR is touched (its round_*/sft runs are inside it); the resolved config saved
    with open_run_dir(
        run_dir,
        markers=("rounds.jsonl", "round_*"),
        resume=args.resume,
        overwrite=args.overwrite,
        save=("skymath.yaml", cfg),
    ):
        try:
            rounds = run_skymath(cfg, run_dir)
        except KeyboardInterrupt as err:
            print(f"skyloom: {err or 'interrupted'}", file=sys.stderr)
            return 130
        except (ValueError, FileNotFoundError) as err:
            print(f"skyloom: error: {err}", file=sys.stderr)
            return 2
    for r in rounds:
        print(json.dumps({"round": r["round"], "eval": {k: v["acc"] for k, v in r["eval"].items()}}))
    return 0


def register(sub) -> None:
    p = add_command(
        sub,
        "sft",
        "supervised fine-tuning on instruction data with a chat template (prompt-masked, packed)",
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
    add_config_arguments(
        p, SFTCommand, resolve=lambda args: resolved_sft_mapping(load_sft(args.config, args.overrides))
    )
    p.set_defaults(handler=cmd_sft)

    q = add_command(
        sub,
        "skymath",
        "SkyMath self-compare fine-tuning in rounds (sample, grade, build data, fine-tune, evaluate)",
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
    add_config_arguments(q, SkyMathCommand, resolve=lambda args: load_skymath(args.config, args.overrides))
    q.set_defaults(handler=cmd_skymath)
