"""Parameter counts, training FLOPs per token, memory needs and MFU — computed from the config alone.

FLOPs convention (nanoGPT's `estimate_mfu`, PaLM appendix B): training FLOPs per token =
    6·N                (forward 2·N + backward 4·N for every weight matmul; N = all parameters,
                        input embedding included, as nanoGPT counts them; for MoE models N = the
                        parameters *activated* per token: the gate and top_k of the n experts)
  + 12·L·H·S           (attention scores QKᵀ and the weighted sum over values, forward + backward,
                        for L layers, hidden size H, sequence length S — full S×S, *not* halved for the
                        causal mask as Megatron-LM's newer counting does).
This convention reproduces the report's Table 10 (A800, 312 TFLOP/s bf16 peak): Skywork-13B at
1,873 tokens/s/GPU → 57.0% (report 56.5%), LLaMA2-13B at 2,045 → 57.8% (report 58.5%).
MFU = tokens/s (all GPUs together) × FLOPs/token / (peak FLOP/s per GPU × number of GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass

from skyloom.model.arch import arch_spec
from skyloom.model.config import ModelConfig


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int  # input embedding (+ untied output projection, + learned positions)
    non_embedding: int
    active: int = -1  # parameters used per token (MoE: gate + top_k experts); = total for dense models

    def __post_init__(self) -> None:
        if self.active < 0:
            object.__setattr__(self, "active", self.total)


def _ffn_params(cfg: ModelConfig) -> int:
    hidden = cfg.hidden_ffn_dim
    n_in = arch_spec(cfg).ffn_in_matrices  # GELU: W1; SwiGLU: W1 (gate) and W3 (up)
    bias = (n_in * hidden + cfg.dim) if cfg.bias else 0
    return (n_in + 1) * cfg.dim * hidden + bias


def _norm_params(cfg: ModelConfig) -> int:
    return cfg.dim * (2 if (arch_spec(cfg).norm_bias and cfg.bias) else 1)


def _moe_params(cfg: ModelConfig, experts: int) -> int:
    """An MoE FFN with `experts` SwiGLU experts counted (all of them, or the top_k active ones) + its gate."""
    moe = cfg.moe
    gate = cfg.dim * moe.n_experts + (moe.n_experts if moe.gate_bias else 0)
    return gate + experts * 3 * cfg.dim * cfg.expert_ffn_dim


def layer_params(cfg: ModelConfig, layer_index: int = 0, active: bool = False) -> int:
    """Parameters of one transformer block (`active`: only those one token uses — MoE: top_k experts)."""
    q_out = cfg.n_heads * cfg.head_dim
    kv_out = cfg.kv_heads * cfg.head_dim
    attn = cfg.dim * q_out + 2 * cfg.dim * kv_out + q_out * cfg.dim
    if cfg.bias:
        attn += q_out + 2 * kv_out + cfg.dim
    if cfg.is_moe_layer(layer_index):
        ffn = _moe_params(cfg, cfg.moe.top_k if active else cfg.moe.n_experts)
    else:
        ffn = _ffn_params(cfg)
    return attn + ffn + 2 * _norm_params(cfg)


def count_params(cfg: ModelConfig) -> ParamCounts:
    """Exact parameter count of `Transformer(cfg)` without building it."""
    embedding = cfg.vocab_size * cfg.dim
    if not cfg.tie_embeddings:
        embedding += cfg.vocab_size * cfg.dim
    if arch_spec(cfg).learned_positions:
        embedding += cfg.max_seq_len * cfg.dim
    body = sum(layer_params(cfg, i) for i in range(cfg.n_layers)) + _norm_params(cfg)
    active = sum(layer_params(cfg, i, active=True) for i in range(cfg.n_layers)) + _norm_params(cfg)
    return ParamCounts(total=embedding + body, embedding=embedding, non_embedding=body, active=embedding + active)


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> float:
    """Training FLOPs per token: 6·N + 12·L·H·S, N = activated parameters (see the module docstring)."""
    seq = seq_len or cfg.max_seq_len
    return 6.0 * count_params(cfg).active + 12.0 * cfg.n_layers * cfg.dim * seq


def mfu(tokens_per_sec: float, flops_per_tok: float, peak_flops_per_gpu: float, n_gpus: int = 1) -> float:
    """Model FLOPs utilisation as a fraction: achieved FLOP/s over the hardware peak of all GPUs."""
    if peak_flops_per_gpu <= 0 or n_gpus <= 0:
        raise ValueError("peak FLOP/s and the number of GPUs must be positive")
    return tokens_per_sec * flops_per_tok / (peak_flops_per_gpu * n_gpus)


# Dense bf16 tensor-core peaks (no sparsity), FLOP/s per device, from the vendors' data sheets.
PEAK_BF16_FLOPS: dict[str, float] = {
    "A100": 312e12,
    "A800": 312e12,
    "H100-SXM": 989e12,
    "H100-PCIe": 756e12,
    "H800": 989e12,
    "H200": 989e12,
    "L40S": 362e12,
    "RTX4090": 165e12,
}


def peak_flops_for_device(name: str) -> float | None:
    """Peak bf16 FLOP/s for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3'), or None if unknown."""
    upper = name.upper().replace(" ", "")
    if "H100" in upper:
        return PEAK_BF16_FLOPS["H100-PCIe" if "PCIE" in upper else "H100-SXM"]
    for key in ("H200", "H800", "A800", "A100", "L40S", "RTX4090"):
        if key in upper:
            return PEAK_BF16_FLOPS[key]
    return None


def training_memory_bytes(n_params: int) -> dict[str, dict[str, int]]:
    """Bytes for weights, gradients and AdamW state (no activations), in two common set-ups.

    fp32: fp32 weights (4 B) + fp32 grads (4 B) + Adam m, v (8 B).
    bf16 mixed: bf16 weights (2 B) + bf16 grads (2 B) + fp32 master weights and Adam m, v (12 B)
    — the Megatron / ZeRO layout the report trains with; ZeRO-1 divides the optimizer part by the DP size.
    """
    return {
        "fp32": {"weights": 4 * n_params, "gradients": 4 * n_params, "optimizer": 8 * n_params},
        "bf16-mixed": {"weights": 2 * n_params, "gradients": 2 * n_params, "optimizer": 12 * n_params},
    }
