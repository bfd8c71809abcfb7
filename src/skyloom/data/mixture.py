"""Training windows drawn from a weighted mixture of token sources, deterministically from a seed.

How a run's data is fixed (identical for every data-parallel layout):

* **Windows.** Each source's token stream (documents back to back, each ending with EOS) is cut into
  non-overlapping windows of `seq_len + 1` tokens: window j = tokens [j·(L+1), (j+1)·(L+1)). Inputs are the
  first L tokens, labels the last L. Fewer than L+1 tail tokens are never used.
* **Order inside a source.** Epoch e visits the windows in the order of a seeded bijection of the window indices,
  `IndexPermutation(n_windows, (seed, crc32(name), e))` (data/permutation.py: a Feistel network with cycle
  walking, computed per index, never stored — a rank's memory does not grow with the corpus); the k-th window
  drawn from a source is epoch k // n_windows, position k % n_windows of that permutation.
* **Mixture.** Step s draws `global_windows` windows. Each source's weight at s is its schedule evaluated at
  the fraction of training s / (total_steps − 1) (piecewise-linear between points, constant beyond),
  normalised over sources. Counts per step follow the weights exactly over time (largest-remainder rounding
  of the cumulative ideal counts, so rounding never drifts). The step's windows are then shuffled with
  `default_rng([seed, s])` into global slots 0 … global_windows−1.
* **Ranks.** Rank r of W takes slots [r·G/W, (r+1)·G/W) and splits them into micro-batches in order, so every
  layout sees the same global batch and the ranks' slices are disjoint.
* **State.** The position is (step, windows drawn per source, cumulative ideal counts): a few numbers, saved
  in every checkpoint; resuming on another number of ranks continues the same sequence.
* **Epoch cap.** `plan()` simulates the whole run and reports per source the tokens available, tokens to be
  drawn and epochs; `check_plan()` refuses a plan that repeats any source more than its `max_epochs`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from skyloom.config import ConfigError
from skyloom.data.batch import Batch
from skyloom.data.permutation import IndexPermutation
from skyloom.data.shards import TokenSource

STATE_VERSION = 2  # 2: the per-source order is the computed IndexPermutation (1: a stored numpy shuffle)


class PlanError(ConfigError):
    """The data plan is impossible (a source would be repeated beyond its epoch cap, or is too small).

    A ConfigError (so a ValueError too): every command reports it as `skyloom: error: …`, exit 2, wherever it
    is raised — `--plan-only`, the run itself, the demo."""

    def __init__(self, message: str, key: str = ""):
        super().__init__(key, message)


class WeightSchedule:
    """A mixture weight over training: a constant, or piecewise-linear points [[fraction, weight], …]."""

    def __init__(self, spec: float | Sequence[Sequence[float]]):
        if isinstance(spec, (int, float)):
            self.xs, self.ws = np.array([0.0]), np.array([float(spec)])
        else:
            pts = [(float(x), float(w)) for x, w in spec]
            self.xs, self.ws = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        if not np.all(np.isfinite(self.ws)) or not np.all(np.isfinite(self.xs)):
            raise ValueError(f"non-finite mixture weight in {spec!r}")
        if np.any(self.ws < 0):
            raise ValueError(f"negative mixture weight in {spec!r}")

    def __call__(self, fraction: float) -> float:
        """Weight at `fraction` ∈ [0, 1] of training; held constant before the first and after the last point."""
        return float(np.interp(fraction, self.xs, self.ws))

    @property
    def is_constant(self) -> bool:
        return len(self.ws) == 1 or bool(np.all(self.ws == self.ws[0]))

    def describe(self) -> str:
        if self.is_constant:
            return f"{self.ws[0]:g}"
        return " → ".join(f"{w:g}@{x:g}" for x, w in zip(self.xs, self.ws))


@dataclass
class MixtureSourceSpec:
    name: str
    source: TokenSource
    weight: WeightSchedule
    max_epochs: float


class _WindowedSource:
    """One source cut into windows of L+1 tokens, visited in a computed (not stored) permutation per epoch."""

    def __init__(self, spec: MixtureSourceSpec, window: int, seed: int):
        self.spec = spec
        self.name = spec.name
        self.window = window
        self.n_windows = len(spec.source) // window
        self._key = zlib.crc32(spec.name.encode("utf-8"))
        self._seed = seed
        self._perm_epoch = -1
        self._perm: IndexPermutation | None = None  # the latest epoch's: a few round keys, O(1) in n_windows

    def _permutation(self, epoch: int) -> IndexPermutation:
        if self._perm is None or self._perm_epoch != epoch:
            self._perm = IndexPermutation(self.n_windows, (self._seed, self._key, epoch))
            self._perm_epoch = epoch
        return self._perm

    def window_indices(self, ks: np.ndarray) -> np.ndarray:
        """Which windows the draws `ks` (each counted from 0 over the whole run) read, vectorised per epoch."""
        ks = np.asarray(ks, dtype=np.int64)
        epochs, pos = np.divmod(ks, self.n_windows)
        out = np.empty(len(ks), dtype=np.int64)
        for epoch in np.unique(epochs):  # a step's draws from a source span at most a few epochs
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch)).take(pos[sel]).astype(np.int64)
        return out

    def window_index(self, k: int) -> int:
        """Which window the k-th draw (counting from 0 over the whole run) reads."""
        return int(self.window_indices(np.array([k]))[0])

    def read_window(self, j: int) -> np.ndarray:
        return self.spec.source.read(j * self.window, self.window)

    def read(self, k: int) -> np.ndarray:
        return self.read_window(self.window_index(k))


class MixtureLoader:
    """Deterministic mixture loader; `next_batches()` gives this rank's micro-batches for one step."""

    def __init__(
        self,
        sources: Sequence[MixtureSourceSpec],
        *,
        seq_len: int,
        global_windows: int,
        micro_batch_size: int,
        total_steps: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not sources:
            raise PlanError("a mixture needs at least one source")
        if global_windows % (world_size * micro_batch_size):
            raise PlanError(
                f"the global batch of {global_windows} windows does not split into {world_size} ranks × "
                f"micro-batches of {micro_batch_size}; change train.global_batch_tokens or train.micro_batch_size"
            )
        self.seq_len = seq_len
        self.global_windows = global_windows
        self.micro_batch_size = micro_batch_size
        self.total_steps = total_steps
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.sources = [_WindowedSource(s, seq_len + 1, seed) for s in sources]
        for s in self.sources:
            if s.n_windows == 0:
                raise PlanError(
                    f"source '{s.name}' ({s.spec.source.directory}) has {len(s.spec.source)} tokens, "
                    f"fewer than one window of seq_len+1 = {seq_len + 1}"
                )
        self.step = 0
        self.drawn = np.zeros(len(self.sources), dtype=np.int64)
        self.ideal = np.zeros(len(self.sources), dtype=np.float64)

    # ---- the mixture arithmetic (pure functions of the state) ----

    def weights_at(self, step: int) -> np.ndarray:
        """Normalised source weights at `step`."""
        frac = step / (self.total_steps - 1) if self.total_steps > 1 else 0.0
        w = np.array([s.spec.weight(min(max(frac, 0.0), 1.0)) for s in self.sources])
        top = w.max()
        if not top > 0:
            raise PlanError(
                f"all mixture weights (data.sources.*.weight) are 0 at step {step} (fraction {frac:.3f} of training)"
            )
        w = w / top  # scaled to ≤ 1 first: weights near the float maximum (1e308) cannot overflow the sum
        return w / w.sum()

    def _counts(self, step: int, drawn: np.ndarray, ideal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows per source for `step` (summing to global_windows) and the new cumulative ideal."""
        g = self.global_windows
        ideal = ideal + g * self.weights_at(step)
        deficit = ideal - drawn
        counts = np.maximum(np.floor(deficit), 0).astype(np.int64)
        while counts.sum() > g:  # only after a source's weight fell to 0: take back the least owed
            owed = np.where(counts > 0, deficit - counts, np.inf)
            counts[int(np.argmin(owed))] -= 1
        missing = g - int(counts.sum())
        if missing:
            order = np.argsort(-(deficit - counts), kind="stable")  # largest remainder first, ties by order
            for i in order[:missing]:
                counts[i] += 1
            while counts.sum() < g:  # cannot happen with ≤ g sources short by < 1, kept for safety
                counts[int(np.argmax(deficit - counts))] += 1
        return counts, ideal

    def _assignment(self, step: int, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per global slot: source index and draw number k, after the step's seeded shuffle."""
        src = np.repeat(np.arange(len(self.sources)), counts)
        k = np.concatenate([self.drawn[i] + np.arange(c) for i, c in enumerate(counts)]) if len(src) else src
        order = np.random.default_rng([self.seed, step]).permutation(len(src))
        return src[order], k[order]

    # ---- iteration ----

    @property
    def accumulation_steps(self) -> int:
        return self.global_windows // (self.world_size * self.micro_batch_size)

    def next_windows(self) -> np.ndarray:
        """This rank's [per_rank, L+1] windows for the next step; advances the state."""
        counts, ideal = self._counts(self.step, self.drawn, self.ideal)
        src, k = self._assignment(self.step, counts)
        per_rank = self.global_windows // self.world_size
        lo = self.rank * per_rank
        out = np.empty((per_rank, self.seq_len + 1), dtype=np.int64)
        src, k = src[lo : lo + per_rank], k[lo : lo + per_rank]
        for i, source in enumerate(self.sources):
            rows = np.flatnonzero(src == i)
            for row, j in zip(rows, source.window_indices(k[rows])):
                out[row] = source.read_window(int(j))
        self.drawn += counts
        self.ideal = ideal
        self.step += 1
        self.last_counts = counts
        return out

    def next_batches(self) -> list[Batch]:
        windows = torch.from_numpy(self.next_windows())
        m = self.micro_batch_size
        return [Batch.from_windows(windows[i : i + m]) for i in range(0, len(windows), m)]

    def current_weights(self) -> dict[str, float]:
        """The (normalised) weights used for the most recent step, for the metrics."""
        w = self.weights_at(max(self.step - 1, 0))
        return {s.name: float(x) for s, x in zip(self.sources, w)}

    # ---- state ----

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "global_windows": self.global_windows,
            "total_steps": self.total_steps,
            "sources": {
                s.name: {
                    "drawn": int(d),
                    "ideal": float(x),
                    "tokens": len(s.spec.source),
                    "path": str(s.spec.source.directory),
                }
                for s, d, x in zip(self.sources, self.drawn, self.ideal)
            },
        }

    def load_state_dict(self, state: dict[str, Any], *, sources_only: bool = False) -> None:
        """Restore the exact position (resume), or with `sources_only` only the per-source draw counts of
        same-named sources (a chained session that should not re-read what the previous one read)."""
        version = state.get("version")
        if version == 1:  # its draw counts index the old stored shuffle: continuing them in the new order would
            # repeat windows already read and skip others
            raise ValueError(
                "the checkpoint's data position (loader state version 1) was written before the loader's "
                "order became a computed permutation and cannot be continued; start a chained session "
                "(train.init_from) with data.init_loader_from_checkpoint: false"
            )
        if version != STATE_VERSION:
            raise ValueError(f"loader state version {version!r} is not {STATE_VERSION}")
        saved = state["sources"]
        if sources_only:
            for i, s in enumerate(self.sources):
                if s.name in saved and saved[s.name]["tokens"] == len(s.spec.source):
                    self.drawn[i] = saved[s.name]["drawn"]
            self.ideal = self.drawn.astype(np.float64)
            return
        for key in ("seed", "seq_len", "global_windows", "total_steps"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data position: {key} was {state[key]}, now {getattr(self, key)} "
                    "(the batch sequence would change); start a chained session instead"
                )
        names = [s.name for s in self.sources]
        if sorted(saved) != sorted(names):
            raise ValueError(f"cannot resume the data position: sources were {sorted(saved)}, now {sorted(names)}")
        for i, s in enumerate(self.sources):
            if saved[s.name]["tokens"] != len(s.spec.source):
                raise ValueError(
                    f"cannot resume: source '{s.name}' had {saved[s.name]['tokens']} tokens, "
                    f"now {len(s.spec.source)} ({s.spec.source.directory} changed)"
                )
            self.drawn[i] = saved[s.name]["drawn"]
            self.ideal[i] = saved[s.name]["ideal"]
        self.step = int(state["step"])

    # ---- planning ----

    def plan(self) -> list[dict[str, Any]]:
        """Per source: tokens available, windows, weights, windows/tokens to draw over the run, epochs."""
        drawn, ideal = self.drawn.copy(), self.ideal.copy()
        for step in range(self.step, self.total_steps):
            counts, ideal = self._counts(step, drawn, ideal)
            drawn = drawn + counts
        rows = []
        for s, d in zip(self.sources, drawn):
            rows.append(
                {
                    "source": s.name,
                    "path": str(s.spec.source.directory),
                    "tokens_available": len(s.spec.source),
                    "windows_available": s.n_windows,
                    "weight": s.spec.weight.describe(),
                    "windows_drawn": int(d),
                    "tokens_drawn": int(d) * self.seq_len,
                    "epochs": int(d) / s.n_windows,
                    "max_epochs": s.spec.max_epochs,
                }
            )
        return rows

    def check_plan(self, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        rows = rows if rows is not None else self.plan()
        over = [r for r in rows if r["epochs"] > r["max_epochs"] + 1e-9]
        if over:
            detail = "; ".join(
                f"'{r['source']}' would be read {r['epochs']:.2f} times (cap {r['max_epochs']:g})" for r in over
            )
            raise PlanError(
                f"the data plan breaks the epoch cap: {detail}. Add data, lower its weight, "
                "shorten the run, or raise data.max_epochs / the source's max_epochs"
            )
        return rows


def format_plan(rows: list[dict[str, Any]]) -> str:
    """The per-source plan as an aligned text table."""
    head = ("source", "tokens avail", "weight", "tokens drawn", "epochs", "cap")
    body = [
        (
            r["source"],
            f"{r['tokens_available']:,}",
            r["weight"],
            f"{r['tokens_drawn']:,}",
            f"{r['epochs']:.3f}",
            f"{r['max_epochs']:g}",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = [
        "  ".join(str(x).ljust(w) if i in (0, 2) else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
        for row in (head, *body)
    ]
    return "\n".join(lines)
