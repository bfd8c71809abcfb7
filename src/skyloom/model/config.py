"""The model section of a config: one dataclass for every architecture skyloom builds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from skyloom.config import ConfigError
from skyloom.model.arch import ArchName, arch_spec
from skyloom.model.moe_config import MoEConfig


@dataclass
class ModelConfig:
    """Decoder-only transformer shape.

    `arch="llama"` is the Skywork/LLaMA block (RoPE, RMSNorm, SwiGLU, no biases); `arch="gpt"` is the
    GPT baseline of the report's Table 9 (learned absolute positions, LayerNorm, GELU MLP, dropout);
    model/arch.py registers each (what the rest of skyloom reads instead of comparing names).
    Start from a named preset with `preset: NAME` and override any field next to it.
    """

    preset: str | None = None
    arch: ArchName = "llama"
    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: multi-head attention (= n_heads)
    ffn_dim: int | None = None  # None: 8/3·dim rounded up to ffn_multiple_of (llama), 4·dim (gpt)
    ffn_multiple_of: int = 256
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    bias: bool = False  # biases in linear layers (GPT baseline); LLaMA/Skywork have none
    dropout: float = 0.0
    init_std: float = 0.02
    moe: MoEConfig | None = None  # mixture-of-experts FFNs (Skywork-MoE); None: dense

    @staticmethod
    def expand_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """`preset: NAME` fills every field from that preset; keys given beside it win (a section such as
        `moe` merges key by key, so `moe: {capacity_factor: 2}` keeps the preset's other MoE fields)."""
        name = data.get("preset")
        if name is None:
            return data
        from skyloom.model.presets import PRESETS, preset_names

        if name not in PRESETS:
            import difflib

            close = difflib.get_close_matches(str(name), preset_names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            key = f"{prefix}.preset" if prefix else "preset"
            raise ConfigError(key, f"unknown preset {name!r}{hint}; known: {', '.join(preset_names())}")
        merged = dict(PRESETS[name])
        for key, value in data.items():
            base = merged.get(key)
            merged[key] = {**base, **value} if isinstance(base, dict) and isinstance(value, dict) else value
        return merged

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_ffn_dim(self) -> int:
        """The FFN width actually built."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        return arch_spec(self).default_ffn_dim(self)

    def validate(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len", "ffn_multiple_of"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, f"must be positive, got {getattr(self, name)}")
        if self.ffn_dim is not None and self.ffn_dim <= 0:
            raise ConfigError("ffn_dim", f"must be positive, got {self.ffn_dim}")
        if self.dim % self.n_heads:
            raise ConfigError("dim", f"hidden size {self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_kv_heads is not None:
            if self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads:
                raise ConfigError("n_kv_heads", f"must divide n_heads={self.n_heads}, got {self.n_kv_heads}")
        arch_spec(self).validate(self)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0:
            raise ConfigError("rope_theta", f"must be positive, got {self.rope_theta}")
        if self.norm_eps <= 0:
            raise ConfigError("norm_eps", f"must be positive, got {self.norm_eps}")
        if self.init_std <= 0:
            raise ConfigError("init_std", f"must be positive, got {self.init_std}")
        if self.moe is not None:
            if not arch_spec(self).supports_moe(self):
                raise ConfigError(
                    "moe", "MoE layers have SwiGLU experts without biases: they need arch=llama, bias=false"
                )
            if self.moe.every_n_layers > self.n_layers:
                raise ConfigError(
                    "moe.every_n_layers", f"{self.moe.every_n_layers} > n_layers={self.n_layers} leaves no MoE layer"
                )

    @property
    def expert_ffn_dim(self) -> int:
        """The width of one expert's SwiGLU (the dense FFN width unless `moe.expert_ffn_dim` is set)."""
        if self.moe is not None and self.moe.expert_ffn_dim is not None:
            return self.moe.expert_ffn_dim
        return self.hidden_ffn_dim

    def is_moe_layer(self, layer_index: int) -> bool:
        return self.moe is not None and self.moe.is_moe_layer(layer_index)
