"""The chunked output-projection + cross-entropy (`linear_token_loss`) equals the plain logits path: loss and the
gradients of the hidden states and the output weight, masked labels included; the trainer's losses match."""

from __future__ import annotations

import pytest
import torch

from skyloom.config import build
from skyloom.model.loss import linear_token_loss, token_loss
from skyloom.train.config import RunConfig
from skyloom.train.trainer import Trainer
from tests.train_helpers import random_run_config, random_token_corpus, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def both_paths(hidden, weight, labels, chunk_rows, dtype=None):
    """(loss, d/dhidden, d/dweight) of the plain path and of the chunked one, under autocast to `dtype` if given."""
    results = []
    for chunked in (False, True):
        h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            if chunked:
                loss = linear_token_loss(h, w, labels, chunk_rows=chunk_rows)
            else:
                loss = token_loss(torch.nn.functional.linear(h, w), labels)
        (loss * 0.5).backward()  # a non-unit incoming gradient reaches both
        results.append((loss.detach(), h.grad, w.grad))
    return results


def inputs(seed=0, b=3, t=9, d=16, v=37):
    g = torch.Generator().manual_seed(seed)
    hidden, weight = torch.randn(b, t, d, generator=g), torch.randn(v, d, generator=g) * 0.3
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :4] = -100  # masked positions (prompt tokens, padding)
    labels[2, -1] = -100
    return hidden, weight, labels


@pytest.mark.parametrize("chunk_rows", [1, 4, 27, 1000])  # one row, uneven chunks, one chunk, more than the rows
def test_chunked_loss_and_gradients_equal_the_plain_path_fp32(chunk_rows):
    hidden, weight, labels = inputs()
    (loss, gh, gw), (closs, cgh, cgw) = both_paths(hidden, weight, labels, chunk_rows)
    assert loss.dtype == closs.dtype == torch.float32
    assert closs.item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(cgh, gh, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cgw, gw, rtol=1e-6, atol=1e-6)
    assert cgh[0, :4].abs().max() == 0  # a masked position gets no gradient


def test_chunked_loss_bf16_autocast_is_close_to_the_plain_path():
    hidden, weight, labels = inputs(seed=1, v=301)
    (loss, gh, gw), (closs, cgh, cgw) = both_paths(hidden, weight, labels, 5, dtype=torch.bfloat16)
    assert closs.dtype == torch.float32 and cgw.dtype == torch.float32
    assert closs.item() == pytest.approx(loss.item(), rel=1e-3)
    torch.testing.assert_close(cgh, gh, rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(cgw, gw, rtol=2e-2, atol=2e-3)


def test_chunked_loss_all_masked_and_without_autograd():
    hidden, weight, labels = inputs()
    assert linear_token_loss(hidden, weight, torch.full_like(labels, -100)).item() == 0.0
    with torch.no_grad():
        got = linear_token_loss(hidden.requires_grad_(), weight, labels, chunk_rows=1)
    assert got.item() == pytest.approx(token_loss(hidden.detach() @ weight.t(), labels).item(), rel=1e-6)
    with pytest.raises(ValueError, match="hidden \\[B, T, D\\]"):
        linear_token_loss(hidden[0], weight, labels)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return random_token_corpus(tmp_path_factory.mktemp("chunked") / "data", 60, seed=3)


def trainer_losses(corpus, run_dir, chunked: bool, steps: int = 4) -> list[float]:
    cfg = build(RunConfig, random_run_config(corpus, steps, checkpoint={"save_final": False}))
    trainer = Trainer(cfg, run_dir, log=lambda *_: None)
    assert trainer.chunked_loss  # one process: the chunked path is the default
    trainer.chunked_loss = chunked
    return [trainer.train_step()["loss"] for _ in range(steps)]


def test_trainer_losses_equal_with_the_chunked_path(corpus, tmp_path):
    plain = trainer_losses(corpus, tmp_path / "plain", chunked=False)
    chunked = trainer_losses(corpus, tmp_path / "chunked", chunked=True)
    assert chunked == pytest.approx(plain, abs=1e-6, rel=0)
    assert chunked[-1] < chunked[0]  # it trains
    assert chunked == trainer_losses(corpus, tmp_path / "again", chunked=True)  # deterministic: bit-identical
