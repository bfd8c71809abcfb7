"""The `model.moe` section: the Skywork-MoE options (report §2, §4, Appendix C.1), torch-free.

Every field is documented in `docs/moe.md`. A config without `moe` (or `moe: null`) is the dense model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from skyloom.config import ConfigError

DropPolicy = Literal["probs", "position"]
AuxLossForm = Literal["eq4", "switch", "none"]
ExpertLrScale = Literal["none", "k/n", "sqrt(k/n)"]


@dataclass
class MoEConfig:
    """Mixture-of-experts FFNs.

    Routing (Eq. 1–2): g = softmax(W x + b) over `n_experts`, the `top_k` most probable experts run, their
    outputs are combined with the selected probabilities renormalised by their sum.
    Capacity: each expert takes at most C = ceil(top_k · T / n_experts · capacity_factor) of the T tokens of a
    forward pass (per rank and micro-batch); the overflow is dropped — that token/expert slot contributes 0 and
    the token keeps its residual. `drop_policy` picks who drops first: "probs" = the slots with the lowest gate
    probability for that expert, "position" = the slots latest in the (flattened batch, sequence) order.
    `dropless: true` never drops (C = ∞). Dropping is a training device: in eval mode (validation, evaluation,
    generation) the layer is dropless unless `drop_in_eval`, so results do not depend on batch composition.
    Gating logit normalisation (Eq. 6): with `gate_norm`, z̃ = λ·(z − mean z)/std z before the softmax.
    Aux loss per MoE layer: "eq4" = Σ_j (1/n − mean_i g_ij)² (Eq. 4 as written), "switch" = n·Σ_j f_j·P_j
    (Switch/Megatron), "none". Coefficient: fixed `aux_coef`, or with `adaptive` the §4.2 rule
    α ← β·α + (1−β)·min(ξ·d, α_max) per layer from its token drop rate d, starting at `aux_coef`.
    """

    n_experts: int = 16
    top_k: int = 2
    every_n_layers: int = 1  # MoE in layer i when (i + 1) % every_n_layers == 0; 1 = every layer (Table 2)
    expert_ffn_dim: int | None = None  # None: the dense FFN width (upcycling copies it)
    capacity_factor: float = 1.25
    drop_policy: DropPolicy = "probs"
    dropless: bool = False
    drop_in_eval: bool = False  # apply the capacity in eval mode too (default: eval is dropless)
    gate_bias: bool = True  # Eq. 1 has a bias b; Mixtral's router has none
    gate_norm: bool = False  # Eq. 6
    gate_norm_lambda: float = 1.0  # λ (the report uses 1)
    gate_norm_eps: float = 1e-6  # z̃ = λ(z − µ)/sqrt(σ² + eps): finite when all logits are equal
    aux_loss: AuxLossForm = "eq4"
    aux_coef: float = 0.01  # fixed α, or the initial α of every layer when adaptive
    adaptive: bool = False  # §4.2 adaptive coefficients (Eq. 7–9)
    xi: float = 0.2  # ξ, the report's 1/5
    alpha_max: float = 0.01
    beta: float = 0.99
    expert_lr_scale: ExpertLrScale = "none"  # Appendix C.1: scale the experts' LR by k/n or sqrt(k/n)

    def is_moe_layer(self, layer_index: int) -> bool:
        return (layer_index + 1) % self.every_n_layers == 0

    def lr_scale(self) -> float:
        ratio = self.top_k / self.n_experts
        return {"none": 1.0, "k/n": ratio, "sqrt(k/n)": ratio**0.5}[self.expert_lr_scale]

    def validate(self) -> None:
        if self.n_experts < 1:
            raise ConfigError("n_experts", f"must be ≥ 1, got {self.n_experts}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ConfigError("top_k", f"must be in [1, n_experts={self.n_experts}], got {self.top_k}")
        if self.every_n_layers < 1:
            raise ConfigError("every_n_layers", f"must be ≥ 1, got {self.every_n_layers}")
        if self.expert_ffn_dim is not None and self.expert_ffn_dim <= 0:
            raise ConfigError("expert_ffn_dim", f"must be positive, got {self.expert_ffn_dim}")
        if self.capacity_factor <= 0:
            raise ConfigError("capacity_factor", f"must be positive, got {self.capacity_factor}")
        if self.gate_norm_lambda <= 0:
            raise ConfigError("gate_norm_lambda", f"must be positive, got {self.gate_norm_lambda}")
        if self.gate_norm_eps <= 0:
            raise ConfigError("gate_norm_eps", f"must be positive, got {self.gate_norm_eps}")
        if self.aux_coef < 0:
            raise ConfigError("aux_coef", f"must be ≥ 0, got {self.aux_coef}")
        if self.xi <= 0:
            raise ConfigError("xi", f"must be positive, got {self.xi}")
        if self.alpha_max < 0:
            raise ConfigError("alpha_max", f"must be ≥ 0, got {self.alpha_max}")
        if not 0.0 < self.beta < 1.0:
            raise ConfigError("beta", f"must be in (0, 1), got {self.beta}")
        if self.adaptive and self.aux_loss == "none":
            raise ConfigError("adaptive", "adaptive coefficients need an aux loss (aux_loss: eq4 or switch)")
