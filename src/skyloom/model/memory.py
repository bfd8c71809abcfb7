"""Per-GPU training memory of a parallel layout, from the config alone: a model of memory, term by term.

Every figure is bytes on the most loaded rank (the planner evaluates every pipeline stage and reports the worst):

states      weights + gradients + optimizer, by precision profile (bytes per parameter, `STATE_BYTES`):
              megatron-bf16  2 + 4 + 12  bf16 weights, fp32 gradient buffer (Megatron-LM accumulates and all-reduces
                                          bf16 runs' gradients in fp32), fp32 master weights + Adam m, v
              zero-bf16      2 + 2 + 12  Rajbhandari et al. (ZeRO, 2020) §3: bf16 weights and gradients
              torch-amp      4 + 4 + 8   skyloom's bf16: fp32 weights under autocast, fp32 gradients, Adam m, v
              fp32           4 + 4 + 8
            ZeRO-1 (zero1, dp_replicate > 1, dp_shard = 1) divides the optimizer part by dp_replicate; FSDP2 (dp_shard
            > 1) divides all three by dp_shard and adds its all-gather buffers: two layers' full weights (the one
            computing and the one prefetched). TP divides a layer's matrices and the (vocabulary-parallel) embedding
            and output by tp; EP holds n_experts / ep experts per rank; PP holds only its stage's layers (the
            embedding on the first stage, final norm + output projection on the last).
activations what autograd keeps for the backward pass, per layer and micro-batch (s = seq, b = micro-batch,
            h = dim, f = FFN width, a = heads, k = kv heads, d = head dim; bf16: 2 bytes per element):
              attention  2sbh norm input + 2sbh QKV input + 2sb(h + 2kd) q, k (after RoPE), v
                         + 2sbh attention output (kept by the flash kernel) + 2sbh output-projection input (the
                         [b, s, a·d] copy of it)                                    = 10sbh + 4sbkd
              FFN        2sbh norm input + 2sbh first-matrix input + SwiGLU 8sbf (gate pre-activation, SiLU output,
                         up projection, their product = second-matrix input); GELU 4sbf
              MoE FFN    the dense FFN's terms for top_k experts per token + the router's fp32 logits 4sb·n_experts
            This is Korthikanti et al. (2022, "Reducing activation recomputation", Eq. 1-2: 34sbh + 5as²b) redone for
            a LLaMA block: no dropout masks, SwiGLU instead of a 4h GELU MLP. The 5as²b term (scores, softmax,
            dropout mask) is absent with FlashAttention, which recomputes them in the backward pass: the report
            trained with FlashAttention-2 (Skywork-13B §3.5), and skyloom's SDPA uses the flash kernel on GPU;
            `flash_attention=False` adds it back. TP divides everything inside the tensor-parallel region by tp;
            with sequence parallelism (Korthikanti §4.2.2) the norms' inputs and outputs are sequence shards too,
            without it those 8sbh stay whole on every TP rank. Full activation checkpointing keeps only each layer's
            input (2sbh) plus one layer's full set while it is recomputed.
in flight   1F1B (Narayanan et al. 2021): stage i holds min(pp − i, micro-batches) micro-batches (the first
            stage holds pp). Interleaved 1F1B with v stages per rank: Megatron-LM's factor 1 + (pp − 1)/(pp·v).
logits      last stage: the final norm's input and output (4sbh, /tp with SP) and the loss over a vocabulary of V
            (vocabulary-parallel with TP): bf16 logits 2sbV, fp32 log-softmax kept for backward 4sbV, its fp32
            gradient 4sbV  = 10sbV / tp.
runtime     memory no tensor accounts for: the CUDA context (kernels loaded eagerly: `CUDA_CONTEXT_BYTES`, 1 GiB,
            what an A100-class GPU shows in nvidia-smi after `torch.cuda.init()` with CUDA 11's eager module
            loading) and NCCL's buffers: per communicator, 32 channels (NCCL's MAXCHANNELS, what NVSwitch nodes use)
            × (Simple 4 MiB + LL128 4.6875 MiB + LL 0.5 MiB) × 2 (ring and tree connections); one communicator per
            mesh dimension of degree > 1, plus the world's (loss, gradient norm).

Units: bytes; the printouts use GB = 10⁹ bytes, as the report's Table 10 says ("Gigabytes (GB)"); an "80 GB"
A800/A100/H100 card holds 80 GiB = 85.9 GB, which is the capacity the OOM verdict compares against (`gpu_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from skyloom.model.config import ModelConfig

GB = 1e9
GIB = 2**30
CUDA_CONTEXT_BYTES = 1 * GIB
NCCL_CHANNELS = 32
NCCL_BYTES_PER_CHANNEL = (4 * 2**20 + 4_915_200 + 2**19) * 2  # Simple + LL128 + LL buffers, ring and tree


@dataclass(frozen=True)
class StateBytes:
    """Bytes per parameter for weights, gradients and optimizer state (the latter includes fp32 master weights)."""

    weights: float
    grads: float
    optimizer: float
    activation: float = 2.0  # bytes per activation element (bf16)


STATE_BYTES: dict[str, StateBytes] = {
    "megatron-bf16": StateBytes(2, 4, 12),
    "zero-bf16": StateBytes(2, 2, 12),
    "torch-amp": StateBytes(4, 4, 8),
    "fp32": StateBytes(4, 4, 8, activation=4.0),
}


@dataclass(frozen=True)
class Layout:
    """A resolved parallel layout (the fields of `train.parallel`, with no -1 left) and the batch it trains."""

    dp_replicate: int = 1
    dp_shard: int = 1
    pp: int = 1
    tp: int = 1
    ep: int = 1
    zero1: bool = True
    sequence_parallel: bool = True
    pp_schedule: str = "1F1B"
    pp_stages_per_rank: int = 1
    pp_split: tuple[int, ...] | None = None
    micro_batch_size: int = 1
    seq_len: int = 4096
    global_batch: int = 4096  # sequences per optimizer step
    activation_checkpointing: bool = False
    flash_attention: bool = True
    precision: str = "megatron-bf16"

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def gpus(self) -> int:
        return self.dp * self.pp * self.tp

    def describe(self) -> str:
        """Table 10's spelling: 'DP256+PP2', 'DP128+TP2+PP2' (+ FSDP/EP/ZeRO-1 where they apply)."""
        parts = [f"DP{self.dp}"] + [f"{k}{v}" for k, v in (("TP", self.tp), ("PP", self.pp), ("EP", self.ep)) if v > 1]
        if self.dp_shard > 1:
            parts.append(f"FSDP{self.dp_shard}")
        elif self.zero1 and self.dp_replicate > 1:
            parts.append("ZeRO-1")
        return "+".join(parts)


def layout_from_parallel(pcfg: Any, world_size: int, **batch: Any) -> Layout:
    """A `Layout` from a `ParallelConfig` (train.parallel) resolved for `world_size` GPUs, plus batch fields."""
    resolved = pcfg.resolved(world_size) if hasattr(pcfg, "resolved") else pcfg
    split = tuple(resolved.pp_split) if resolved.pp_split else None
    return Layout(
        dp_replicate=resolved.dp_replicate,
        dp_shard=resolved.dp_shard,
        pp=resolved.pp,
        tp=resolved.tp,
        ep=resolved.ep,
        zero1=resolved.zero1,
        sequence_parallel=resolved.sequence_parallel,
        pp_schedule=resolved.pp_schedule,
        pp_stages_per_rank=resolved.pp_stages_per_rank,
        pp_split=split,
        **batch,
    )


def stage_layers(n_layers: int, layout: Layout) -> list[list[int]]:
    """Layer indices per pipeline rank: `pp_split` (per virtual stage, rank r holding stages r, r + pp, …) or as
    even as possible with the remainder on the middle ranks (first and last carry the embedding and the loss)."""
    n_stages = layout.pp * layout.pp_stages_per_rank
    if layout.pp_split is not None:
        counts = list(layout.pp_split)
    else:
        base, extra = divmod(n_layers, n_stages)
        order = sorted(range(n_stages), key=lambda i: (i in (0, n_stages - 1), abs(i - (n_stages - 1) / 2)))
        plus = set(order[:extra])
        counts = [base + (i in plus) for i in range(n_stages)]
    starts = [sum(counts[:i]) for i in range(n_stages)]
    ranks: list[list[int]] = [[] for _ in range(layout.pp)]
    for stage, (start, count) in enumerate(zip(starts, counts)):
        ranks[stage % layout.pp].extend(range(start, start + count))
    return ranks


def _layer_weights(cfg: ModelConfig, index: int, layout: Layout) -> float:
    """Parameters of one block held by one rank: matrices / tp, experts / ep (or / tp without EP), norms whole."""
    from skyloom.model.accounting import _moe_params, _norm_params, layer_params

    norms = 2 * _norm_params(cfg)
    if cfg.is_moe_layer(index):
        experts = _moe_params(cfg, cfg.moe.n_experts) - _moe_params(cfg, 0)
        gate = _moe_params(cfg, 0)
        rest = layer_params(cfg, index) - experts - gate - norms
        local_experts = experts / layout.ep if layout.ep > 1 else experts / layout.tp
        return rest / layout.tp + local_experts + gate + norms
    return (layer_params(cfg, index) - norms) / layout.tp + norms


def layer_activation_bytes(cfg: ModelConfig, layout: Layout, index: int = 0) -> float:
    """Bytes autograd keeps for one layer and one micro-batch on one rank (see the module docstring)."""
    from skyloom.model.arch import arch_spec

    s, b, h, t = layout.seq_len, layout.micro_batch_size, cfg.dim, layout.tp
    e = STATE_BYTES[layout.precision].activation
    sb = s * b
    if layout.activation_checkpointing:
        return e * sb * h / (t if layout.sequence_parallel else 1)
    norms = 4 * sb * h  # per block: two norms' inputs and their outputs (the next matrix's input)
    attention = sb * (3 * h + 2 * cfg.kv_heads * cfg.head_dim)  # q, k, v + attention output + its projected copy
    if not layout.flash_attention:
        attention += 2.5 * cfg.n_heads * s * s * b  # Korthikanti's 5as²b bytes in elements of `e` = 2 bytes
    per_expert = (4 if arch_spec(cfg).ffn_in_matrices == 2 else 2) * sb * cfg.hidden_ffn_dim
    if cfg.is_moe_layer(index):
        ffn = cfg.moe.top_k * 4 * sb * cfg.expert_ffn_dim + 2 * sb * cfg.moe.n_experts  # router logits in fp32
    else:
        ffn = per_expert
    inside = (attention + ffn) / t
    outside = norms / t if layout.sequence_parallel else norms
    return e * (inside + outside)


def in_flight(layout: Layout, rank: int) -> float:
    """Micro-batches whose activations pipeline rank `rank` holds at its peak (1F1B; interleaved penalty)."""
    micro = max(1, layout.global_batch // (layout.dp * layout.micro_batch_size))
    held = min(layout.pp - rank, micro)
    if layout.pp_stages_per_rank > 1:
        held *= 1 + (layout.pp - 1) / (layout.pp * layout.pp_stages_per_rank)
    return held


def runtime_bytes(layout: Layout) -> float:
    """CUDA context + NCCL buffers for one communicator per mesh dimension of degree > 1 and the world's."""
    degrees = (layout.dp_replicate, layout.dp_shard, layout.pp, layout.tp, layout.ep)
    communicators = sum(d > 1 for d in degrees) + (layout.gpus > 1)
    return CUDA_CONTEXT_BYTES + communicators * NCCL_CHANNELS * NCCL_BYTES_PER_CHANNEL


@dataclass
class RankMemory:
    """One pipeline rank's memory, term by term (bytes)."""

    rank: int
    layers: int
    params: float
    weights: float
    gradients: float
    optimizer: float
    fsdp_buffers: float
    activations: float
    micro_batches: float
    logits: float
    runtime: float

    @property
    def total(self) -> float:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.fsdp_buffers
            + self.activations
            + self.logits
            + self.runtime
        )


@dataclass
class MemoryPlan:
    """Per-GPU memory of a layout; `peak` is the most loaded pipeline rank's."""

    model: str
    layout: Layout
    ranks: list[RankMemory]
    gpu_bytes: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> RankMemory:
        return max(self.ranks, key=lambda r: r.total)

    @property
    def fits(self) -> bool | None:
        return None if self.gpu_bytes is None else self.peak.total <= self.gpu_bytes

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        peak = self.peak
        return {
            "model": self.model,
            "layout": self.layout.describe(),
            "gpus": self.layout.gpus,
            "precision": self.layout.precision,
            "peak_rank": peak.rank,
            "peak_gb": peak.total / GB,
            "gpu_gb": None if self.gpu_bytes is None else self.gpu_bytes / GB,
            "fits": self.fits,
            "ranks": [dict(asdict(r), total=r.total) for r in self.ranks],
        }


def plan_memory(cfg: ModelConfig, layout: Layout, gpu_bytes: float | None = None) -> MemoryPlan:
    """Memory per pipeline rank for training `cfg` with `layout`; `gpu_bytes` (if given) decides the verdict."""
    from skyloom.model.accounting import _norm_params

    if layout.precision not in STATE_BYTES:
        raise ValueError(f"precision profile {layout.precision!r}: one of {', '.join(STATE_BYTES)}")
    sb = STATE_BYTES[layout.precision]
    ranks_layers = stage_layers(cfg.n_layers, layout)
    runtime = runtime_bytes(layout)
    vocab_params = cfg.vocab_size * cfg.dim / layout.tp
    ranks = []
    for r, layers in enumerate(ranks_layers):
        params = sum(_layer_weights(cfg, i, layout) for i in layers)
        largest = max((_layer_weights(cfg, i, layout) for i in layers), default=0.0)
        first, last = r == 0, r == layout.pp - 1
        if first:
            params += vocab_params
        if last:
            params += _norm_params(cfg) + (0 if cfg.tie_embeddings and first else vocab_params)
        shard = layout.dp_shard
        weights, grads = params * sb.weights / shard, params * sb.grads / shard
        optimizer = params * sb.optimizer / shard
        if shard == 1 and layout.zero1 and layout.dp_replicate > 1:
            optimizer /= layout.dp_replicate
        fsdp = 2 * largest * sb.activation if shard > 1 else 0.0
        micro = in_flight(layout, r)
        acts = micro * sum(layer_activation_bytes(cfg, layout, i) for i in layers)
        if layout.activation_checkpointing and layers:
            ckpt = dict(layout.__dict__, activation_checkpointing=False)
            acts += max(layer_activation_bytes(cfg, Layout(**ckpt), i) for i in layers)
        logits = 0.0
        if last:
            sbt = layout.seq_len * layout.micro_batch_size
            norm = 4 * sbt * cfg.dim * sb.activation / (layout.tp if layout.sequence_parallel else 1)
            logits = norm + 10 * sbt * cfg.vocab_size / layout.tp
        ranks.append(
            RankMemory(
                rank=r,
                layers=len(layers),
                params=params,
                weights=weights,
                gradients=grads,
                optimizer=optimizer,
                fsdp_buffers=fsdp,
                activations=acts,
                micro_batches=micro,
                logits=logits,
                runtime=runtime,
            )
        )
    return MemoryPlan(model=cfg.preset or cfg.arch, layout=layout, ranks=ranks, gpu_bytes=gpu_bytes)


def gpu_capacity_bytes(gpu_gb: float) -> float:
    """A card sold as N GB holds N GiB (80 GB A800 = 85.9 × 10⁹ bytes)."""
    return gpu_gb * GIB


def format_memory(plan: MemoryPlan) -> str:
    """The plan as text: the peak rank's terms, every rank's total, and the verdict."""
    lay, peak = plan.layout, plan.peak
    lines = [
        f"memory per GPU ({plan.model}, {lay.describe()} on {lay.gpus} GPU(s), micro-batch "
        f"{lay.micro_batch_size} × seq {lay.seq_len:,}, {lay.precision}"
        f"{', activation checkpointing' if lay.activation_checkpointing else ''}"
        f"{', SP' if lay.tp > 1 and lay.sequence_parallel else ''}; GB = 10⁹ bytes):"
    ]
    terms = (
        ("weights", peak.weights),
        ("gradients", peak.gradients),
        ("optimizer", peak.optimizer),
        ("FSDP gather buffers", peak.fsdp_buffers),
        (f"activations ({peak.layers} layers × {peak.micro_batches:g} micro-batches)", peak.activations),
        ("logits + loss", peak.logits),
        ("CUDA context + NCCL", peak.runtime),
    )
    width = max(len(name) for name, _ in terms)
    lines.append(f"  pipeline rank {peak.rank} (the most loaded), {peak.params / 1e9:,.2f}B parameters:")
    lines += [f"    {name.ljust(width)} {value / GB:8.1f} GB" for name, value in terms if value]
    lines.append(f"    {'total'.ljust(width)} {peak.total / GB:8.1f} GB")
    if len(plan.ranks) > 1:
        lines.append("  per pipeline rank: " + ", ".join(f"{r.rank}: {r.total / GB:.1f}" for r in plan.ranks) + " GB")
    if plan.gpu_bytes is not None:
        verdict = "fits" if plan.fits else "OOM"
        lines.append(f"  verdict: {verdict} on a {plan.gpu_bytes / GIB:g} GiB GPU ({plan.gpu_bytes / GB:.1f} GB)")
    return "\n".join(lines)
