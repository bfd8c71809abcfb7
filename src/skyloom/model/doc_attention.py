"""Document-masked causal attention without a dense [B, 1, T, T] mask (packed SFT, any document masking).

A row of `doc_ids` [B, T] holds consecutive documents: a document is a run of equal ids (padding at the end of a
packed window is one more run). Query i may see key j iff j ≤ i and both lie in the same run — exactly the dense
block-diagonal causal mask of `sft.packing.block_causal_mask`, which stays as `DocumentMask.dense()` (the
fallback, and what the tests compare against).

Where each path runs (`document_attention`):

* CUDA with Triton, no dropout: FlexAttention (`torch.nn.attention.flex_attention`, compiled) with a `BlockMask`
  built once per forward from the run ids; blocks outside every document are skipped, memory is O(T).
* CPU, no dropout: PyTorch's fused CPU flash-attention kernel called once per document (a custom autograd
  function over the documents' slices of q/k/v): nothing is copied or gathered, memory is what plain causal SDPA
  over the rows needs (O(T)), and work is Σ L² over documents instead of T². (FlexAttention has no CPU backward in
  torch 2.13, and eager CPU flex computes the full T×T scores.)
* anywhere else (dropout, other devices): exact causal SDPA per document, bucketed. Each document is cut out as
  a window starting at its first token and stretched to a bucketed length (≤ 25 % longer; past the batch's end the
  last row repeats); under the causal mask a document's queries never see the stretched tail, so their outputs are
  exact and the tail's are dropped. Windows of one bucket length run as one batched SDPA call (a few dozen calls
  per layer at most); memory is linear in T for a fixed document length (gathered copies of q/k/v, no T×T).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


def run_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] ids → [B, T] 0, 1, 2 … numbering the runs of equal consecutive ids in each row."""
    change = (doc_ids[:, 1:] != doc_ids[:, :-1]).long()
    return torch.cat([torch.zeros_like(doc_ids[:, :1]), change.cumsum(1)], dim=1)


def bucket_length(n: int) -> int:
    """`n` rounded up to a multiple of a quarter of its power of two (≤ 25 % longer): few distinct lengths."""
    if n <= 16:
        return n
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


@dataclass
class SegmentWindows:
    """The documents of one bucket length L: each document's window of L flat rows (row·T + position, clamped
    to the last row) and which of its L outputs are the document's own (its first true-length ones)."""

    length: int
    index: torch.Tensor  # [n, L] flat rows
    keep: torch.Tensor  # [n, L] bool
    kept_rows: torch.Tensor  # [keep.sum()] flat rows of the kept outputs, in index[keep] order


def plan_segments(runs: torch.Tensor) -> list[SegmentWindows]:
    """Group the runs of `runs` [B, T] into bucket lengths (`bucket_length`); every flat row is kept exactly once."""
    b, t = runs.shape
    starts_mask = torch.ones_like(runs, dtype=torch.bool)
    starts_mask[:, 1:] = runs[:, 1:] != runs[:, :-1]
    rows, cols = starts_mask.nonzero(as_tuple=True)
    flat_starts = (rows * t + cols).tolist()
    ends = flat_starts[1:] + [b * t]
    lengths = [min(e, (s // t + 1) * t) - s for s, e in zip(flat_starts, ends)]
    by_bucket: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        by_bucket.setdefault(bucket_length(n), []).append(i)
    plan = []
    for length, members in sorted(by_bucket.items()):
        starts = torch.tensor([flat_starts[i] for i in members])
        true = torch.tensor([lengths[i] for i in members])
        local = torch.arange(length)
        index = starts[:, None] + local[None, :]
        keep = local[None, :] < true[:, None]
        plan.append(SegmentWindows(length, index.clamp(max=b * t - 1), keep, index[keep]))
    return plan


@dataclass(eq=False)
class DocumentMask:
    """Document ids [B, T] standing for the block-diagonal causal mask; derived plans are built once per forward
    (the same object goes through every layer) and cached on the object."""

    doc_ids: torch.Tensor
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.doc_ids.dim() != 2:
            raise ValueError(f"doc_ids must be [batch, seq], got shape {tuple(self.doc_ids.shape)}")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> DocumentMask:
        return DocumentMask(self.doc_ids.to(device, non_blocking=non_blocking))

    @property
    def runs(self) -> torch.Tensor:
        if "runs" not in self._cache:
            self._cache["runs"] = run_ids(self.doc_ids)
        return self._cache["runs"]

    def dense(self) -> torch.Tensor:
        """bool [B, 1, T, T], True = may attend: the fallback and the reference."""
        runs = self.runs
        t = runs.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=runs.device).tril()
        return ((runs[:, :, None] == runs[:, None, :]) & causal)[:, None]

    @torch.compiler.disable  # data-dependent host work, once per forward: outside any compiled graph
    def segment_plan(self) -> list[SegmentWindows]:
        if "plan" not in self._cache:
            device = self.doc_ids.device
            self._cache["plan"] = [
                SegmentWindows(w.length, w.index.to(device), w.keep.to(device), w.kept_rows.to(device))
                for w in plan_segments(self.runs.cpu())
            ]
        return self._cache["plan"]

    @torch.compiler.disable  # data-dependent host work, once per forward: outside any compiled graph
    def spans(self) -> list[tuple[int, int, int]]:
        """(row, start, length) of every document, in row order."""
        if "spans" not in self._cache:
            runs = self.runs.cpu()
            t = runs.shape[1]
            starts = torch.ones_like(runs, dtype=torch.bool)
            starts[:, 1:] = runs[:, 1:] != runs[:, :-1]
            spans = []
            for row, cols in enumerate(starts.tolist()):
                at = [i for i, first in enumerate(cols) if first] + [t]
                spans += [(row, s, e - s) for s, e in zip(at, at[1:])]
            self._cache["spans"] = spans
        return self._cache["spans"]

    def mask_mod(self):
        """FlexAttention mask_mod: causal and same document (run)."""
        runs = self.runs

        def same_document_causal(b, h, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (runs[b, q_idx] == runs[b, kv_idx])

        return same_document_causal

    @torch.compiler.disable  # data-dependent host work, once per forward: outside any compiled graph
    def block_mask(self, block_size: int = 128):
        """FlexAttention BlockMask of `mask_mod` (blocks holding no allowed pair are skipped by the kernel)."""
        key = ("block_mask", block_size)
        if key not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            b, t = self.doc_ids.shape
            self._cache[key] = create_block_mask(
                self.mask_mod(), b, None, t, t, device=self.doc_ids.device, BLOCK_SIZE=block_size
            )
        return self._cache[key]


@torch.compiler.disable  # data-dependent shapes per batch: eager inside a compiled block (a graph break)
def segment_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DocumentMask, dropout_p: float = 0.0
) -> torch.Tensor:
    """Exact document-masked causal attention by causal SDPA over bucketed per-document windows.
    q [B, Hq, T, D], k/v [B, Hkv, T, D] → [B, Hq, T, D]."""
    b, hq, t, d = q.shape
    flat = [x.transpose(1, 2).reshape(b * t, x.shape[1], d) for x in (q, k, v)]  # [B·T, H, D], a view in the model
    plan = mask.segment_plan()
    # one gather per tensor, split per bucket (its backward is one cat, not a full-size buffer per bucket)
    index = torch.cat([w.index.flatten() for w in plan])
    sizes = [w.index.numel() for w in plan]
    parts = [x[index].split(sizes) for x in flat]
    out = q.new_empty(b * t, hq, d)  # every row is written once below
    for w, *qkv in zip(plan, *parts):
        # [n, H, L, D] windows; a stretched tail is never seen by the document's own queries (causal)
        qs, ks, vs = (x.view(*w.index.shape, x.shape[1], d).transpose(1, 2) for x in qkv)
        o = F.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, dropout_p=dropout_p, enable_gqa=ks.shape[1] != qs.shape[1]
        )
        out.index_put_((w.kept_rows,), o.transpose(1, 2)[w.keep])
    return out.view(b, t, hq, d).transpose(1, 2)


class _PerDocumentFlashCPU(torch.autograd.Function):
    """Causal flash attention on CPU, one kernel call per document slice; grads written into one buffer each."""

    @staticmethod
    def forward(ctx, q, k, v, spans):
        groups = q.shape[1] // k.shape[1]
        b, hq, t, d = q.shape
        out = q.new_empty(b, t, hq, d).transpose(1, 2)  # the layout the model's wo projection reads as a view
        lses = []
        for r, s, n in spans:
            qd, kd, vd = _document_slices(q, k, v, r, s, n, groups)
            o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qd, kd, vd, 0.0, True)
            out[r : r + 1, :, s : s + n].copy_(o)
            lses.append(lse)
        ctx.save_for_backward(q, k, v, out, *lses)
        ctx.spans, ctx.groups = spans, groups
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, *lses = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # every row is one document's
        for (r, s, n), lse in zip(ctx.spans, lses):
            qd, kd, vd = _document_slices(q, k, v, r, s, n, ctx.groups)
            piece = (slice(r, r + 1), slice(None), slice(s, s + n))
            dqd, dkd, dvd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad[piece], qd, kd, vd, out[piece], lse, 0.0, True
            )
            if ctx.groups > 1:  # the repeated key/value heads' gradients add up to their shared head's
                dkd, dvd = (x.unflatten(1, (-1, ctx.groups)).sum(2) for x in (dkd, dvd))
            dq[piece].copy_(dqd), dk[piece].copy_(dkd), dv[piece].copy_(dvd)
        return dq, dk, dv, None


def _document_slices(q, k, v, r: int, s: int, n: int, groups: int):
    qd, kd, vd = (x[r : r + 1, :, s : s + n] for x in (q, k, v))
    if groups > 1:  # grouped-query attention: the fused CPU kernel wants one key/value head per query head
        kd, vd = kd.repeat_interleave(groups, 1), vd.repeat_interleave(groups, 1)
    return qd, kd, vd


@torch.compiler.disable  # a Python loop over documents: eager inside a compiled block (a graph break)
def per_document_flash_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DocumentMask) -> torch.Tensor:
    """Exact document-masked causal attention on CPU without copies (module docstring)."""
    return _PerDocumentFlashCPU.apply(q, k, v, mask.spans())


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


CPU_FLASH_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def flex_available(q: torch.Tensor, dropout_p: float) -> bool:
    """FlexAttention's fused kernel: CUDA with Triton only (no dropout; eager CPU flex would materialise T×T).
    Without it the bucketed SDPA path runs (exact, O(T) memory)."""
    if not (q.is_cuda and dropout_p == 0.0):
        return False
    from torch.utils._triton import has_triton

    return has_triton()


def flex_document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DocumentMask) -> torch.Tensor:
    return _compiled_flex()(q, k, v, block_mask=mask.block_mask(), enable_gqa=k.shape[1] != q.shape[1])


def document_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: DocumentMask, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal attention within documents: FlexAttention on CUDA, per-document flash on CPU, bucketed SDPA else."""
    if q.shape[2] != mask.doc_ids.shape[1] or q.shape[0] != mask.doc_ids.shape[0]:
        raise ValueError(
            f"doc_ids of shape {tuple(mask.doc_ids.shape)} do not match {q.shape[0]} rows of {q.shape[2]} tokens"
        )
    if flex_available(q, dropout_p):
        return flex_document_attention(q, k, v, mask)
    if q.device.type == "cpu" and dropout_p == 0.0 and q.dtype in CPU_FLASH_DTYPES:
        return per_document_flash_cpu(q, k, v, mask)
    return segment_attention(q, k, v, mask, dropout_p)
