"""Named model shapes: the report's Table 3 and Table 9 models, and small sizes for tests/demo.

Each preset is a plain dict of ModelConfig fields; `model: {preset: NAME, ...}` in YAML starts from it.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Table 3, Skywork-13B: deeper and narrower than LLaMA2-13B.
    "skywork-13b": dict(
        arch="llama",
        vocab_size=65536,
        dim=4608,
        ffn_dim=12288,
        n_heads=36,
        n_layers=52,
        max_seq_len=4096,
        norm_eps=1e-6,
    ),
    # Table 3, LLaMA2-13B (FFN 13,824 as released; the report's table prints 13,696).
    "llama2-13b": dict(
        arch="llama",
        vocab_size=32000,
        dim=5120,
        ffn_dim=13824,
        n_heads=40,
        n_layers=40,
        max_seq_len=4096,
        norm_eps=1e-5,
    ),
    # Table 9: the controlled GPT-vs-LLaMA 7B pair (same data, so the same 65,536 vocabulary).
    "gpt-7b": dict(
        arch="gpt",
        vocab_size=65536,
        dim=4096,
        ffn_dim=16384,
        n_heads=32,
        n_layers=32,
        max_seq_len=4096,
        dropout=0.1,
        bias=True,
    ),
    "llama-7b": dict(
        arch="llama",
        vocab_size=65536,
        dim=4096,
        ffn_dim=11008,
        n_heads=32,
        n_layers=32,
        max_seq_len=4096,
    ),
    # Skywork-MoE (MoE report, Table 2): the Skywork-13B shape with 16 SwiGLU experts of the dense FFN width in
    # every layer, top-2 routing, native sequence length 8192 → 146.4B total / 22.7B activated parameters
    # (the report's Table 1: 146B / 22B). Trained with gating logit normalisation (λ = 1) and adaptive
    # aux-loss coefficients (ξ = 1/5, α_max = 0.01, β = 0.99).
    "skywork-moe": dict(
        arch="llama",
        vocab_size=65536,
        dim=4608,
        ffn_dim=12288,
        n_heads=36,
        n_layers=52,
        max_seq_len=8192,
        norm_eps=1e-6,
        moe=dict(
            n_experts=16,
            top_k=2,
            every_n_layers=1,
            gate_norm=True,
            gate_norm_lambda=1.0,
            aux_loss="eq4",
            adaptive=True,
            aux_coef=0.01,
            xi=0.2,
            alpha_max=0.01,
            beta=0.99,
        ),
    ),
    # Small sizes for tests, the demo and CPU experiments.
    "tiny": dict(
        arch="llama",
        vocab_size=8192,
        dim=128,
        ffn_dim=352,
        n_heads=4,
        n_layers=4,
        max_seq_len=256,
    ),
    "tiny-gpt": dict(
        arch="gpt",
        vocab_size=8192,
        dim=128,
        ffn_dim=512,
        n_heads=4,
        n_layers=4,
        max_seq_len=256,
        dropout=0.0,
        bias=True,
    ),
    # `tiny` with 8 experts of its FFN width, top-2, in every layer (6.7M total, 3.4M active parameters).
    "tiny-moe": dict(
        arch="llama",
        vocab_size=8192,
        dim=128,
        ffn_dim=352,
        n_heads=4,
        n_layers=4,
        max_seq_len=256,
        moe=dict(n_experts=8, top_k=2, every_n_layers=1, gate_norm=True, adaptive=True),
    ),
    "small": dict(
        arch="llama",
        vocab_size=16384,
        dim=512,
        ffn_dim=1408,
        n_heads=8,
        n_layers=8,
        max_seq_len=1024,
    ),
    # A LLaMA-shaped ~143M model on the report's 65,536 vocabulary (84M of it embeddings and output projection):
    # the trainer benchmark's largest CPU size, where the loss over the full vocabulary weighs most.
    "base-150m": dict(
        arch="llama",
        vocab_size=65536,
        dim=640,
        ffn_dim=1728,
        n_heads=10,
        n_layers=12,
        max_seq_len=2048,
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)
