"""`skyloom plan RECIPE [KEY=VALUE …] [--root DIR] [--gpus N] [--gpu NAME] [--mfu X] [--peak-tflops T] [--json F]`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from skyloom.commandline import add_command, add_config_arguments, option
from skyloom.config import ConfigError


@dataclass
class PlanCommandConfig:
    """`skyloom plan`'s arguments; the recipe itself is RECIPE/recipe.yaml plus the overrides."""

    recipe: str = option(positional=True, metavar="RECIPE", help="recipe directory (or its recipe.yaml)")
    overrides: list[str] = option(
        [],
        positional=True,
        nargs="*",
        metavar="KEY=VALUE",
        help="SESSION.key=value changes one session's config; other keys change recipe.yaml",
    )
    root: str = option(".", help="workspace root the sessions' relative paths start from")
    gpus: int | None = option(None, help="number of GPUs (default: the recipe's hardware.gpus)")
    gpu: str | None = option(None, help="GPU model for the peak FLOP/s, e.g. A800, H100-SXM, H200")
    peak_tflops: float | None = option(None, help="peak bf16 TFLOP/s per GPU (overrides --gpu's)")
    mfu: float | None = option(None, help="model FLOPs utilisation to assume, e.g. 0.45")
    pp: int | None = option(
        None,
        help="pipeline-parallel degree of the layout (replaces the sessions' "
        "train.parallel.pp; data parallel = gpus / (pp × tp))",
    )
    gpu_mem: float = option(80.0, metavar="GB", help="memory per GPU for the OOM verdict (an '80 GB' card = 80 GiB)")
    memory_profile: str | None = option(
        None,
        help="bytes per parameter the memory plan assumes: torch-amp (skyloom's bf16, the default), fp32, "
        "megatron-bf16 (the report's Megatron-LM: Table 10), zero-bf16",
    )
    dense_gpu_hours: float | None = option(
        None,
        metavar="H",
        help="for a recipe with MoE sessions: GPU-hours the dense checkpoint cost, if it was "
        "trained outside this recipe (default: the recipe's own dense sessions); feeds the "
        "Skywork-MoE §3.3 upcycle-or-from-scratch advice",
    )
    json: str | None = option(None, metavar="FILE", help="also write the plan as JSON")


def _load(args: argparse.Namespace):
    """(the recipe with the hardware flags applied, the hardware to plan for)."""
    from skyloom.recipes.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    hw = recipe.config.hardware
    changes = {
        k: v
        for k, v in (
            ("gpus", args.gpus),
            ("gpu", args.gpu),
            ("mfu", args.mfu),
            ("peak_tflops", args.peak_tflops),
            ("pipeline_parallel", args.pp),
        )
        if v is not None
    }
    if "gpu" in changes and args.peak_tflops is None:
        changes["peak_tflops"] = None  # a named GPU brings its own peak
    hw = dataclasses.replace(hw, **changes)
    recipe.config = dataclasses.replace(recipe.config, hardware=hw)
    return recipe, hw


def cmd_plan(args: argparse.Namespace) -> int:
    from skyloom.recipes.plan import format_plan, plan_recipe

    try:
        recipe, hw = _load(args)
        plan = plan_recipe(
            recipe,
            args.root,
            hw,
            dense_gpu_hours=args.dense_gpu_hours,
            gpu_mem_gb=args.gpu_mem,
            memory_profile=args.memory_profile,
        )
    except (ConfigError, ValueError, KeyError) as err:
        print(f"skyloom: error: {err}", file=sys.stderr)
        return 2
    print(format_plan(plan))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(plan, indent=1) + "\n", encoding="utf-8")
    over = [f"{s['session']}: {', '.join(s['over_cap'])}" for s in plan["sessions"] if s["over_cap"]]
    if over:
        print(f"skyloom: error: the plan reads sources beyond their epoch cap ({'; '.join(over)})", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    p = add_command(
        sub,
        "plan",
        "print a recipe's sessions, data mixture, epochs and GPU-hours without training",
        description=(
            "Plan every session of a recipe directory (recipe.yaml + one train config per session): model size,\n"
            "tokens, steps, batch arithmetic, parallel layout, per-source mixture with shares and epochs (summed over\n"
            "sessions that continue the data loader), GPU-hours/days at the given hardware and MFU, and memory per GPU\n"
            "(parameters, gradients, optimizer, activations, buffers; skyloom.model.memory) with an OOM verdict.\n"
            "Source sizes come from token shards under --root when they exist, else from the recipe's declared_tokens.\n\n"
            "examples:\n"
            "  skyloom plan recipes/skywork-13b\n"
            "  skyloom plan recipes/skywork-13b --gpus 1024 --gpu H100-SXM --mfu 0.45\n"
            "  skyloom plan recipes/skywork-13b stage2.train.max_tokens=2.6e11 hardware.mfu=0.5\n"
            "  skyloom plan recipes/skywork-13b --memory-profile megatron-bf16   # the report's Table 10 set-up\n"
            "  skyloom plan recipes/demo --root runs/demo            # the demo's real shard sizes"
        ),
    )
    add_config_arguments(p, PlanCommandConfig, resolve=lambda args: _load(args)[0].config)
    p.set_defaults(handler=cmd_plan)
