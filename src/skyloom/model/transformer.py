"""The decoder of the Skywork-13B report §3.4, read top to bottom.

    tokens → embedding → N × [x + Attn(Norm(x)), x + FFN(Norm(x))] → Norm → output projection → logits

`arch="llama"` (Skywork, LLaMA): RMSNorm pre-normalisation, rotary positions (RoPE) on queries/keys,
SwiGLU FFN at ~8/3 width, no biases, optional grouped-query attention.
`arch="gpt"` (the Table-9 baseline): LayerNorm, learned absolute positions, GELU MLP at 4×, dropout.
With `moe` set (Skywork-MoE), the FFN of every `moe.every_n_layers`-th block is a mixture of SwiGLU experts
(model/moe.py); `model.moe_layers()` lists them, each keeping its last aux loss and router statistics.

RoPE uses the "rotate-half" layout (the first and second halves of each head form the complex pairs),
the same as Hugging Face's LlamaForCausalLM, so weights convert without permuting q/k.

Initialisation (`init_weights`): every linear and embedding weight ~ N(0, init_std=0.02); the two
projections that write into the residual stream (attention `wo`, FFN `w2`) use
init_std / sqrt(2·n_layers) (GPT-2 / Megatron), so the residual variance does not grow with depth;
norm weights 1, biases 0. Each tensor has its own generator, seeded from the global RNG and its name, so one seed
gives the same full weights whatever the parallel layout (a sharded parameter draws its full tensor, keeps its part).

Each architecture is one entry of model/arch.py (norm, FFN, positions, block); decoding goes through this same
forward with a key/value cache (`build_kv_cache`, `forward(..., cache=)`; model/kv_cache.py).
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from skyloom.model.arch import arch_spec
from skyloom.model.config import ModelConfig
from skyloom.model.doc_attention import DocumentMask, document_attention
from skyloom.model.kv_cache import KVCache, LayerKV
from skyloom.model.moe import MoE, moe_layers


def name_seed(base: int, name: str) -> int:
    """A 63-bit seed for the tensor called `name` (stable across processes and Python versions)."""
    digest = hashlib.sha256(f"{base}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@torch.no_grad()
def init_normal_(param: torch.Tensor, base: int, name: str, std: float) -> None:
    """Fill `param` with N(0, std) drawn as the full tensor from `name`'s generator; a DTensor keeps its shard."""
    local = param.to_local() if hasattr(param, "to_local") else param
    full = torch.empty(param.shape, dtype=param.dtype, device=local.device)
    full.normal_(0.0, std, generator=torch.Generator(device=local.device).manual_seed(name_seed(base, name)))
    if local is param:
        param.copy_(full)
        return
    from torch.distributed.tensor import distribute_tensor

    mine = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)  # no communication
    local.copy_(mine.to_local())


def _plain_fp32(*tensors: torch.Tensor) -> bool:
    """Float32 tensors that are not DTensors (tensor parallelism), in eager mode: the hand-written kernels of this
    module apply. Under torch.compile the plain formulations are traced instead, which the compiler fuses whole
    (a hand-written autograd Function is a fusion boundary to it)."""
    if torch.compiler.is_compiling():
        return False
    return all(t.dtype == torch.float32 and not hasattr(t, "to_local") for t in tensors)


class _RMSNormFn(torch.autograd.Function):
    """RMSNorm on float32 with a hand-written backward: about half the passes over memory and a third of the
    temporaries of autograd's chain of elementwise ops (pow, mean, rsqrt, two products, each one's backward);
    equal to rounding."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        dim = x.shape[-1]
        # one reduction pass, no x² temporary: mean(x²) = ‖x‖² / dim
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(dim).add_(eps).rsqrt_()
        normed = x * rstd
        ctx.save_for_backward(normed, rstd, weight)
        return normed * weight

    @staticmethod
    def backward(ctx, grad):
        normed, rstd, weight = ctx.saved_tensors
        dim = grad.shape[-1]
        rows = (grad * normed).reshape(-1, dim)  # g ⊙ x̂: summed over rows for the weight, · weight for x
        grad_weight = rows.sum(0) if ctx.needs_input_grad[1] else None
        # d/dx of x·rstd(x)·w: rstd · (g⊙w − x̂ · mean(g⊙w⊙x̂)), the mean as one matrix-vector product, in float32
        # even when the backward runs under autocast (which would otherwise round the product to half precision)
        with torch.autocast(grad.device.type, enabled=False):
            mean_dot = (rows @ weight).div_(dim).view(*grad.shape[:-1], 1)
        return (grad * weight).addcmul_(normed, mean_dot, value=-1).mul_(rstd), grad_weight, None


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x²) + eps) · g  (Zhang & Sennrich 2019), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _plain_fp32(x, self.weight):
            return _RMSNormFn.apply(x, self.weight, self.eps)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotate-half RoPE: angle(p, i) = p · theta^(-2i/d), i < d/2, duplicated."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [..., T, d/2]
    angles = torch.cat([angles, angles], dim=-1)  # [..., T, d]
    return angles.cos(), angles.sin()


def _rotate_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> None:
    """out = (x1·c − sign·x2·s, x2·c + sign·x1·s) by halves, written in place: no rotated copy of x."""
    half = x.shape[-1] // 2
    x1, x2, c, s = x[..., :half], x[..., half:], cos[..., :half], sin[..., :half]
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, c, out=o1)
    o1.addcmul_(x2, s, value=-sign)
    torch.mul(x2, c, out=o2)
    o2.addcmul_(x1, s, value=sign)


class _RopeFn(torch.autograd.Function):
    """Rotate-half RoPE on float32 with a hand-written backward (the rotation by −angle): the autograd chain's values
    up to rounding (negate, concatenate, two products, add), in fewer passes and no temporaries of x's size."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        # x's memory layout kept ([B, T, H, d] under the [B, H, T, d] view), for the output and for the gradient:
        # the gradient then flows back through the transpose and view to the projection without a copy
        out = torch.empty_like(x)
        _rotate_into(out, x, cos, sin, 1.0)
        ctx.save_for_backward(cos, sin)
        ctx.layout = (out.shape, out.stride())
        return out

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        out = torch.empty_strided(*ctx.layout, dtype=grad.dtype, device=grad.device)
        _rotate_into(out, grad, cos, sin, -1.0)
        return out, None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x[i], x[i + d/2]) pair by its angle; x is [B, H, T, d], cos/sin [B or 1, 1, T, d]."""
    fixed_tables = not (cos.requires_grad or sin.requires_grad)
    if _plain_fp32(x, cos, sin) and fixed_tables and x.shape == torch.broadcast_shapes(x.shape, cos.shape):
        return _RopeFn.apply(x, cos, sin)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class Attention(nn.Module):
    """Causal self-attention through scaled_dot_product_attention (FlashAttention kernels on GPU).

    With `kv` (a layer's slot of a `KVCache`), this call's keys/values are appended to the cache and the queries
    attend over everything cached so far, under the cache's mask.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.use_rope = arch_spec(cfg).rotary
        self.rope_theta = cfg.rope_theta
        self.dropout = cfg.dropout
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=cfg.bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.bias)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        attn_mask: torch.Tensor | DocumentMask | None,
        kv: LayerKV | None = None,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        # head counts from the projections' outputs: under tensor parallelism each rank holds only its heads
        q = self.wq(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:
            k, v = kv.update(k, v)
        if isinstance(attn_mask, DocumentMask):  # packed documents: no dense mask (model/doc_attention.py)
            out = document_attention(q, k, v, attn_mask, self.dropout if self.training else 0.0)
            return self.wo(out.transpose(1, 2).reshape(b, t, -1))
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=k.shape[1] != q.shape[1],
        )
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))


class _GatedSiLUFn(torch.autograd.Function):
    """SiLU(gate) ⊙ up with a hand-written backward that works in place where it can: two fewer temporaries of the
    FFN's hidden width than autograd's (SiLU output, product, and each one's backward), and one fewer saved;
    the same values."""

    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        grad_up = F.silu(gate).mul_(grad)
        grad_gate = grad * up
        torch.ops.aten.silu_backward.grad_input(grad_gate, gate, grad_input=grad_gate)
        return grad_gate, grad_up


class SwiGLU(nn.Module):
    """FFN(x) = W2 · (SiLU(W1 x) ⊙ W3 x)  (Shazeer 2020); W1 = gate, W3 = up, W2 = down."""

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x), self.w3(x)
        if _plain_fp32(gate, up):
            return self.w2(_GatedSiLUFn.apply(gate, up))
        return self.w2(F.silu(gate) * up)


class GeluMLP(nn.Module):
    """The GPT baseline's FFN: W2 · GELU(W1 x) at 4× width."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


def build_norm(cfg: ModelConfig) -> nn.Module:
    return arch_spec(cfg).norm(cfg)


def build_ffn(cfg: ModelConfig, layer_index: int) -> nn.Module:
    """The feed-forward sub-layer of block `layer_index`."""
    if cfg.is_moe_layer(layer_index):
        return MoE(cfg.dim, cfg.expert_ffn_dim, cfg.moe)
    return arch_spec(cfg).ffn(cfg, cfg.hidden_ffn_dim)


class Block(nn.Module):
    """Pre-norm residual block: x + Attn(Norm(x)), then x + FFN(Norm(x)); `kv` goes to the attention."""

    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        self.attn_norm = build_norm(cfg)
        self.attn = Attention(cfg)
        self.ffn_norm = build_norm(cfg)
        self.ffn = build_ffn(cfg, layer_index)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, attn_mask, kv: LayerKV | None = None):
        x = residual_add(self.resid_dropout(self.attn(self.attn_norm(x), rope, attn_mask, kv)), x)
        return residual_add(self.resid_dropout(self.ffn(self.ffn_norm(x))), x)


def residual_add(branch: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x + branch, written into `branch` when both are plain tensors of one dtype and `branch` is not a view: the
    branch's output is the block's own fresh tensor, which no backward needs, so the residual stream costs no new
    allocation (~1% of a CPU training step at `small`). The block input `x` is never written (activation
    checkpointing re-reads it); DTensors, collective outputs, views (the MoE layer returns a slice of its combine
    buffer, and an in-place write into a view rebases its autograd history: it broke expert parallelism's backward)
    and mixed dtypes (a bf16 branch onto an fp32 stream) take the plain add."""
    plain = type(branch) is torch.Tensor and type(x) is torch.Tensor
    if plain and branch.dtype == x.dtype and branch._base is None:
        return branch.add_(x)
    return x + branch


class Transformer(nn.Module):
    """Decoder-only language model; `model(input_ids)` returns logits [batch, seq, vocab]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        spec = arch_spec(cfg)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.dim) if spec.learned_positions else None
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(spec.block(cfg, i) for i in range(cfg.n_layers))
        self.norm = build_norm(cfg)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_emb.weight
        if self.tok_emb.weight.device.type != "meta":
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Documented init (module docstring); call after `to_empty()` when built on `meta`.

        Every tensor is drawn from its own generator, seeded from (one draw of the global RNG, its parameter
        name), as a full tensor of which a sharded parameter (a DTensor: FSDP, TP, EP) keeps only its local part:
        so `torch.manual_seed(s)` gives the same full weights on every layout, even a pipeline stage holding a
        few of the layers (its names must be the full model's). Peak extra memory: the largest tensor.
        """
        base = int(torch.randint(0, 2**62, (1,)).item())
        std = self.config.init_std
        resid_std = std / math.sqrt(2 * self.config.n_layers)
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_resid_out = module_name.endswith(("attn.wo", "ffn.w2"))
                init_normal_(module.weight, base, prefix + "weight", resid_std if is_resid_out else std)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, (RMSNorm, nn.LayerNorm)):
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, MoE):  # its gate is an nn.Linear (above); the experts' matrices and buffer:
                for key in ("w1", "w3", "w2"):
                    init_normal_(getattr(module, key), base, prefix + key, resid_std if key == "w2" else std)
                module.aux_coef.fill_(float(module.cfg.aux_coef))

    def moe_layers(self) -> list[tuple[int, MoE]]:
        """(block index, MoE layer) for every MoE block; empty for a dense model."""
        return list(moe_layers(self))

    def build_kv_cache(
        self, batch: int, capacity: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> KVCache:
        """An empty cache for `batch` rows (grows past `capacity` as needed), on the weights' device and dtype."""
        weight = self.tok_emb.weight
        cfg = self.config
        return KVCache(
            cfg.n_layers,
            batch,
            cfg.kv_heads,
            cfg.head_dim,
            capacity,
            device=device or weight.device,
            dtype=dtype or weight.dtype,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attn_mask: torch.Tensor | DocumentMask | None = None,
        cache: KVCache | None = None,
        valid: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Logits for every position.

        position_ids: [B, T] (default 0..T-1), e.g. restarting at each packed sample.
        attn_mask: optional boolean [B, 1, T, T] (True = may attend) replacing the plain causal mask,
        e.g. block-diagonal causal masks for packed samples or padding; the caller keeps it causal.
        doc_ids: [B, T] document ids of packed rows (a document = a run of equal ids): causal attention within
        each document without a dense mask (FlexAttention on CUDA, per-document SDPA elsewhere;
        model/doc_attention.py). `attn_mask=DocumentMask(doc_ids)` is the same (how a `Batch` carries it).
        cache: a `build_kv_cache` cache: `input_ids` continue what it holds, positions and mask come from it;
        valid: [B, T] bool, False for left-padding pads (with a cache only; default all real).
        return_hidden: the final norm's output [B, T, dim] instead of logits, for a loss that applies the output
        projection itself chunk by chunk (model/loss.py `linear_token_loss`).
        """
        b, t = input_ids.shape
        if doc_ids is not None:
            if attn_mask is not None or cache is not None:
                raise ValueError("doc_ids= replaces attn_mask= and does not combine with a KV cache")
            attn_mask = DocumentMask(doc_ids)
        if cache is not None:
            if attn_mask is not None or position_ids is not None:
                raise ValueError("with a KV cache, positions and the attention mask come from the cache")
            if valid is None:
                valid = torch.ones((b, t), dtype=torch.bool, device=input_ids.device)
            position_ids, attn_mask = cache.begin(valid)
        elif valid is not None:
            raise ValueError("valid= marks padding inside a KV cache; without one pass attn_mask")
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device).unsqueeze(0)
        x = self.tok_emb(input_ids)
        rope = None
        if self.pos_emb is not None:
            length = max(t, int(position_ids.max()) + 1)  # with a cache: the positions decoded so far
            if length > self.config.max_seq_len:
                raise ValueError(
                    f"sequence of {length} tokens exceeds the GPT model's max_seq_len={self.config.max_seq_len}"
                )
            x = x + self.pos_emb(position_ids)
        else:
            cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
            rope = (cos.unsqueeze(1), sin.unsqueeze(1))  # [B or 1, 1, T, d]
        x = self.emb_dropout(x)
        if cache is None:
            for layer in self.layers:
                x = layer(x, rope, attn_mask)
        else:
            for index, layer in enumerate(self.layers):
                x = layer(x, rope, attn_mask, cache.layer(index))
            cache.commit(valid)
        x = self.norm(x)
        return x if return_hidden else self.output(x)
