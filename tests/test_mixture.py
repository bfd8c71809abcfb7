"""The mixture loader: schedules, determinism, identical global batches for any DP layout, state, epoch caps."""

from __future__ import annotations

import numpy as np
import pytest

from skyloom.config import ConfigError
from skyloom.data.mixture import MixtureLoader, MixtureSourceSpec, PlanError, WeightSchedule
from skyloom.data.shards import TokenSource, finalize_index, write_shard

SEQ = 8


def _source(tmp_path, name: str, n_tokens: int, offset: int) -> TokenSource:
    """Token ids offset + 0, 1, 2 … so every window tells where it came from."""
    ids = (np.arange(n_tokens) % 60000 + offset).astype(np.int64)
    docs = np.array_split(ids, 5)
    write_shard(tmp_path / name, "000", docs[:3], vocab_size=65536, source=name, eos_id=0)
    write_shard(tmp_path / name, "001", docs[3:], vocab_size=65536, source=name, eos_id=0)
    finalize_index(tmp_path / name)
    return TokenSource(tmp_path / name)


@pytest.fixture
def sources(tmp_path):
    return {
        "a": _source(tmp_path, "a", 9 * 300, 0),
        "b": _source(tmp_path, "b", 9 * 200 + 5, 1000),
        "c": _source(tmp_path, "c", 9 * 100, 3000),
    }


def _loader(sources, weights=None, *, world=1, rank=0, micro=2, global_windows=8, total=20, seed=0, caps=5.0):
    weights = weights or {"a": 0.5, "b": [[0, 0.1], [1, 0.4]], "c": 0.2}
    specs = [MixtureSourceSpec(n, s, WeightSchedule(weights[n]), caps) for n, s in sources.items() if n in weights]
    return MixtureLoader(
        specs,
        seq_len=SEQ,
        global_windows=global_windows,
        micro_batch_size=micro,
        total_steps=total,
        seed=seed,
        rank=rank,
        world_size=world,
    )


def test_schedule_interpolation():
    s = WeightSchedule([[0.0, 0.10], [1.0, 0.40]])
    assert s(0.0) == pytest.approx(0.10) and s(1.0) == pytest.approx(0.40)
    assert s(0.5) == pytest.approx(0.25) and s(0.25) == pytest.approx(0.175)
    three = WeightSchedule([[0.2, 1.0], [0.6, 3.0], [0.8, 0.0]])
    assert three(0.0) == 1.0 and three(0.4) == pytest.approx(2.0) and three(0.7) == pytest.approx(1.5)
    assert three(0.9) == 0.0  # held after the last point
    assert WeightSchedule(0.3)(0.77) == 0.3


def test_realised_mixture_follows_the_schedule(sources):
    loader = _loader(sources, total=50, global_windows=20)
    cum = np.zeros(3)
    ideal = np.zeros(3)
    for step in range(50):
        w = loader.weights_at(step)
        frac = step / 49
        b = 0.1 + 0.3 * frac
        assert w == pytest.approx(np.array([0.5, b, 0.2]) / (0.7 + b))
        loader.next_windows()
        cum += loader.last_counts
        ideal += 20 * w
        assert loader.last_counts.sum() == 20
        assert np.all(np.abs(cum - ideal) < 1.0 + 1e-9)  # rounding never drifts by a whole window


def test_windows_are_deterministic_and_seed_dependent(sources):
    a = [_loader(sources).next_windows() for _ in range(1)]
    first = _loader(sources)
    second = _loader(sources)
    for _ in range(5):
        np.testing.assert_array_equal(first.next_windows(), second.next_windows())
    other = _loader(sources, seed=1)
    assert not np.array_equal(a[0], other.next_windows())


def test_two_ranks_split_the_same_global_batch(sources):
    single = _loader(sources, world=1, micro=2)
    ranks = [_loader(sources, world=2, rank=r, micro=2) for r in range(2)]
    for _ in range(12):
        full = single.next_windows()
        parts = [r.next_windows() for r in ranks]
        np.testing.assert_array_equal(np.concatenate(parts), full)
        rows0 = {tuple(x) for x in parts[0]}
        rows1 = {tuple(x) for x in parts[1]}
        assert not rows0 & rows1  # disjoint slices
    # micro-batches: rank r's step = its windows split in order
    batches = _loader(sources, world=2, rank=1, micro=2).next_batches()
    assert len(batches) == 2 and batches[0].input_ids.shape == (2, SEQ)
    np.testing.assert_array_equal(batches[0].labels[:, :-1].numpy(), batches[0].input_ids[:, 1:].numpy())


def test_windows_come_from_one_source_and_do_not_repeat_within_an_epoch(sources):
    loader = _loader(sources, {"c": 1.0}, global_windows=10, micro=5, total=10)
    n = len(sources["c"]) // (SEQ + 1)
    seen = set()
    for _ in range(n // 10):
        for w in loader.next_windows():
            assert np.all(np.diff(w) == 1)  # a contiguous stretch of the stream
            start = int(w[0]) - 3000
            assert start % (SEQ + 1) == 0
            seen.add(start)
    assert len(seen) == n  # one full epoch visited every window exactly once


def test_state_round_trip_and_resume_on_another_layout(sources):
    straight = _loader(sources)
    for _ in range(4):
        straight.next_windows()
    state = straight.state_dict()
    expected = [straight.next_windows() for _ in range(4)]
    resumed = _loader(sources)
    resumed.load_state_dict(state)
    for want in expected[:2]:
        np.testing.assert_array_equal(resumed.next_windows(), want)
    two = [_loader(sources, world=2, rank=r) for r in range(2)]
    for r in two:
        r.load_state_dict(state)
    for want in expected:
        np.testing.assert_array_equal(np.concatenate([r.next_windows() for r in two]), want)


def test_state_refuses_a_changed_run(sources):
    state = _loader(sources).state_dict()
    with pytest.raises(ValueError, match="global_windows"):
        _loader(sources, global_windows=16).load_state_dict(state)
    with pytest.raises(ValueError, match="sources"):
        _loader(sources, {"a": 1.0, "b": 1.0}).load_state_dict(state)


def test_epoch_cap_refused_with_a_per_source_plan(sources):
    # 'c' has 100 windows; 20 steps × 8 windows × 60% = 96 windows → 0.96 epochs: fine.
    ok = _loader(sources, {"a": 0.4, "c": 0.6}, caps=1.0)
    rows = ok.check_plan()
    c = next(r for r in rows if r["source"] == "c")
    assert c["windows_available"] == 100 and c["windows_drawn"] == 96 and c["tokens_drawn"] == 96 * SEQ
    assert c["epochs"] == pytest.approx(0.96)
    # 200 steps draw 960 windows from 'c' → 9.6 epochs > 5: refused, naming the source.
    over = _loader(sources, {"a": 0.4, "c": 0.6}, total=200)
    with pytest.raises(PlanError, match=r"'c' would be read 9\.60 times \(cap 5\)"):
        over.check_plan()


def test_zero_window_source_and_bad_layout_refused(tmp_path, sources):
    small = _source(tmp_path, "small", SEQ, 0)
    with pytest.raises(PlanError, match="fewer than one window"):
        _loader({"small": small}, {"small": 1.0})
    with pytest.raises(PlanError, match="does not split"):
        _loader(sources, world=3)


def test_weight_config_validation():
    from skyloom.config import build
    from skyloom.train.config import SourceConfig

    assert build(SourceConfig, {"path": "x", "weight": [[0, 0.1], [1.0, 0.4]]}).weight == [[0, 0.1], [1.0, 0.4]]
    with pytest.raises(ConfigError, match=r"weight\[1\].*strictly increase"):
        build(SourceConfig, {"path": "x", "weight": [[0.5, 0.1], [0.5, 0.4]]})
    with pytest.raises(ConfigError, match=r"weight\[0\].*\[0, 1\]"):
        build(SourceConfig, {"path": "x", "weight": [[2, 0.1]]})
    with pytest.raises(ConfigError, match="weight"):
        build(SourceConfig, {"path": "x", "weight": -1})
