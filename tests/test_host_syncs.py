"""No per-parameter host sync: the pre-checkpoint finite-weights check reads one number back, whatever the model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from skyloom.train.checkpointer import Checkpointer


def _holder(model: torch.nn.Module) -> SimpleNamespace:
    return SimpleNamespace(raw_model=model, device=torch.device("cpu"), env=SimpleNamespace(world_size=1))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(6)], torch.nn.Embedding(3, 4).to(torch.bfloat16))


@pytest.fixture
def host_reads(monkeypatch):
    """Counts every way a tensor's value reaches Python (each is a device→host sync on a GPU)."""
    counts = {"n": 0}
    for name in ("__bool__", "item", "tolist", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            counts["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


def test_finite_check_reads_one_number_for_the_whole_model(host_reads):
    model = _model()
    assert Checkpointer._weights_finite(_holder(model)) is True
    assert host_reads["n"] == 1, f"{host_reads['n']} host reads for {len(list(model.parameters()))} parameters"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_finite_check_finds_one_bad_value_in_any_parameter(bad):
    for index in (0, 5, -1):
        model = _model()
        with torch.no_grad():
            list(model.parameters())[index].view(-1)[1] = bad
        assert Checkpointer._weights_finite(_holder(model)) is False


def test_finite_check_accepts_huge_finite_weights():
    model = _model()
    with torch.no_grad():
        model[0].weight.fill_(3e38)  # a squared norm would overflow; the weights are still finite
    assert Checkpointer._weights_finite(_holder(model)) is True
