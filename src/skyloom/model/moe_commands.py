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
    expert_init: str | None = option(
        None,
        metavar="SOURCE:COUNT,...",
        help="Appendix C.2: experts from several dense checkpoints, in expert order, e.g. "
        "base:2,runs/cn/checkpoints/step_00001000:3,... ('base' = DENSE_CKPT; counts add up to --experts); "
        "each must be DENSE_CKPT with only the FFN trained",
    )
    shared_tolerance: float = option(
        0.0,
        help="--expert-init: largest |difference| allowed between a source's non-FFN weights and DENSE_CKPT's "
        "(0 = bit-identical, what train.trainable: ffn gives)",
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

Expert specialisation (Appendix C.2): --expert-init takes each expert's FFN from a chosen dense checkpoint — the
report's 8 experts = 3 × M_cn, 3 × M_en, 1 × M_code, 1 × M_base, the specialised checkpoints continued from the
base with only the FFN trained (train.trainable: ffn); attention, norms and embeddings come from DENSE_CKPT, and a
source whose non-FFN weights differ from DENSE_CKPT's (beyond --shared-tolerance) is refused, naming the tensor:

  skyloom upcycle BASE_CKPT --experts 8 --out runs/moe-init --expert-init CN_CKPT:3,EN_CKPT:3,base:1,CODE_CKPT:1

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


def parse_expert_init(spec: str, dense: str, n_experts: int) -> list[tuple[str, int]]:
    """`SOURCE:COUNT,...` → [(checkpoint path, count)] in expert order ('base' = `dense`); the counts must add up
    to `n_experts`. A path may hold ':' (the count is after the last one)."""
    sources: list[tuple[str, int]] = []
    for i, item in enumerate(part.strip() for part in spec.split(",")):
        path, sep, count = item.rpartition(":")
        if not sep or not path or not count.strip().isdigit() or int(count) < 1:
            raise ConfigError("--expert-init", f"item {i + 1} {item!r}: expected SOURCE:COUNT with COUNT ≥ 1")
        sources.append((dense if path == "base" else path, int(count)))
    total = sum(count for _, count in sources)
    if total != n_experts:
        counts = " + ".join(str(count) for _, count in sources)
        raise ConfigError("--expert-init", f"the counts add up to {counts} = {total}, not --experts {n_experts}")
    return sources


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

    settings = _moe_settings(args)
    expert_init = None
    if args.expert_init is not None:
        expert_init = parse_expert_init(args.expert_init, args.dense, int(settings["n_experts"]))
    if args.shared_tolerance < 0:
        raise ConfigError("--shared-tolerance", f"must be ≥ 0, got {args.shared_tolerance}")
    try:
        out, model = upcycle_checkpoint(
            args.dense,
            args.out,
            settings,
            gate_std=args.gate_std,
            seed=args.seed,
            verify=not args.no_verify,
            expert_init=expert_init,
            shared_atol=args.shared_tolerance,
        )
    except (ValueError, FileNotFoundError) as err:  # FileNotFoundError: DENSE_CKPT (or a source) does not exist
        if isinstance(err, ConfigError):
            raise
        named = [args.dense, *(path for path, _ in expert_init or ())]
        message = str(err) if any(path in str(err) for path in named) else f"{args.dense}: {err}"
        raise ConfigError("upcycle", message) from None
    counts = count_params(model.config)
    moe = model.config.moe
    print(
        f"wrote {out}: {len(model.moe_layers())} MoE layers × {moe.n_experts} experts (top-{moe.top_k}), "
        f"{counts.total:,} parameters, {counts.active:,} active per token"
    )
    if expert_init is not None:
        first = 0
        for path, count in expert_init:
            print(
                f"  experts {first}–{first + count - 1}: FFN of {path}"
                if count > 1
                else f"  expert {first}: FFN of {path}"
            )
            first += count
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
