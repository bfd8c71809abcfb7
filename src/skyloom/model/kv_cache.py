"""Incremental decoding, owned by the model: a key/value cache that `Transformer.forward` fills and reads.

    cache = model.build_kv_cache(batch, capacity)
    logits = model(prompt_ids, cache=cache, valid=valid)   # prefill (left-padded rows: valid marks real tokens)
    logits = model(next_ids[:, None], cache=cache)         # one position per step, attending over the cache

Design (litgpt's `build_kv_cache` / `input_pos`, with the cache an object passed to `forward` rather than module
state, so training, FSDP and checkpoints never see it): the cache tracks each row's next position and which cached
positions are real, and builds the attention mask once per call; `forward` hands every block its layer's slot
(`cache.layer(i)`), and the block's attention writes its new keys/values there and attends over all of them — the
same `Attention.forward` as the full pass, so a model change cannot diverge between the two. A block whose forward
ignores its slot is caught at once: `commit` raises naming the layers that did not use the cache.

Left padding: each row's positions count only its real tokens, pads are masked as keys, and every query may always
see itself, so no attention row is empty (an empty row would give NaN, and NaN leaks into real rows through 0·NaN).
"""

from __future__ import annotations

import torch


class LayerKV:
    """One layer's view of the cache: `update(k, v)` stores this call's keys/values and returns all of them."""

    def __init__(self, cache: KVCache, index: int):
        self.cache, self.index = cache, index

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.update(self.index, k, v)


class KVCache:
    """Per-layer keys/values [B, H_kv, S, d], which cached positions are real, and each row's next position."""

    def __init__(
        self,
        n_layers: int,
        batch: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        shape = (batch, kv_heads, max(capacity, 1), head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.key_valid = torch.zeros((batch, shape[2]), device=device, dtype=torch.bool)
        self.length = 0
        self.next_position = torch.zeros(batch, device=device, dtype=torch.long)
        self._span: tuple[int, int] | None = None
        self._written: list[bool] = []

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

    def begin(self, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Open a call appending `valid.shape[1]` positions: (their positions [B, T], attention mask [B, 1, T, S])."""
        if self._span is not None:
            raise RuntimeError("the previous cached forward did not finish (commit was not called)")
        start, end = self.length, self.length + valid.shape[1]
        self.reserve(end)
        self.key_valid[:, start:end] = valid
        positions = self.next_position[:, None] + left_padded_positions(valid)
        q = torch.arange(start, end, device=valid.device)[:, None]
        k = torch.arange(end, device=valid.device)[None, :]
        mask = (k <= q)[None] & self.key_valid[:, None, :end]
        self._span, self._written = (start, end), [False] * len(self.keys)
        return positions, (mask | (k == q)[None])[:, None]

    def layer(self, index: int) -> LayerKV:
        return LayerKV(self, index)

    def update(self, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store layer `index`'s keys/values [B, H_kv, T, d] for the open call; all cached ones so far."""
        if self._span is None:
            raise RuntimeError("KVCache.update outside a cached forward (call begin first)")
        start, end = self._span
        self.keys[index][:, :, start:end] = k
        self.values[index][:, :, start:end] = v
        self._written[index] = True
        return self.keys[index][:, :, :end], self.values[index][:, :, :end]

    def commit(self, valid: torch.Tensor) -> None:
        """Close the call; refuses if a layer did not go through the cache (its block forgot the cache path)."""
        missing = [i for i, done in enumerate(self._written) if not done]
        if missing:
            self._span = None
            raise RuntimeError(
                f"layers {missing} did not use the KV cache: their block's forward must pass its "
                "`kv` slot to the attention (see model/kv_cache.py)"
            )
        self.length = self._span[1]
        self.next_position = self.next_position + valid.long().sum(-1)
        self._span = None


def left_padded_positions(valid: torch.Tensor) -> torch.Tensor:
    """Positions 0, 1, … counted over each row's real tokens (pads get 0)."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def padded_causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] mask for a full (uncached) forward over left-padded rows; the same rule as `KVCache.begin`."""
    t = valid.shape[1]
    idx = torch.arange(t, device=valid.device)
    mask = (idx[None, :] <= idx[:, None])[None] & valid[:, None, :]
    return (mask | (idx[None, :] == idx[:, None])[None])[:, None]
