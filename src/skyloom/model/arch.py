"""The architecture registry: every `ModelConfig.arch` is one `ArchSpec` entry in `ARCHS`, and nothing else in skyloom
compares architecture names.

A spec says how the block is built (norm, dense FFN, positions, the block class itself) and what follows from that
for the rest of the code: parameter counting (`ffn_in_matrices`, `norm_bias`, `learned_positions`), config checks
(`validate`), Hugging Face export (`hf_architecture`), and whether MoE experts / upcycling / Mixtral fit it
(`supports_moe`). A new architecture is one entry in `ARCHS` below (plus its modules if it needs new ones);
tests/test_model_decoding.py then checks its cached decoding and tests/test_accounting.py its counts.

This module imports no torch: the builders import their modules when called, so configs stay torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import nn

    from skyloom.model.config import ModelConfig


def _rms_norm(cfg: ModelConfig) -> nn.Module:
    from skyloom.model.transformer import RMSNorm

    return RMSNorm(cfg.dim, eps=cfg.norm_eps)


def _layer_norm(cfg: ModelConfig) -> nn.Module:
    from torch import nn

    return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps, bias=cfg.bias)


def _swiglu(cfg: ModelConfig, hidden: int) -> nn.Module:
    from skyloom.model.transformer import SwiGLU

    return SwiGLU(cfg.dim, hidden, bias=cfg.bias)


def _gelu_mlp(cfg: ModelConfig, hidden: int) -> nn.Module:
    from skyloom.model.transformer import GeluMLP

    return GeluMLP(cfg.dim, hidden, bias=cfg.bias)


def _pre_norm_block(cfg: ModelConfig, layer_index: int) -> nn.Module:
    from skyloom.model.transformer import Block

    return Block(cfg, layer_index)


def _ffn_8_3(cfg: ModelConfig) -> int:
    """8/3·dim rounded up to `ffn_multiple_of` (SwiGLU keeps the 4·dim MLP's parameter count)."""
    raw, m = int(8 * cfg.dim / 3), cfg.ffn_multiple_of
    return m * ((raw + m - 1) // m)


def _ffn_4x(cfg: ModelConfig) -> int:
    return 4 * cfg.dim


@dataclass(frozen=True)
class ArchSpec:
    """One decoder architecture: how its block is built and what the rest of skyloom may assume about it."""

    name: str
    summary: str
    norm: Callable[[ModelConfig], nn.Module]  # pre-norms and the final norm
    ffn: Callable[[ModelConfig, int], nn.Module]  # the dense FFN of a given width
    ffn_in_matrices: int  # input projections of that FFN (SwiGLU: gate + up = 2; GELU: 1) — parameter counting
    default_ffn_dim: Callable[[ModelConfig], int]  # the width when `ffn_dim` is not given
    rotary: bool  # RoPE on queries/keys (needs an even head dimension; no weight depends on the length)
    learned_positions: bool  # a [max_seq_len, dim] position table: sequences cannot exceed max_seq_len
    norm_bias: bool  # the norm carries a bias when `bias` is set (LayerNorm); RMSNorm never does
    grouped_query: bool  # n_kv_heads < n_heads allowed
    hf_architecture: str | None  # the transformers class the dense model (without biases) exports to
    moe_experts: bool  # the dense FFN is the SwiGLU the MoE experts use: MoE layers, upcycling, Mixtral
    block: Callable[[ModelConfig, int], nn.Module] = _pre_norm_block  # must take the KV cache (model/kv_cache.py)

    def supports_moe(self, cfg: ModelConfig) -> bool:
        """MoE layers, upcycling and Mixtral export need the bias-free SwiGLU FFN the experts copy."""
        return self.moe_experts and not cfg.bias

    def exports_hf(self, cfg: ModelConfig) -> bool:
        return self.hf_architecture is not None and not cfg.bias

    def validate(self, cfg: ModelConfig) -> None:
        """The shape rules this architecture adds to `ModelConfig.validate` (MoE fit: `supports_moe`)."""
        from skyloom.config import ConfigError

        if self.rotary and cfg.head_dim % 2:
            raise ConfigError("dim", f"RoPE needs an even head dimension, got {cfg.head_dim}")
        if not self.grouped_query and cfg.n_kv_heads not in (None, cfg.n_heads):
            raise ConfigError("n_kv_heads", f"the {self.summary} uses multi-head attention only")


ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec(
        name="llama",
        summary="Skywork/LLaMA block",
        norm=_rms_norm,
        ffn=_swiglu,
        ffn_in_matrices=2,
        default_ffn_dim=_ffn_8_3,
        rotary=True,
        learned_positions=False,
        norm_bias=False,
        grouped_query=True,
        hf_architecture="LlamaForCausalLM",
        moe_experts=True,
    ),
    "gpt": ArchSpec(
        name="gpt",
        summary="GPT baseline",
        norm=_layer_norm,
        ffn=_gelu_mlp,
        ffn_in_matrices=1,
        default_ffn_dim=_ffn_4x,
        rotary=False,
        learned_positions=True,
        norm_bias=True,
        grouped_query=False,
        hf_architecture=None,
        moe_experts=False,
    ),
}

# The values `model.arch` accepts (the config builder names them in its error); follows ARCHS.
ArchName = Literal[tuple(ARCHS)]  # type: ignore[valid-type]


def arch_spec(cfg_or_name: ModelConfig | str) -> ArchSpec:
    """The spec of a config's architecture (or of a name)."""
    name = cfg_or_name if isinstance(cfg_or_name, str) else cfg_or_name.arch
    try:
        return ARCHS[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}") from None
