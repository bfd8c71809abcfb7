"""The loader's per-source order is computed, not stored: a seeded bijection per epoch, O(1) memory in the corpus."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from skyloom.data.mixture import MixtureLoader, MixtureSourceSpec, WeightSchedule
from skyloom.data.permutation import IndexPermutation

SEQ = 8
PRIMES = [2, 3, 5, 7, 13, 31, 127, 257, 1009, 4099, 65537]


@pytest.mark.parametrize("n", [*range(1, 70), *PRIMES, 255, 256, 1024, 1025, 4095, 4096, 4097, 100_000])
def test_permutation_is_a_bijection(n):
    values = IndexPermutation(n, (0, 1, 2)).take(np.arange(n))
    np.testing.assert_array_equal(np.sort(values), np.arange(n))


def test_permutation_is_seeded_and_differs_per_key():
    n = 1000
    base = IndexPermutation(n, (7, 11, 0)).take(np.arange(n))
    np.testing.assert_array_equal(IndexPermutation(n, (7, 11, 0)).take(np.arange(n)), base)
    assert not np.array_equal(base, np.arange(n))  # shuffled at all
    for other in ((8, 11, 0), (7, 12, 0), (7, 11, 1)):  # seed, source, epoch
        assert np.mean(IndexPermutation(n, other).take(np.arange(n)) == base) < 0.05
    assert IndexPermutation(n, (7, 11, 0))[123] == base[123]


@pytest.mark.parametrize("n", [10**12 + 39, 2**64])
def test_huge_permutation_stays_in_range_and_distinct(n):
    perm = IndexPermutation(n, (0, 0, 0))
    positions = np.array([0, 1, 2, n // 2, n - 2, n - 1], dtype=np.uint64)
    values = perm.take(positions)
    assert int(values.max()) < n and len(set(values.tolist())) == len(values)


def test_position_outside_the_permutation_refused():
    with pytest.raises(IndexError, match="outside"):
        IndexPermutation(10, (0,)).take([3, 10])
    with pytest.raises(ValueError, match="n ≥ 1"):
        IndexPermutation(0, (0,))


class _FakeSource:
    """A token source of any length, stored nowhere: token t is the number t (so a window tells its index)."""

    def __init__(self, n_windows: int):
        self.n_tokens = n_windows * (SEQ + 1)
        self.directory = Path("fake")

    def __len__(self) -> int:
        return self.n_tokens

    def read(self, start: int, length: int) -> np.ndarray:
        return np.arange(start, start + length, dtype=np.int64)


def _loader(n_windows: int, *, rank=0, world=1, global_windows=8, seed=0) -> MixtureLoader:
    spec = MixtureSourceSpec("web", _FakeSource(n_windows), WeightSchedule(1.0), 1e9)
    return MixtureLoader(
        [spec],
        seq_len=SEQ,
        global_windows=global_windows,
        micro_batch_size=2,
        total_steps=10,
        seed=seed,
        rank=rank,
        world_size=world,
    )


@pytest.mark.parametrize("n_windows", [10**7, 10**12])
def test_loader_memory_does_not_grow_with_the_corpus(n_windows):
    _loader(100).next_windows()  # first-call imports and caches are not the corpus's
    tracemalloc.start()
    try:
        loader = _loader(n_windows)
        windows = [loader.next_windows() for _ in range(3)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 18, f"{peak:,} bytes traced for {n_windows:,} windows"  # a stored shuffle: 8 bytes a window
    starts = np.concatenate(windows)[:, 0]
    assert np.all(starts % (SEQ + 1) == 0) and np.all(starts // (SEQ + 1) < n_windows)
    assert len(set(starts.tolist())) == len(starts)  # no window twice within an epoch


def test_every_epoch_visits_each_window_once_in_a_new_order():
    loader = _loader(5)
    source = loader.sources[0]
    blocks = source.window_indices(np.arange(40)).reshape(8, 5)
    for block in blocks:
        np.testing.assert_array_equal(np.sort(block), np.arange(5))
    assert len({tuple(b) for b in blocks}) > 1  # epochs are shuffled differently
    assert [source.window_index(k) for k in range(40)] == blocks.reshape(-1).tolist()
    steps = np.concatenate([loader.next_windows() for _ in range(5)])[:, 0] // (SEQ + 1)
    assert np.bincount(steps, minlength=5).tolist() == [8] * 5  # 40 draws = 8 epochs, each window 8 times


def test_resume_continues_the_exact_sequence_on_any_layout():
    n = 10**12
    straight = _loader(n)
    for _ in range(3):
        straight.next_windows()
    state = straight.state_dict()
    expected = [straight.next_windows() for _ in range(3)]
    two = [_loader(n, rank=r, world=2) for r in range(2)]
    for r in two:
        r.load_state_dict(state)
    for want in expected:
        parts = [r.next_windows() for r in two]
        np.testing.assert_array_equal(np.concatenate(parts), want)
        assert not set(parts[0][:, 0].tolist()) & set(parts[1][:, 0].tolist())  # disjoint windows per rank


def test_a_checkpoint_in_the_old_stored_order_is_refused_with_a_way_out():
    state = {**_loader(10).state_dict(), "version": 1}
    for sources_only in (False, True):
        with pytest.raises(ValueError, match="init_loader_from_checkpoint: false"):
            _loader(10).load_state_dict(state, sources_only=sources_only)
