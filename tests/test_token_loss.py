"""The one token loss (`skyloom.model.loss.token_loss`) that training, validation, SFT and evaluation share."""

import pytest
import torch
import torch.nn.functional as F

from skyloom.model.loss import token_loss


def _case(b=5, t=7, v=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=torch.bfloat16)
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[0, :3] = -100
    labels[3, -1] = -100
    return logits, labels


def test_sum_is_float32_cross_entropy_over_kept_labels():
    logits, labels = _case()
    want = F.cross_entropy(logits.float().reshape(-1, 11), labels.reshape(-1), ignore_index=-100, reduction="sum")
    got = token_loss(logits, labels)
    assert got.dtype == torch.float32 and torch.allclose(got, want)


def test_groups_of_rows_give_the_same_numbers_as_one_call():
    logits, labels = _case()
    whole = token_loss(logits, labels, reduction="none")
    grouped = token_loss(logits, labels, reduction="none", max_elements=2 * 7 * 11)  # 2 rows a group → 3 groups
    assert whole.shape == (5, 7) and torch.equal(whole, grouped)
    assert (whole[labels == -100] == 0).all() and (whole[labels != -100] > 0).all()
    assert torch.allclose(token_loss(logits, labels, max_elements=1), whole.sum())


def test_with_autograd_one_call_and_the_gradient_flows():
    logits, labels = _case()
    leaf = logits.float().requires_grad_()
    token_loss(leaf, labels, max_elements=1).backward()
    want = torch.softmax(leaf.detach(), -1) - F.one_hot(labels.clamp(min=0), 11) * (labels != -100)[..., None]
    assert torch.allclose(leaf.grad * (labels != -100)[..., None], want * (labels != -100)[..., None], atol=1e-6)


def test_shapes_are_checked():
    logits, labels = _case()
    with pytest.raises(ValueError, match=r"\[B, T, V\]"):
        token_loss(logits.reshape(-1, 11), labels.reshape(-1))
    with pytest.raises(ValueError, match="reduction"):
        token_loss(logits, labels, reduction="mean")
