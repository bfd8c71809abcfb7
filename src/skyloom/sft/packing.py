"""SFT samples → fixed-length training windows for the trainer, packed or padded.

A sample of n tokens occupies n−1 positions of a window (inputs ids[:-1], labels ids[1:], a label kept only
where the predicted token is trainable). Two layouts:

* `packed` — several samples share a window (first-fit over the last 64 open windows, in the epoch's
  shuffled order). Positions restart at 0 for every sample and attention is block-diagonal causal, so no
  token attends across a sample boundary and each sample is computed exactly as if it were alone.
  The unused tail is padding (label -100, its own block, never seen by real tokens). The batch carries the
  blocks as a `DocumentMask` (per-token block ids, no dense [B,1,T,T] mask): the model runs FlexAttention on
  CUDA and per-sample SDPA on CPU (model/doc_attention.py); `block_causal_mask` is the equivalent dense mask.
* `padded` — one sample per window, right-padded; plain causal attention is already exact then, so no
  mask or position ids are passed (the fast SDPA path).

The order is fixed by (seed, epoch): epoch e shuffles the samples with `Random(seed * 1000003 + e)` and lays
them out; the windows of all epochs form one stream cut into steps of `global_windows`, rank r taking its
contiguous slice (like the pretraining mixture), so the state is just the step number. The last step is
completed with empty windows (no targets) rather than by repeating data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

import torch

from skyloom.data.batch import IGNORE_INDEX, Batch
from skyloom.model.doc_attention import DocumentMask
from skyloom.sft.data import Sample

Layout = Literal["packed", "padded"]
OPEN_WINDOWS = 64


def layout_windows(lengths: Sequence[int], order: Sequence[int], seq_len: int, layout: Layout) -> list[list[int]]:
    """Sample indices per window. `lengths` are sample lengths in tokens (each ≤ seq_len + 1)."""
    if layout == "padded":
        return [[i] for i in order]
    windows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        need = lengths[i] - 1
        placed = False
        for w in range(max(0, len(windows) - OPEN_WINDOWS), len(windows)):
            if room[w] >= need:
                windows[w].append(i)
                room[w] -= need
                placed = True
                break
        if not placed:
            windows.append([i])
            room.append(seq_len - need)
    return windows


def build_window(samples: Sequence[Sample], seq_len: int, pad_id: int, layout: Layout):
    """(input_ids [T], labels [T], position_ids [T], block ids [T]) of one window; block −1 = padding."""
    ids = torch.full((seq_len,), pad_id, dtype=torch.long)
    labels = torch.full((seq_len,), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros(seq_len, dtype=torch.long)
    block = torch.full((seq_len,), -1, dtype=torch.long)
    at = 0
    for b, s in enumerate(samples):
        n = len(s.ids) - 1
        if at + n > seq_len:
            raise ValueError(f"samples of {at + n} positions do not fit a window of {seq_len}")
        ids[at : at + n] = torch.as_tensor(s.ids[:-1])
        target = torch.as_tensor(s.ids[1:])
        keep = torch.as_tensor(s.trainable[1:], dtype=torch.bool)
        labels[at : at + n] = torch.where(keep, target, torch.full_like(target, IGNORE_INDEX))
        pos[at : at + n] = torch.arange(n)
        block[at : at + n] = b
        at += n
    if at < seq_len:
        pos[at:] = torch.arange(seq_len - at)
    return ids, labels, pos, block


def block_causal_mask(blocks: torch.Tensor) -> torch.Tensor:
    """bool [B, 1, T, T]: query i may see key j iff j ≤ i and both lie in the same block (padding is a block)."""
    t = blocks.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    same = blocks[:, :, None] == blocks[:, None, :]
    return (same & causal)[:, None]


def make_batch(samples_per_window: Sequence[Sequence[Sample]], seq_len: int, pad_id: int, layout: Layout) -> Batch:
    parts = [build_window(s, seq_len, pad_id, layout) for s in samples_per_window]
    ids, labels, pos, blocks = (torch.stack(x) for x in zip(*parts))
    if layout == "padded":
        return Batch(ids, labels)
    return Batch(ids, labels, pos, DocumentMask(blocks))


class SFTBatchSource:
    """The trainer's batch source for SFT (see the module docstring); `state_dict` is the step number."""

    def __init__(
        self,
        samples: Sequence[Sample],
        seq_len: int,
        global_windows: int,
        micro_batch_size: int,
        epochs: float | None,
        pad_id: int,
        layout: Layout = "packed",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        min_windows: int = 0,
    ):
        """`epochs` passes over the samples (a fraction takes the first part of the last epoch's order); with
        `epochs=None`, whole epochs are added until there are at least `min_windows` windows."""
        if not samples:
            raise ValueError("no SFT samples")
        if global_windows % world_size:
            raise ValueError(f"{global_windows} windows per step do not split over {world_size} ranks")
        too_long = [i for i, s in enumerate(samples) if len(s) > seq_len + 1]
        if too_long:
            raise ValueError(
                f"sample {too_long[0]} has {len(samples[too_long[0]])} tokens > seq_len + 1 = {seq_len + 1}"
            )
        self.samples = list(samples)
        self.seq_len, self.global_windows, self.micro = seq_len, global_windows, micro_batch_size
        self.pad_id, self.layout, self.seed = pad_id, layout, seed
        self.rank, self.world_size = rank, world_size
        self.step = 0
        lengths = [len(s) for s in self.samples]
        self.windows: list[list[int]] = []
        self.epoch_windows: list[int] = []
        whole, frac = (int(epochs), epochs - int(epochs)) if epochs is not None else (1 << 30, 0.0)
        e = 0
        while e < whole + (1 if frac > 1e-9 else 0):
            order = list(range(len(self.samples)))
            random.Random(seed * 1000003 + e).shuffle(order)
            if e == whole:  # a fractional last epoch: the first part of its shuffled order
                order = order[: max(1, round(frac * len(order)))]
            w = layout_windows(lengths, order, seq_len, layout)
            self.windows += w
            self.epoch_windows.append(len(w))
            e += 1
            if epochs is None and len(self.windows) >= min_windows:
                break
        self.total_steps = -(-len(self.windows) // global_windows)

    def stats(self) -> dict[str, float]:
        """Real (non-pad) positions, target tokens and the non-pad share over all windows of the run."""
        real = sum(len(self.samples[i]) - 1 for w in self.windows for i in w)
        targets = sum(self.samples[i].n_targets for w in self.windows for i in w)
        total = len(self.windows) * self.seq_len
        return {
            "windows": len(self.windows),
            "positions": total,
            "real_tokens": real,
            "target_tokens": targets,
            "non_pad_share": real / total if total else 0.0,
            "samples_per_window": sum(len(w) for w in self.windows) / max(len(self.windows), 1),
        }

    def step_windows(self, step: int) -> list[list[int]]:
        """This rank's windows (sample indices) of `step`; missing ones past the end are empty."""
        per_rank = self.global_windows // self.world_size
        start = step * self.global_windows + self.rank * per_rank
        return [self.windows[j] if j < len(self.windows) else [] for j in range(start, start + per_rank)]

    def next_batches(self) -> list[Batch]:
        mine = self.step_windows(self.step)
        self.step += 1
        out = []
        for k in range(0, len(mine), self.micro):
            group = [[self.samples[i] for i in w] for w in mine[k : k + self.micro]]
            out.append(make_batch(group, self.seq_len, self.pad_id, self.layout))
        return out

    def state_dict(self) -> dict:
        return {
            "kind": "sft",
            "step": self.step,
            "windows": len(self.windows),
            "layout": self.layout,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict, sources_only: bool = False) -> None:
        if state.get("kind") != "sft":
            raise ValueError("the checkpoint's loader state is not an SFT run's")
        if state.get("windows") != len(self.windows) or state.get("layout") != self.layout:
            raise ValueError(
                f"the SFT data changed since the checkpoint ({state.get('windows')} {state.get('layout')} "
                f"windows then, {len(self.windows)} {self.layout} now); resume with the same data and config"
            )
        self.step = int(state["step"])
