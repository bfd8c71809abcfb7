"""The unit the trainer consumes: a micro-batch of token windows with next-token labels.

Any data source (pretraining mixture, packed SFT samples …) produces `Batch`es; the loss is cross-entropy
over every label that is not -100 (`IGNORE_INDEX`), so prompt masking and padding need nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

IGNORE_INDEX = -100


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64, IGNORE_INDEX where no loss is taken
    position_ids: torch.Tensor | None = None  # [B, T], e.g. restarting per packed sample
    attn_mask: torch.Tensor | None = None  # bool [B, 1, T, T], True = may attend (kept causal by the producer)

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.input_ids), move(self.labels), move(self.position_ids), move(self.attn_mask))

    @property
    def n_targets(self) -> int:
        """Tokens that carry a loss (labels ≠ -100)."""
        return int((self.labels != IGNORE_INDEX).sum())

    @staticmethod
    def from_windows(windows: torch.Tensor) -> Batch:
        """[B, T+1] token windows → inputs = w[:, :-1], labels = w[:, 1:] (every position predicted)."""
        return Batch(windows[:, :-1].contiguous(), windows[:, 1:].contiguous())


class BatchSource(Protocol):
    """What the trainer needs from a data source; `MixtureLoader` is the pretraining one.

    `next_batches()` returns this rank's micro-batches for the next optimizer step (its slice of one global
    batch); `state_dict()` must capture the exact position so that a resumed run continues identically.
    """

    def next_batches(self) -> list[Batch]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
