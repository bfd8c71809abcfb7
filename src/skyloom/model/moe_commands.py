"""`skyloom upcycle`: a dense checkpoint → an MoE checkpoint, and the §3.3 advice on whether to do it."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from skyloom.commandline import add_command, add_config_arguments, option
from skyloom.config import ConfigError, apply_overrides


@dataclass
class UpcycleConfig:
    """`skyloom upcycle`'s arguments."""

    dense: str | None = option(
        None,
        positional=True,
        nargs="?",
        metavar="DENSE_CKPT",
        help="dense skyloom checkpoint or Hugging Face Llama directory (or a preset/config with --advise)",
    )
    set: list[str] = option(
        [],
        extend=True,
        nargs="+",
        metavar="KEY=VALUE",
        help="model.moe fields, e.g. --set gate_norm=true adaptive=true",
    )
    out: str | None = option(None, metavar="MOE_CKPT", help="checkpoint directory to write")
    experts: int = option(16, help="experts per MoE layer (n)")
    top_k: int = option(2, help="experts per token (k)")
    gate_std: float = option(
        0.02, help="std of the gate's initial weights (0 = zeros: every token then ties on the same experts)"
    )
    seed: int = option(0, help="seed for the gate's initial weights")
    no_verify: bool = option(
        False, help="skip checking DENSE_CKPT against its manifest.json (sizes + sha256) before upcycling"
    )
    advise: bool = option(False, help="print the §3.3 upcycle-or-from-scratch advice instead")
    dense_cost: float | None = option(None, help="--advise: what the dense checkpoint cost (any unit)")
    moe_budget: float | None = option(None, help="--advise: what the MoE training may cost (same unit)")
    dense_tokens: float | None = option(None, help="--advise: tokens the dense checkpoint was trained on")
    moe_tokens: float | None = option(None, help="--advise: tokens the MoE will be trained on")
    seq_len: int | None = option(None, help="--advise: sequence length for the attention FLOPs")


_DESCRIPTION = """\
Upcycle a dense checkpoint into a mixture of experts (Skywork-MoE §3): every expert of an MoE block is a copy
of the block's dense SwiGLU FFN, the gate starts as small random weights (--gate-std; 0 = zeros) with a zero
bias. Without token dropping the result computes exactly the dense model's function at step 0.
Further MoE options with --set KEY=VALUE … (fields of model.moe, see docs/moe.md), e.g. --set gate_norm=true
adaptive=true capacity_factor=1.25 every_n_layers=2.

  skyloom upcycle runs/tiny/checkpoints/step-000120 --experts 8 --top-k 2 --out runs/tiny-moe-init --set gate_norm=true

With --advise, print the report's rule of thumb (§3.3) instead: upcycle or train from scratch, given what the
dense checkpoint cost and what the MoE may spend — as --dense-cost/--moe-budget in any one unit (GPU hours,
FLOPs), or as --dense-tokens/--moe-tokens, converted to FLOPs with the models' active parameters
(6·N + 12·L·H·S per token; the MoE shape is DENSE_CKPT upcycled with --experts/--top-k):

  skyloom upcycle --advise --dense-cost 1000 --moe-budget 600
  skyloom upcycle runs/tiny/checkpoints/step-000120 --advise --dense-tokens 3e11 --moe-tokens 1e11 --experts 8
"""


def _moe_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = apply_overrides({}, args.set)
    settings.setdefault("n_experts", args.experts)
    settings.setdefault("top_k", args.top_k)
    return settings


def _advice(args: argparse.Namespace) -> int:
    from skyloom.model.upcycle import training_cost_flops, upcycle_advice, upcycled_config

    if args.dense_cost is not None or args.moe_budget is not None:
        if args.dense_cost is None or args.moe_budget is None:
            raise ConfigError("--advise", "give both --dense-cost and --moe-budget (one unit)")
        dense_cost, budget, unit = args.dense_cost, args.moe_budget, "(your unit)"
    else:
        if args.dense_tokens is None or args.moe_tokens is None or args.dense is None:
            raise ConfigError(
                "--advise", "give --dense-cost and --moe-budget, or DENSE_CKPT with --dense-tokens and --moe-tokens"
            )
        from skyloom.model.commands import resolve_model_config

        dense_cfg = resolve_model_config(args.dense)
        moe_cfg = upcycled_config(dense_cfg, _moe_settings(args))
        seq = args.seq_len or dense_cfg.max_seq_len
        dense_cost = training_cost_flops(dense_cfg, args.dense_tokens, seq)
        budget = training_cost_flops(moe_cfg, args.moe_tokens, seq)
        unit = "FLOPs"
    advice = upcycle_advice(dense_cost, budget)
    print(
        f"C_dense = {dense_cost:.4g} {unit}, C_MoE = {budget:.4g} {unit}"
        + (f", C_MoE / C_dense = {advice.ratio:.3g}" if advice.ratio is not None else "")
    )
    print(f"advice: {advice.choice}")
    print(advice.reasoning)
    return 0


def cmd_upcycle(args: argparse.Namespace) -> int:
    if args.advise:
        return _advice(args)
    if args.dense is None or args.out is None:
        raise ConfigError("upcycle", "give DENSE_CKPT and --out MOE_CKPT (or --advise)")
    from skyloom.model.accounting import count_params
    from skyloom.model.upcycle import upcycle_checkpoint

    try:
        out, model = upcycle_checkpoint(
            args.dense, args.out, _moe_settings(args), gate_std=args.gate_std, seed=args.seed, verify=not args.no_verify
        )
    except (ValueError, FileNotFoundError) as err:  # FileNotFoundError: DENSE_CKPT does not exist
        if isinstance(err, ConfigError):
            raise
        raise ConfigError("upcycle", str(err) if args.dense in str(err) else f"{args.dense}: {err}") from None
    counts = count_params(model.config)
    moe = model.config.moe
    print(
        f"wrote {out}: {len(model.moe_layers())} MoE layers × {moe.n_experts} experts (top-{moe.top_k}), "
        f"{counts.total:,} parameters, {counts.active:,} active per token"
    )
    return 0


def register(sub) -> None:
    p = add_command(
        sub,
        "upcycle",
        "turn a dense checkpoint into a mixture-of-experts checkpoint (or --advise)",
        description=_DESCRIPTION,
    )
    add_config_arguments(p, UpcycleConfig)
    p.set_defaults(handler=cmd_upcycle)
