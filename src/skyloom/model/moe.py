"""The Skywork-MoE feed-forward layer: gate, top-k routing, capacity and token drop, SwiGLU experts.

    z = W x + b                                   gate logits (Eq. 1), computed in fp32
    z̃ = λ·(z − mean z)/std z                      gating logit normalisation (Eq. 6), when `gate_norm`
    g = softmax(z̃)                                full gate distribution over the n experts
    E = top-k(g)                                  the k experts of each token
    y = (1/s)·Σ_{j∈E, kept} g_j · Expert_j(x)     s = Σ_{j∈E} g_j (Eq. 2); a dropped slot adds 0

Capacity: every expert takes at most C = ceil(k·T/n·capacity_factor) of the k·T slots of one forward pass
(T tokens of this rank's micro-batch); which slots lose when an expert is over-subscribed is `drop_policy`:
"probs" drops the slots with the lowest gate probability for that expert first (Megatron-LM's default),
"position" keeps the earliest slots in (batch row, position) order and drops the latest. A dropped slot
contributes nothing, so a token that loses all its slots passes through the block unchanged (the residual).
`dropless` removes the cap (Mixtral-style); in eval mode the cap applies only with `drop_in_eval`.

Dispatch is a sort, not a loop over tokens: slots are ordered by (expert, priority), each kept slot gets a row
in an expert-grouped buffer, the experts run on their rows, and a weighted `index_add_` scatters the results back
to their tokens. Two layouts, neither of which reads a count back to the host during a training step:

* "padded" (everywhere but Hopper): a [n_experts, C, dim] buffer, C = the capacity (static: known from T), and one
  batched matmul per matrix. Dropless / eval mode has no capacity: C = the largest expert's count, the one host
  read-back left (once per layer, only there).
* "grouped_mm" (CUDA sm90+ in bf16): contiguous groups padded to 16 rows, one `torch._grouped_mm` per matrix,
  group offsets kept on the device.

Expert parallelism (`ep_group`, set by `skyloom.train.parallel.expert.apply_expert_parallel`): the layer holds
n_experts/ep experts; the padded buffer is exchanged with one equal-split all-to-all each way (each rank sends
every owner its C rows per expert of that owner), so shapes stay static and no split sizes go through the host.
Routing, capacity, drops, aux losses and statistics stay per rank and micro-batch — the same numbers as without
EP (and as one process whose micro-batch is this rank's).

Expert Data Parallelism (`route_group`, the tensor-parallel ranks with sequence parallelism: MoE report B.1): the
ranks of the group hold sequence shards of the same micro-batch and the experts are sharded over the same ranks.
Each rank computes the gate on its own shard; the gate probabilities (n_experts numbers per token, not the hidden
states) are all-gathered, so routing, capacity and drops are decided over the whole micro-batch exactly as one
process decides them; each rank then sends its own tokens' rows to their experts' owners by all-to-all (a buffer
row belongs to one rank's token, zeros elsewhere, so the owner's sum of what it receives is that row exactly), and
every owner returns its experts' rows. The gate's gradient (each rank's own tokens) is summed over the group.

After every forward the layer keeps `last_aux_loss` (the unweighted load-balancing loss, with gradient) and
`last_stats` (detached sums for diagnostics, see `router_stats`); `aux_coef` is a persistent buffer, so the
(adaptive) coefficient travels in every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from skyloom.model.moe_config import MoEConfig
from skyloom.model.moe_losses import aux_loss_eq4, aux_loss_switch

GROUPED_MM_ALIGN = 16  # rows per expert group for torch._grouped_mm (16-byte aligned group starts in bf16/fp32)


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    """C = ceil(k·T/n · capacity_factor): slots one expert may take out of the k·T of a forward pass."""
    return math.ceil(top_k * n_tokens / n_experts * capacity_factor)


def gate_probabilities(
    logits: torch.Tensor, gate_norm: bool = False, lam: float = 1.0, eps: float = 1e-6
) -> torch.Tensor:
    """softmax over experts of the logits, normalised first (Eq. 6) when `gate_norm`: λ·(z − µ)/sqrt(σ² + eps).

    σ is the population standard deviation over the n logits of one token; eps keeps an all-equal row
    (e.g. a zero-initialised gate) finite — it maps to the uniform distribution.
    """
    z = logits if logits.dtype == torch.float64 else logits.float()
    if gate_norm:
        mean = z.mean(dim=-1, keepdim=True)
        var = z.var(dim=-1, keepdim=True, unbiased=False)
        z = lam * (z - mean) * torch.rsqrt(var + eps)
    return torch.softmax(z, dim=-1)


def select_experts(probs: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k of each row: (probabilities [N,k] descending, expert ids [N,k], weights = probs / their sum)."""
    top_p, top_i = probs.topk(top_k, dim=-1)
    return top_p, top_i, top_p / top_p.sum(dim=-1, keepdim=True)


def assign_slots(
    top_i: torch.Tensor,
    top_p: torch.Tensor,
    n_experts: int,
    capacity: int | None,
    policy: str = "probs",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Who gets a place at each expert.

    Returns (keep [N,k] bool, rank [N,k] = place in the expert's queue, tokens_per_expert [n] before dropping).
    The queue of an expert is ordered by descending gate probability ("probs") or by token order ("position");
    the first `capacity` places are kept (all of them when capacity is None).
    """
    expert = top_i.reshape(-1)
    n_slots = expert.numel()
    if policy == "probs":
        by_prob = torch.argsort(top_p.reshape(-1), descending=True, stable=True)
        order = by_prob[torch.argsort(expert[by_prob], stable=True)]
    elif policy == "position":
        order = torch.argsort(expert, stable=True)
    else:
        raise ValueError(f"unknown drop policy {policy!r} (probs or position)")
    counts = torch.bincount(expert, minlength=n_experts)
    starts = torch.cumsum(counts, 0) - counts
    sorted_rank = torch.arange(n_slots, device=expert.device) - starts[expert[order]]
    rank = torch.empty_like(sorted_rank)
    rank[order] = sorted_rank
    rank = rank.view_as(top_i)
    keep = torch.ones_like(top_i, dtype=torch.bool) if capacity is None else rank < capacity
    return keep, rank, counts


def router_stats(
    probs: torch.Tensor, tokens_per_expert: torch.Tensor, kept_per_expert: torch.Tensor, top_k: int
) -> dict[str, torch.Tensor]:
    """Detached *sums* over the tokens of one forward pass, so micro-batches and ranks can simply be added.

    tokens, assigned[n] (slots routed to each expert), kept[n] (after capacity), entropy_sum (nats, of the full
    gate distribution), max12_sum / max23_sum (Σ over tokens of Max1/Max2 and Max2/Max3 of the gate
    probabilities, the report's Figure 3 sharpness measures; Max2/Max3 needs n ≥ 3).
    """
    with torch.no_grad():
        p = probs.float()
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)
        top = p.topk(min(3, p.shape[-1]), dim=-1).values.clamp_min(1e-30)
        zero = p.new_zeros(())
        return {
            "tokens": p.new_tensor(float(p.shape[0])),
            "assigned": tokens_per_expert.float(),
            "kept": kept_per_expert.float(),
            "entropy_sum": entropy.sum(),
            "max12_sum": (top[:, 0] / top[:, 1]).sum() if top.shape[-1] >= 2 else zero,
            "max23_sum": (top[:, 1] / top[:, 2]).sum() if top.shape[-1] >= 3 else zero,
        }


def summarize_stats(stats: dict[str, torch.Tensor], top_k: int) -> dict[str, object]:
    """Summed statistics → the logged diagnostics: drop rate, load histogram (fractions), entropy, ratios."""
    tokens = float(stats["tokens"])
    assigned = stats["assigned"].double()
    total = float(assigned.sum())
    dropped = total - float(stats["kept"].double().sum())
    return {
        "drop_rate": dropped / total if total else 0.0,
        "load": [float(v) / total if total else 0.0 for v in assigned.tolist()],
        "entropy": float(stats["entropy_sum"]) / tokens if tokens else 0.0,
        "max1_max2": float(stats["max12_sum"]) / tokens if tokens else 0.0,
        "max2_max3": float(stats["max23_sum"]) / tokens if tokens else 0.0,
    }


def _local(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly FSDP-sharded) parameter."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def expert_similarity(layer: MoE) -> float | None:
    """Average pairwise cosine similarity of the experts' flattened weights [w1, w3, w2] (report Fig. 1 right).

    1 for freshly upcycled (identical) experts, ~0 for independently initialised ones. Built from per-matrix Gram
    matrices, so no concatenated copy of the experts is made. None with a single expert.
    """
    n = layer.n_experts
    if n < 2:
        return None
    gram = None
    for w in (layer.w1, layer.w3, layer.w2):
        flat = _local(w).reshape(n, -1).float()
        g = flat @ flat.T
        gram = g if gram is None else gram + g
    norms = gram.diagonal().clamp_min(1e-30).sqrt()
    cos = gram / (norms[:, None] * norms[None, :])
    off = cos.sum() - cos.diagonal().sum()
    return float(off) / (n * (n - 1))


def _shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a parameter: the local experts of an expert-parallel DTensor, else the tensor."""
    return t.to_local() if hasattr(t, "to_local") else t


def _swiglu_bmm(rows: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """w2[e] · (SiLU(w1[e] x) ⊙ w3[e] x) for every expert e at once: rows [E, C, dim], weights [E, out, in]."""
    h = F.silu(torch.bmm(rows, w1.transpose(1, 2))) * torch.bmm(rows, w3.transpose(1, 2))
    return torch.bmm(h, w2.transpose(1, 2))


class _AllToAll(torch.autograd.Function):
    """Equal-split all-to-all: row block q of every rank's [group, …] input goes to rank q. Its own inverse, so the
    backward sends the gradients back the same way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        import torch.distributed as dist

        ctx.group = group
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x.contiguous(), group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _AllToAll.apply(grad.contiguous(), ctx.group), None


class _GatherSequence(torch.autograd.Function):
    """Per-token rows of every rank's sequence shard ([B·T/g, n] each) → [B·T, n] in (batch row, position) order,
    on every rank of `group`. Backward keeps this rank's shard: what is computed from the gathered rows is computed
    identically on every rank (or, for the combine weights, only for this rank's tokens), so the other shards'
    gradients are their own ranks' to pass on."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, batch_rows: int, group) -> torch.Tensor:
        import torch.distributed as dist

        size, me = dist.get_world_size(group), dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.batch_rows, ctx.size, ctx.me = batch_rows, size, me
        width = x.shape[-1]
        return torch.stack(parts).view(size, batch_rows, -1, width).transpose(0, 1).reshape(-1, width)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        width = grad.shape[-1]
        mine = grad.reshape(ctx.batch_rows, ctx.size, -1, width)[:, ctx.me]
        return mine.reshape(-1, width), None, None


def own_sequence_tokens(batch_rows: int, local_len: int, index: int, size: int, device) -> torch.Tensor:
    """Flat (row, position) indices, in the whole micro-batch, of sequence shard `index` of `size`."""
    rows = torch.arange(batch_rows, device=device)[:, None] * (local_len * size)
    return (rows + index * local_len + torch.arange(local_len, device=device)[None, :]).reshape(-1)


class _ExpertGrad(torch.autograd.Function):
    """Identity forward; backward: the experts' gradient summed over `replicas` and divided by `divisor` (the
    loss scale the trainer applies for DDP, which skips the experts). Lives in the graph, not in a parameter
    hook, so it survives `to_empty` / `.to()` re-creating the parameters."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, divisor: float, replicas) -> torch.Tensor:
        ctx.divisor, ctx.replicas = divisor, replicas
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.replicas is not None:
            import torch.distributed as dist

            grad = grad.clone()
            dist.all_reduce(grad, group=ctx.replicas)
        return grad / ctx.divisor, None, None


def exchange(x: torch.Tensor, group) -> torch.Tensor:
    """All-to-all of `x` ([group size, …]: block q for rank q) over `group`, with autograd."""
    return _AllToAll.apply(x, group)


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return weight.dtype


def grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """torch._grouped_mm's fast kernels: CUDA compute capability ≥ 9.0 (Hopper) in bf16."""
    return (
        device.type == "cuda"
        and hasattr(torch, "_grouped_mm")
        and dtype == torch.bfloat16
        and torch.cuda.get_device_capability(device) >= (9, 0)
    )


class MoE(nn.Module):
    """Mixture of SwiGLU experts replacing one block's FFN (module docstring has the equations)."""

    def __init__(self, dim: int, hidden: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        self.dim, self.hidden = dim, hidden
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k
        self.gate = nn.Linear(dim, cfg.n_experts, bias=cfg.gate_bias)
        # Expert j is SwiGLU: w2[j] · (SiLU(w1[j] x) ⊙ w3[j] x); stored [experts, out, in] like nn.Linear.
        self.w1 = nn.Parameter(torch.empty(cfg.n_experts, hidden, dim))
        self.w3 = nn.Parameter(torch.empty(cfg.n_experts, hidden, dim))
        self.w2 = nn.Parameter(torch.empty(cfg.n_experts, dim, hidden))
        self.register_buffer("aux_coef", torch.tensor(float(cfg.aux_coef)))
        self.expert_impl = "auto"  # "auto" | "padded" (alias "loop") | "grouped_mm" (tests and benchmarks pick one)
        self.ep_group = None  # expert parallelism: the process group the experts are sharded over
        self.ep_size = 1
        self.ep_replicas = None  # the process group of the ranks holding the same experts (None: no copies)
        self.ep_grad_divisor = 1.0  # the experts' gradients are divided by it (see skyloom.train.parallel.expert)
        self.gate_grad_group = None  # the gate's gradient is summed over it (and divided by ep_grad_divisor)
        self.route_group = None  # Expert Data Parallelism: the ranks whose sequence shards are routed together
        self.last_aux_loss: torch.Tensor | None = None
        self.last_stats: dict[str, torch.Tensor] | None = None
        if self.w1.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02, resid_std: float | None = None) -> None:
        """Gate and expert inputs ~ N(0, std); expert outputs ~ N(0, resid_std) like the dense FFN's w2."""
        nn.init.normal_(self.gate.weight, std=std)
        if self.gate.bias is not None:
            nn.init.zeros_(self.gate.bias)
        nn.init.normal_(self.w1, std=std)
        nn.init.normal_(self.w3, std=std)
        nn.init.normal_(self.w2, std=std if resid_std is None else resid_std)
        self.aux_coef.fill_(float(self.cfg.aux_coef))

    def capacity(self, n_tokens: int) -> int | None:
        """Slots per expert for a forward pass of `n_tokens` tokens; None = no cap (dropless, or eval mode)."""
        if self.cfg.dropless or not (self.training or self.cfg.drop_in_eval):
            return None
        return expert_capacity(n_tokens, self.n_experts, self.top_k, self.cfg.capacity_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x_ND = x.reshape(-1, self.dim)
        n_local = x_ND.shape[0]  # this rank's tokens (a sequence shard of the micro-batch under EDP)
        cfg = self.cfg

        # 1. Gate in fp32 or wider (autocast off: routing decisions should not depend on bf16 rounding).
        rdtype = torch.promote_types(x.dtype, torch.float32)
        gate_w, gate_b = (_shard(t) if t is not None else None for t in (self.gate.weight, self.gate.bias))
        if self.gate_grad_group is not None:  # EP over FSDP / EDP: each rank's gate gradient covers its own tokens
            gate_w, gate_b = (
                _ExpertGrad.apply(t, self.ep_grad_divisor, self.gate_grad_group) if t is not None else None
                for t in (gate_w, gate_b)
            )
        with torch.autocast(x.device.type, enabled=False):
            bias = gate_b.to(rdtype) if gate_b is not None else None
            logits = F.linear(x_ND.to(rdtype), gate_w.to(rdtype), bias)
        probs = gate_probabilities(logits, cfg.gate_norm, cfg.gate_norm_lambda, cfg.gate_norm_eps)
        if self.route_group is not None:  # EDP: route the group's sequence shards together, as one process does
            probs = _GatherSequence.apply(probs, shape[0], self.route_group)
        n_tokens = probs.shape[0]
        top_p, top_i, weights = select_experts(probs, self.top_k)

        # 2. Capacity: which slots keep their place.
        capacity = self.capacity(n_tokens)
        keep, rank, tokens_per_expert = assign_slots(top_i, top_p, self.n_experts, capacity, cfg.drop_policy)
        kept_per_expert = tokens_per_expert if capacity is None else tokens_per_expert.clamp(max=capacity)

        # 3. Losses and statistics of this forward pass.
        if cfg.aux_loss == "eq4":
            self.last_aux_loss = aux_loss_eq4(probs)
        elif cfg.aux_loss == "switch":
            self.last_aux_loss = aux_loss_switch(probs, tokens_per_expert, self.top_k)
        else:
            self.last_aux_loss = None
        self.last_stats = router_stats(probs, tokens_per_expert, kept_per_expert, self.top_k)
        if self.route_group is not None:  # from here on: this rank's own tokens only
            import torch.distributed as dist

            own = own_sequence_tokens(
                shape[0], n_local // shape[0], dist.get_rank(self.route_group), self.ep_size, x.device
            )
            top_i, keep, rank, weights = top_i[own], keep[own], rank[own], weights[own]

        # 4. Dispatch, experts, combine.
        compute_dtype = _compute_dtype(x, self.w1)
        use_grouped = self.ep_group is None and (
            self.expert_impl == "grouped_mm"
            or (self.expert_impl == "auto" and grouped_mm_supported(x.device, compute_dtype))
        )
        slot_token = torch.arange(n_local, device=x.device).repeat_interleave(self.top_k)
        if use_grouped:
            align = GROUPED_MM_ALIGN
            max_kept = (
                n_tokens * self.top_k if capacity is None else min(n_tokens * self.top_k, capacity * self.n_experts)
            )
            n_rows = max_kept + self.n_experts * (align - 1) + 1  # + one spare row that absorbs dropped slots
            padded = (kept_per_expert + align - 1) // align * align
            group_start = torch.cumsum(padded, 0) - padded
            slot_row = torch.where(keep, group_start[top_i] + rank, n_rows - 1).reshape(-1)
        else:
            per_expert = self._rows_per_expert(capacity, n_tokens, tokens_per_expert)
            n_rows = self.n_experts * per_expert + 1  # [experts, C] rows + the spare row
            slot_row = torch.where(keep, top_i * per_expert + rank, n_rows - 1).reshape(-1)
        row_token = torch.full((n_rows,), n_local, device=x.device, dtype=torch.long)
        row_token[slot_row] = torch.where(keep.reshape(-1), slot_token, n_local)
        row_weight = weights.new_zeros(n_rows)
        row_weight[slot_row] = torch.where(keep, weights, 0.0).reshape(-1)

        x_padded = torch.cat([x_ND, x_ND.new_zeros(1, self.dim)])  # row n_local = zeros (padding rows)
        rows = x_padded[row_token]
        if use_grouped:
            out_rows = self._experts_grouped(rows, padded, n_rows)
        else:
            out = self._experts_padded(rows[:-1].view(self.n_experts, per_expert, self.dim))
            out_rows = torch.cat([out.reshape(-1, self.dim), out.new_zeros(1, self.dim)])
        out_rows = out_rows * row_weight.to(out_rows.dtype)[:, None]
        y = out_rows.new_zeros(n_local + 1, self.dim).index_add_(0, row_token, out_rows)
        return y[:n_local].reshape(shape)

    def _rows_per_expert(self, capacity: int | None, n_tokens: int, tokens_per_expert: torch.Tensor) -> int:
        """C of the padded layout: the capacity (static), or without one the largest count — over the EP group,
        whose ranks must agree on the shapes they exchange (the only host read-back, dropless/eval only)."""
        if capacity is not None:
            return max(min(capacity, n_tokens), 1)  # an expert takes a token at most once
        largest = tokens_per_expert.max().reshape(1)
        if self.ep_group is not None:
            import torch.distributed as dist

            dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=self.ep_group)
        return max(int(largest.item()), 1)

    def _experts_padded(self, rows: torch.Tensor) -> torch.Tensor:
        """SwiGLU of every expert on its [C, dim] rows as batched matmuls; [n_experts, C, dim] in and out.

        With expert parallelism the rows of the experts another rank owns go there and come back (all-to-all).
        """
        w1, w3, w2 = (_shard(w) for w in (self.w1, self.w3, self.w2))
        if self.ep_group is None:
            return _swiglu_bmm(rows, w1, w3, w2)
        w1, w3, w2 = (_ExpertGrad.apply(w, self.ep_grad_divisor, self.ep_replicas) for w in (w1, w3, w2))
        ep, n_local, per_expert = self.ep_size, self.n_experts // self.ep_size, rows.shape[1]
        if self.route_group is not None:  # EDP: every rank's buffer has rows of all experts, zeros but its tokens'
            received = exchange(rows.reshape(ep, -1), self.ep_group).view(ep, n_local, per_expert, self.dim)
            out = _swiglu_bmm(received.sum(0), w1, w3, w2)  # one non-zero term per row: that row exactly
            everyone = exchange(out.reshape(1, -1).expand(ep, -1), self.ep_group)  # all my experts' rows to all
            return everyone.view(self.n_experts, per_expert, -1)
        # rows of the experts of owner q are contiguous ([q·n_local, (q+1)·n_local)): send block q to rank q
        received = exchange(rows.reshape(ep, n_local * per_expert * self.dim), self.ep_group)
        mine = received.view(ep, n_local, per_expert, self.dim).transpose(0, 1).reshape(n_local, -1, self.dim)
        out = _swiglu_bmm(mine, w1, w3, w2)
        back = out.reshape(n_local, ep, per_expert, -1).transpose(0, 1).reshape(ep, -1)
        return exchange(back, self.ep_group).view(self.n_experts, per_expert, -1)

    def _experts_grouped(self, rows: torch.Tensor, padded: torch.Tensor, n_rows: int) -> torch.Tensor:
        """Three torch._grouped_mm calls; the last group also takes the tail rows (zeros), so offs[-1] = rows."""
        dtype = _compute_dtype(rows, self.w1)
        offs = torch.cumsum(padded, 0).to(torch.int32)
        offs[-1] = n_rows
        xr = rows.to(dtype)
        w1, w3, w2 = (w.to(dtype) for w in (self.w1, self.w3, self.w2))
        h = F.silu(torch._grouped_mm(xr, w1.transpose(-2, -1), offs=offs)) * torch._grouped_mm(
            xr, w3.transpose(-2, -1), offs=offs
        )
        return torch._grouped_mm(h, w2.transpose(-2, -1), offs=offs)


def moe_layers(model: nn.Module) -> Iterator[tuple[int, MoE]]:
    """(block index, MoE layer) of every MoE block of a skyloom Transformer (works through DDP/compile wrappers),
    or of a pipeline rank's part, whose blocks sit in a ModuleDict keyed by their index."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    blocks = inner.layers
    indexed = ((int(k), b) for k, b in blocks.items()) if isinstance(blocks, nn.ModuleDict) else enumerate(blocks)
    for i, block in indexed:
        if isinstance(block.ffn, MoE):
            yield i, block.ffn


def weighted_aux_loss(model: nn.Module) -> torch.Tensor | None:
    """Σ_l α_l · L_aux^(l) over the MoE layers' last forward (the term added to the cross-entropy), or None."""
    total = None
    for _, layer in moe_layers(model):
        if layer.last_aux_loss is None:
            continue
        term = layer.aux_coef.float() * layer.last_aux_loss
        total = term if total is None else total + term
    return total


def expert_lr_scale_fn(cfg: MoEConfig):
    """Appendix C.1: a `lr_scale_fn(name, param)` giving the experts' weights k/n or sqrt(k/n) of the LR.

    Only the expert matrices (`layers.N.ffn.w1/w2/w3` of MoE blocks, which see ~k/n of the tokens) are scaled;
    the gate sees every token and keeps the global rate.
    """
    scale = cfg.lr_scale()

    def lr_scale(name: str, param: torch.Tensor) -> float:
        parts = name.split(".")
        is_expert = len(parts) >= 2 and parts[-2] == "ffn" and parts[-1] in ("w1", "w2", "w3") and param.ndim == 3
        return scale if is_expert else 1.0

    return lr_scale
