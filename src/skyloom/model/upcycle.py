"""Sparse upcycling (Komatsuzaki et al. 2023; Skywork-MoE §3): a dense checkpoint becomes the initial MoE.

Every expert of an MoE block is a copy of that block's dense SwiGLU FFN; attention, norms, embeddings and the
FFNs of non-MoE blocks are copied unchanged. The gate starts small: N(0, gate_std²) weights (zeros when
gate_std = 0) and a zero bias. Because the experts are identical and the combine weights of Eq. 2 sum to 1, the
upcycled model computes exactly the dense model's function as long as no token is dropped (dropless, or a
capacity factor ≥ n/k) — whatever the gate says. A small random gate rather than a zero one matters for
training: with all-equal logits every token picks the same k experts (ties), which would then receive identical
updates and never diversify.

Expert specialisation (Appendix C.2): the experts may instead come from SEVERAL dense checkpoints — the
report's 8 experts = 3 × M_cn, 3 × M_en, 1 × M_code, 1 × M_base, the specialised ones continued from M_base on
one domain each with only the FFN updated (`train.trainable: ffn`). Expert j of every MoE block copies the FFN of
its source; everything else comes from the base. A specialised checkpoint whose non-FFN weights differ from the
base's is refused, naming the tensor, rather than averaged: the report's recipe leaves them untouched, so a
difference means a wrong checkpoint (another base, or a run that trained everything), and an average would be a
model none of the sources is.

`upcycle_advice` is the report's §3.3 rule of thumb on whether to upcycle at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skyloom.config import build, to_dict
from skyloom.model.arch import arch_spec
from skyloom.model.config import ModelConfig
from skyloom.model.moe import MoE
from skyloom.model.moe_config import MoEConfig
from skyloom.model.transformer import SwiGLU, Transformer


def upcycled_config(dense: ModelConfig, moe: MoEConfig | dict[str, Any]) -> ModelConfig:
    """The dense shape with `moe` added; the experts keep the dense FFN width (refuses other widths)."""
    if dense.moe is not None:
        raise ValueError("the checkpoint is already a mixture of experts")
    if not arch_spec(dense).supports_moe(dense):
        raise ValueError(f"only the SwiGLU (arch=llama, no bias) model can be upcycled, got arch={dense.arch!r}")
    moe_cfg = moe if isinstance(moe, MoEConfig) else build(MoEConfig, moe, prefix="moe")
    if moe_cfg.expert_ffn_dim not in (None, dense.hidden_ffn_dim):
        raise ValueError(
            f"upcycled experts copy the dense FFN (width {dense.hidden_ffn_dim}); "
            f"moe.expert_ffn_dim={moe_cfg.expert_ffn_dim} cannot be filled from it"
        )
    data = to_dict(dense)
    data["moe"] = to_dict(moe_cfg)
    data["preset"] = None
    return build(ModelConfig, data, prefix="model")


def is_ffn_parameter(name: str) -> bool:
    """Whether a parameter belongs to a block's FFN (`layers.N.ffn.*`: the dense SwiGLU, or an MoE layer's experts
    and gate) — the part Appendix C.2's specialised checkpoints train; its norm (`ffn_norm`) is not."""
    return ".ffn." in name


# One source of experts: (label for messages — its path —, the dense model, how many experts copy its FFN).
ExpertSource = tuple[str, Transformer, int]


def check_specialised(base: Transformer, source: Transformer, label: str, atol: float = 0.0) -> None:
    """Refuse a specialised checkpoint that is not `base` with only the FFN changed (ValueError naming `label` and
    the config key or tensor): same config, same tensors and shapes, non-FFN weights within `atol` of the base's."""
    mine, theirs = to_dict(base.config), to_dict(source.config)
    for key in sorted(set(mine) | set(theirs)):
        if key != "preset" and mine.get(key) != theirs.get(key):
            raise ValueError(
                f"{label}: model.{key} is {theirs.get(key)!r}, the base checkpoint's is {mine.get(key)!r}; "
                "every expert source must have the base's shape"
            )
    base_state, state = base.state_dict(), source.state_dict()
    for name in sorted(set(base_state) | set(state)):
        if name not in state or name not in base_state:
            where = "base checkpoint" if name not in base_state else label
            raise ValueError(f"{label}: tensor {name} is missing from the {where}")
        b, t = base_state[name], state[name]
        if b.shape != t.shape:
            raise ValueError(f"{label}: tensor {name} has shape {tuple(t.shape)}, the base's {tuple(b.shape)}")
        if is_ffn_parameter(name) or torch.equal(b, t):
            continue
        diff = float((t.float() - b.float()).abs().max()) if t.numel() else 0.0
        if not diff <= atol:  # also NaN
            raise ValueError(
                f"{label}: tensor {name} differs from the base checkpoint's by {diff:.3g} (> tolerance {atol:g}); "
                "a specialised checkpoint continues the base with only the FFN trained (train.trainable: ffn), so "
                "attention, norms and embeddings must be the base's"
            )


def _expert_models(dense: Transformer, n_experts: int, sources: Sequence[ExpertSource] | None, atol: float):
    """The dense model each expert copies its FFN from, in expert order (all `dense` without sources)."""
    if sources is None:
        return [dense] * n_experts
    models: list[Transformer] = []
    for label, model, count in sources:
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"{label}: an expert source gives at least 1 expert, got {count!r}")
        if model is not dense:
            check_specialised(dense, model, label, atol)
        models.extend([model] * count)
    if len(models) != n_experts:
        counts = " + ".join(str(count) for _, _, count in sources)
        raise ValueError(f"the expert sources give {counts} = {len(models)} experts, the MoE has n_experts={n_experts}")
    return models


@torch.no_grad()
def upcycle(
    dense: Transformer,
    moe: MoEConfig | dict[str, Any],
    gate_std: float = 0.02,
    seed: int = 0,
    expert_sources: Sequence[ExpertSource] | None = None,
    shared_atol: float = 0.0,
) -> Transformer:
    """A new MoE Transformer whose experts are copies of `dense`'s FFNs (see the module docstring).

    `expert_sources` (Appendix C.2): (label, dense model, count) in expert order — expert j copies the FFN of the
    source it falls in; the counts add up to n_experts; `dense` may appear itself (M_base). Every other source must
    equal `dense` outside the FFN to within `shared_atol` (`check_specialised`). The gate is drawn as without them.
    """
    cfg = upcycled_config(dense.config, moe)
    experts = _expert_models(dense, cfg.moe.n_experts, expert_sources, shared_atol)
    with torch.device("meta"):
        model = Transformer(cfg)
    device = next(dense.parameters()).device
    model.to_empty(device=device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    dense_state = dense.state_dict()
    own = model.state_dict()
    for name in own:
        if name in dense_state and own[name].shape == dense_state[name].shape:
            own[name].copy_(dense_state[name])
    for i, block in enumerate(model.layers):
        if not isinstance(block.ffn, MoE):
            continue
        layer = block.ffn
        for j, expert_model in enumerate(experts):
            source = expert_model.layers[i].ffn
            if not isinstance(source, SwiGLU):
                raise ValueError(f"layer {i}: the dense FFN is {type(source).__name__}, not SwiGLU")
            layer.w1[j].copy_(source.w1.weight)
            layer.w3[j].copy_(source.w3.weight)
            layer.w2[j].copy_(source.w2.weight)
        weight = torch.randn(layer.gate.weight.shape, generator=generator) * gate_std
        layer.gate.weight.copy_(weight.to(layer.gate.weight.dtype))
        if layer.gate.bias is not None:
            layer.gate.bias.zero_()
        layer.aux_coef.fill_(float(cfg.moe.aux_coef))
    if cfg.tie_embeddings:
        model.output.weight = model.tok_emb.weight
    return model


def upcycle_checkpoint(
    dense_path: str | Path,
    out_dir: str | Path,
    moe: MoEConfig | dict[str, Any],
    gate_std: float = 0.02,
    seed: int = 0,
    verify: bool = True,
    expert_init: Sequence[tuple[str | Path, int]] | None = None,
    shared_atol: float = 0.0,
) -> tuple[Path, Transformer]:
    """Load a dense checkpoint (skyloom or HF Llama; verified against its manifest unless `verify=False`),
    upcycle it, save it with the source's tokenizer files.

    `expert_init`: (checkpoint path, count) in expert order (Appendix C.2, see `upcycle`); each path is loaded once,
    `dense_path` itself may be listed."""
    from skyloom.model.checkpoint import load_model, save_model
    from skyloom.model.hf import TOKENIZER_FILES

    dense = load_model(dense_path, verify=verify)
    sources = None
    if expert_init is not None:
        loaded: dict[Path, Transformer] = {Path(dense_path).resolve(): dense}
        sources = []
        for path, count in expert_init:
            key = Path(path).resolve()
            if key not in loaded:
                loaded[key] = load_model(path, verify=verify)
            sources.append((str(path), loaded[key], count))
    model = upcycle(dense, moe, gate_std=gate_std, seed=seed, expert_sources=sources, shared_atol=shared_atol)
    metadata: dict[str, Any] = {"upcycled_from": str(dense_path), "gate_std": gate_std, "seed": seed}
    if expert_init is not None:
        metadata["expert_init"] = [[str(path), count] for path, count in expert_init]
    out = save_model(model, out_dir, metadata=metadata)
    for name in TOKENIZER_FILES:
        src = Path(dense_path) / name
        if src.is_file():
            (out / name).write_bytes(src.read_bytes())
    return out, model


# ---- §3.3: upcycle or train from scratch? ----


@dataclass(frozen=True)
class UpcycleAdvice:
    choice: str  # "upcycle" | "from-scratch" | "either"
    ratio: float | None  # C_MoE / C_dense (None without a dense checkpoint)
    reasoning: str

    def __str__(self) -> str:
        return f"{self.choice}: {self.reasoning}"


def upcycle_advice(dense_cost: float, moe_budget: float) -> UpcycleAdvice:
    """The report's §3.3 rule of thumb, from C_dense (what the dense checkpoint cost) and C_MoE (the MoE budget).

    Both in one unit (GPU hours, FLOPs …). The report's evidence (0.3B dense model, 8-expert MoE): at
    C_MoE ≈ 2/3·C_dense from-scratch and upcycling ended level; at C_MoE ≈ 2·C_dense from-scratch was clearly
    better. Hence: no checkpoint (C_dense = 0) → from scratch; C_MoE ≥ 2·C_dense → from scratch;
    C_MoE < 2/3·C_dense (the "C_MoE ≪ C_dense" regime) → upcycle to use the sunk cost; in between → either,
    leaning to from-scratch as the ratio approaches 2. When upcycling, tune the learning-rate schedule.
    """
    if dense_cost < 0 or moe_budget <= 0:
        raise ValueError(f"need dense_cost ≥ 0 and moe_budget > 0, got {dense_cost} and {moe_budget}")
    lr_note = (
        "When upcycling, tune the learning-rate schedule: in the report the upcycled runs at a small "
        "constant LR (3e-4, the dense model's final LR) did worst, those with a higher peak (1.2e-3 to "
        "1.8e-3, decayed) did better."
    )
    if dense_cost == 0:
        return UpcycleAdvice(
            "from-scratch",
            None,
            "there is no dense checkpoint to upcycle (C_dense = 0 ≪ C_MoE), so train the MoE from "
            "scratch (Skywork-MoE §3.3).",
        )
    ratio = moe_budget / dense_cost
    if ratio >= 2.0:
        return UpcycleAdvice(
            "from-scratch",
            ratio,
            f"the MoE budget is {ratio:.2g}× the dense model's cost (≥ 2): with that much compute an "
            "MoE trained from scratch beats one upcycled from the dense checkpoint, whose identical "
            "experts are slow to diversify (Skywork-MoE §3.2–3.3, 300B-token budget).",
        )
    if ratio < 2.0 / 3.0:
        return UpcycleAdvice(
            "upcycle",
            ratio,
            f"the MoE budget is only {ratio:.2g}× the dense model's cost (≪ 1): upcycle to exploit "
            "the sunk cost of the dense checkpoint — an MoE trained from scratch on so little compute "
            "is unlikely to even match the dense model (Skywork-MoE §3.3). " + lr_note,
        )
    return UpcycleAdvice(
        "either",
        ratio,
        f"the MoE budget is {ratio:.2g}× the dense model's cost, between 2/3 (where the report's "
        "upcycled and from-scratch MoEs ended level) and 2 (where from-scratch won clearly): both are "
        "reasonable; the closer to 2, the more from-scratch is favoured. " + lr_note,
    )


def training_cost_flops(cfg: ModelConfig, tokens: float, seq_len: int | None = None) -> float:
    """Training compute of `tokens` tokens: FLOPs per token (6·N_active + 12·L·H·S) × tokens."""
    from skyloom.model.accounting import flops_per_token

    return flops_per_token(cfg, seq_len) * tokens


def replace_moe(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """A copy of an MoE config with some `moe` fields changed (e.g. dropless=True for an exact-equality check)."""
    return dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, **changes))
