"""The one token loss: next-token cross-entropy in float32, labels equal to -100 (`IGNORE_INDEX`) ignored.

Training, validation, SFT validation and evaluation scoring all compute this loss, so the loss a run logs, the
loss it validates on and the log-likelihood a benchmark scores are the same function: `token_loss` on logits, or
`linear_token_loss` (one-process training) on hidden states with the output projection applied chunk by chunk,
equal up to float rounding (tests/test_chunked_loss.py). Logits are upcast to
float32 (half-precision log-softmax loses digits over large vocabularies). Without autograd the rows are
processed in groups that keep the float32 copy under `max_elements`; with autograd one call is made (the
backward keeps the float32 log-probabilities either way, so groups would save nothing and change rounding).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from skyloom.data.batch import IGNORE_INDEX

DEFAULT_MAX_ELEMENTS = 1 << 26


def token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    reduction: Literal["sum", "none"] = "sum",
    ignore_index: int = IGNORE_INDEX,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> torch.Tensor:
    """Cross-entropy of logits [B, T, V] against labels [B, T].

    reduction="sum": a float32 scalar, the sum over every label ≠ `ignore_index`;
    reduction="none": float32 [B, T], 0 where the label is `ignore_index`.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"token_loss wants logits [B, T, V] and labels [B, T], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if reduction not in ("sum", "none"):
        raise ValueError(f"token_loss reduction must be 'sum' or 'none', got {reduction!r}")
    b, t, v = logits.shape
    grouped = not (torch.is_grad_enabled() and logits.requires_grad)
    rows = max(1, max_elements // max(t * v, 1)) if grouped else max(b, 1)
    parts = []
    for start in range(0, b, rows):
        chunk = logits[start : start + rows]
        parts.append(
            F.cross_entropy(
                chunk.float().reshape(-1, v),
                labels[start : start + rows].reshape(-1),
                reduction=reduction,
                ignore_index=ignore_index,
            )
        )
    if reduction == "none":
        return torch.cat(parts).view(b, t) if parts else logits.new_zeros((b, t), dtype=torch.float32)
    if not parts:
        return logits.new_zeros((), dtype=torch.float32)
    return parts[0] if len(parts) == 1 else torch.stack(parts).sum()


# ---- the output projection and the loss in one pass, row chunk by row chunk ----

DEFAULT_CHUNK_ELEMENTS = 1 << 22  # float32 logits of one chunk: 16 MiB, a few times the CPU's L2/L3 share
# ...but never fewer rows: each chunk adds its product into the whole [vocab, dim] weight gradient, and with few
# rows that product is a thin, memory-bound GEMM (at 65,536 × 640, 64-row chunks made the loss slower than the plain
# path; 512 rows: 8% faster; on 1 CPU thread)
MIN_CHUNK_ROWS = 512


class _LinearCrossEntropy(torch.autograd.Function):
    """sum(CE(hidden @ weight.T, labels)) over labels ≠ ignore_index, chunk by chunk of rows.

    Only one chunk's float32 logits ever exist. With gradients wanted, each chunk's gradients (softmax − one-hot,
    through the projection) are formed right after its loss, while its logits are still hot, so the backward only
    scales them by the incoming gradient: the same three matrix products as the plain path, no recomputation, and
    memory hidden-sized + weight-sized instead of [rows, vocab] three times (logits, log-probabilities, gradient).
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, ignore_index, chunk_rows, compute_dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            w = weight.to(compute_dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden) if want_hidden else None
            grad_weight = None  # the first chunk's product, then each later chunk added into it
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start : start + chunk_rows].to(compute_dtype)
                y = labels[start : start + chunk_rows]
                logits = (h @ w.t()).float()
                valid = y != ignore_index
                target = torch.where(valid, y, torch.zeros_like(y)).unsqueeze(1)
                picked = logits.gather(1, target).squeeze(1)
                # log-sum-exp by hand, in the logits' storage: one exp pass serves the loss and the softmax
                # (torch.logsumexp allocates its own shifted copy and exponentiates it again)
                peak = logits.amax(dim=-1, keepdim=True)
                exps = logits.sub_(peak).exp_()
                sums = exps.sum(dim=-1, keepdim=True)
                lse = (sums.log() + peak).squeeze(1)
                total += torch.where(valid, lse - picked, 0.0).sum()
                if not (want_hidden or want_weight):
                    continue
                keep = valid.unsqueeze(1)
                # softmax − one-hot on kept rows, zeros on ignored ones (÷ inf), with no separate masking pass
                probs = exps.div_(torch.where(keep, sums, torch.inf))
                probs.scatter_add_(1, target, keep.to(probs.dtype).neg_())
                grad_logits = probs.to(compute_dtype)
                if want_hidden:
                    grad_hidden[start : start + chunk_rows] = grad_logits @ w
                if want_weight:
                    if grad_weight is None:
                        grad_weight = (grad_logits.t() @ h).float()
                    elif compute_dtype == torch.float32:
                        grad_weight.addmm_(grad_logits.t(), h)
                    else:
                        grad_weight += (grad_logits.t() @ h).float()
            if want_weight and grad_weight is None:  # no rows
                grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            # kept on ctx, not saved: the backward scales them in place and hands them over without a copy
            ctx.grads = (grad_hidden, grad_weight)
            ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        if ctx.grads is None:
            raise RuntimeError("linear_token_loss: a second backward through the same graph is not supported")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None  # the only other reference: autograd may now take these tensors as the .grad themselves
        if grad_hidden is not None:
            grad_hidden = grad_hidden.mul_(grad_output.to(grad_hidden.dtype))
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None


def linear_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """`token_loss(hidden @ weight.T, labels)` (reduction "sum", float32) without the [B, T, V] logits.

    hidden [B, T, D] (the final norm's output), weight [V, D] (the output projection), labels [B, T]. The
    projection runs in the autocast dtype when autocast is on (as `nn.Linear` would), in float32 otherwise; the
    softmax and the loss are float32. Equal to the plain path up to float rounding (tests/test_chunked_loss.py);
    deterministic: fixed chunks, fixed order. chunk_rows: rows per chunk (default: 16 MiB of float32 logits, at
    least `MIN_CHUNK_ROWS`).
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2] or weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            "linear_token_loss wants hidden [B, T, D], weight [V, D] and labels [B, T], got "
            f"{tuple(hidden.shape)}, {tuple(weight.shape)} and {tuple(labels.shape)}"
        )
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    if chunk_rows is None:
        chunk_rows = max(MIN_CHUNK_ROWS, DEFAULT_CHUNK_ELEMENTS // max(weight.shape[0], 1))
    return _LinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, labels.reshape(-1), ignore_index, chunk_rows, compute_dtype
    )
