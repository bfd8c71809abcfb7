"""Incremental decoding for skyloom's `Transformer`: a key/value cache so each new token costs one position.

`Transformer.forward` recomputes the whole sequence; for generation (GSM8K's 8-shot prompts are ~1,000
tokens, answers up to 256) that is hundreds of times more work. `cached_forward` walks the same
modules as `Transformer.forward` (embedding, each block's norm → q/k/v → RoPE → attention → output
projection, FFN, final norm, output) but keeps every layer's keys and values, so a step attends over
the cache instead of recomputing it. tests/test_eval_lm.py checks it against the full forward.

Left padding: each row's positions count only its real tokens, pads are masked as keys, and every
query may always see itself, so no attention row is empty (an empty row would give NaN, and NaN
values leak into real rows through 0·NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from skyloom.model.transformer import Attention, Block, Transformer, apply_rope, rope_cos_sin


def supports_kv_cache(model: torch.nn.Module) -> bool:
    """True for the dense blocks `cached_forward` knows how to walk."""
    return isinstance(model, Transformer) and all(
        isinstance(layer, Block) and isinstance(layer.attn, Attention) for layer in model.layers
    )


class KVCache:
    """Per-layer keys/values [B, H_kv, S, d], which cached positions are real, and each row's next position."""

    def __init__(self, model: Transformer, batch: int, capacity: int, device: torch.device, dtype: torch.dtype):
        cfg = model.config
        shape = (batch, cfg.kv_heads, capacity, cfg.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.layers]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.layers]
        self.key_valid = torch.zeros((batch, capacity), device=device, dtype=torch.bool)
        self.length = 0
        self.next_position = torch.zeros(batch, device=device, dtype=torch.long)

    @property
    def capacity(self) -> int:
        return self.key_valid.shape[1]

    def reserve(self, needed: int) -> None:
        """Grow (doubling) so that `needed` positions fit."""
        if needed <= self.capacity:
            return
        new = max(needed, 2 * self.capacity)

        def grow(t: torch.Tensor, dim: int) -> torch.Tensor:
            pad_shape = list(t.shape)
            pad_shape[dim] = new - t.shape[dim]
            return torch.cat([t, t.new_zeros(pad_shape)], dim=dim)

        self.keys = [grow(k, 2) for k in self.keys]
        self.values = [grow(v, 2) for v in self.values]
        self.key_valid = grow(self.key_valid, 1)


def _mask(cache: KVCache, start: int, end: int) -> torch.Tensor:
    """[B, 1, T, S]: causal, pads hidden as keys, and each query always sees itself."""
    device = cache.key_valid.device
    q = torch.arange(start, end, device=device)[:, None]
    k = torch.arange(end, device=device)[None, :]
    mask = (k <= q)[None] & cache.key_valid[:, None, :end]
    return (mask | (k == q)[None])[:, None]


def cached_forward(model: Transformer, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor,
                   cache: KVCache) -> torch.Tensor:
    """Logits [B, T, V] for `ids` appended after what `cache` holds; updates the cache."""
    cfg = model.config
    b, t = ids.shape
    start, end = cache.length, cache.length + t
    cache.reserve(end)
    cache.key_valid[:, start:end] = valid
    mask = _mask(cache, start, end)
    x = model.tok_emb(ids)
    rope = None
    if model.pos_emb is not None:
        x = x + model.pos_emb(positions)
    else:
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        rope = (cos.unsqueeze(1), sin.unsqueeze(1))
    for index, layer in enumerate(model.layers):
        attn = layer.attn
        h = layer.attn_norm(x)
        q = attn.wq(h).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
        k = attn.wk(h).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        v = attn.wv(h).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        cache.keys[index][:, :, start:end] = k
        cache.values[index][:, :, start:end] = v
        out = F.scaled_dot_product_attention(
            q, cache.keys[index][:, :, :end], cache.values[index][:, :, :end], attn_mask=mask,
            enable_gqa=attn.n_kv_heads != attn.n_heads,
        )
        x = x + attn.wo(out.transpose(1, 2).reshape(b, t, -1))
        x = x + layer.ffn(layer.ffn_norm(x))
    cache.length = end
    return model.output(model.norm(x))


def left_padded_positions(valid: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, … counted over each row's real tokens (pads get 0)."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def padded_causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] mask for a full (uncached) forward over left-padded rows; same rule as `_mask`."""
    t = valid.shape[1]
    idx = torch.arange(t, device=valid.device)
    mask = (idx[None, :] <= idx[:, None])[None] & valid[:, None, :]
    return (mask | (idx[None, :] == idx[:, None])[None])[:, None]
