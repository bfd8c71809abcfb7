"""Load-balancing losses and the adaptive coefficient rule of Skywork-MoE, as pure functions.

Two forms of the auxiliary loss (both per MoE layer, over the T tokens of one forward pass):

* Eq. 4 of the Skywork-MoE report (the default, `aux_loss: eq4`):
      L_aux = Σ_j (1/n − (1/T)·Σ_i g_ij)²
  with g the *full* softmax gate probabilities (after gating logit normalisation when it is on). It pushes the
  mean gate probability of every expert toward 1/n; it is 0 at balance and at most 1 − 1/n (one expert always
  certain). It looks only at probabilities, not at which experts were picked.
* Switch Transformer / Megatron-LM (`aux_loss: switch`):
      L_aux = n · Σ_j f_j · P_j,   f_j = (tokens routed to j)/(k·T),  P_j = (1/T)·Σ_i g_ij
  — 1 at perfect balance, n when everything goes to one expert; the gradient flows through P only. (The
  `transformers` Mixtral loss is this form but pooled over all layers' routers before the product, so its value
  differs from the per-layer sum.)

The adaptive coefficient of §4.2 (Eq. 7–9): with d the layer's token drop rate of the last step,
      α̂ = f(d) = min(ξ·d, α_max),   α ← β·α + (1−β)·α̂
(ξ = 1/5, α_max = 0.01, β = 0.99 in the report).

Under pipeline parallelism the aux losses reach the objective through `attach_aux_loss` (below), not the loss
function of the last stage.
"""

from __future__ import annotations

import torch


def aux_loss_eq4(probs: torch.Tensor) -> torch.Tensor:
    """Eq. 4: Σ_j (1/n − mean_i g_ij)²; probs is [T, n] (full softmax), returns a scalar."""
    n = probs.shape[-1]
    mean_prob = probs.float().reshape(-1, n).mean(dim=0)
    return (1.0 / n - mean_prob).pow(2).sum()


def aux_loss_switch(probs: torch.Tensor, tokens_per_expert: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch/Megatron: n · Σ_j f_j · P_j with f_j = count_j / (k·T), P_j = mean_i g_ij; counts carry no gradient."""
    n = probs.shape[-1]
    flat = probs.float().reshape(-1, n)
    fraction = tokens_per_expert.detach().float() / (top_k * flat.shape[0])
    return n * (fraction * flat.mean(dim=0)).sum()


def target_coefficient(drop_rate: float, xi: float, alpha_max: float) -> float:
    """Eq. 9: f(d) = ξ·d for d ≤ α_max/ξ, else α_max."""
    return min(xi * drop_rate, alpha_max)


def update_coefficient(
    alpha: float, drop_rate: float, xi: float = 0.2, alpha_max: float = 0.01, beta: float = 0.99
) -> float:
    """Eq. 7–8: the next step's coefficient, a moving average of f(d) with weight β on the current α."""
    return beta * alpha + (1.0 - beta) * target_coefficient(drop_rate, xi, alpha_max)


class AuxLossScaler(torch.autograd.Function):
    """Identity on the hidden state whose backward also starts the backward of a side loss (Megatron-LM's
    `MoEAuxLossAutoScaler`): d(loss)/d(aux) = `scale`. A pipeline stage attaches its MoE layers' weighted aux
    losses to its output this way, so each gets its gradient on its own stage — the schedule only calls the loss
    function on the last stage, and nothing but the hidden state travels between stages."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        ctx.save_for_backward(aux)
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (aux,) = ctx.saved_tensors
        return grad, torch.full_like(aux, ctx.scale), None


def attach_aux_loss(hidden: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
    """`hidden`, unchanged; the backward through it adds `scale` × d(aux) (see `AuxLossScaler`)."""
    return AuxLossScaler.apply(hidden, aux, scale)
