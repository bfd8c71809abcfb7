"""The one token loss: next-token cross-entropy in float32, labels equal to -100 (`IGNORE_INDEX`) ignored.

Training, validation, SFT validation and evaluation scoring all call `token_loss`, so the loss a run logs, the
loss it validates on and the log-likelihood a benchmark scores are the same function. Logits are upcast to
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
