"""The hand-written float32 kernels of model/transformer.py (RMSNorm, rotate-half RoPE, SwiGLU's SiLU ⊙ up) equal
the autograd chains they replace: outputs and input/weight gradients, alone, through the whole model, and over a
few trainer steps.

The reference is the same module with the kernels switched off (`_plain_fp32` → False: the code path DTensors and
half precision still take)."""

from __future__ import annotations

import pytest
import torch

from skyloom.config import build
from skyloom.model import transformer
from skyloom.model.config import ModelConfig
from skyloom.model.transformer import RMSNorm, Transformer, apply_rope, rope_cos_sin
from skyloom.train.config import RunConfig
from skyloom.train.trainer import Trainer
from tests.train_helpers import random_run_config, random_token_corpus, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def both_paths(monkeypatch, fn):
    """fn() with the hand-written kernels, then with the autograd reference."""
    fast = fn()
    with monkeypatch.context() as m:
        m.setattr(transformer, "_plain_fp32", lambda *tensors: False)
        reference = fn()
    return fast, reference


def graph_nodes(output: torch.Tensor) -> set[str]:
    """Names of every autograd node behind `output`."""
    seen, todo = set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


def assert_close(fast, reference, rtol=1e-6):
    for got, want in zip(fast, reference, strict=True):
        assert got.shape == want.shape
        assert (got - want).abs().max() <= rtol * want.abs().max()


def test_rmsnorm_kernel_equals_autograd(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x0, incoming = torch.randn(3, 5, 48, generator=g) * 3, torch.randn(3, 5, 48, generator=g)
    norm = RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48, generator=g))

    def run():
        x = x0.clone().requires_grad_()
        norm.weight.grad = None
        y = norm(x)
        y.backward(incoming)
        return y.detach(), x.grad, norm.weight.grad, type(y.grad_fn).__name__

    fast, reference = both_paths(monkeypatch, run)
    assert fast[3] == "_RMSNormFnBackward" and reference[3] != fast[3]  # each side took its own path
    assert_close(fast[:3], reference[:3])


def test_rmsnorm_kernel_backward_stays_float32_under_autocast(monkeypatch):
    """The trainer calls backward inside its autocast context: the kernel's matrix-vector product must not drop
    to bfloat16 there (the autograd reference has no matrix product to autocast)."""
    g = torch.Generator().manual_seed(5)
    x0, incoming = torch.randn(4, 6, 64, generator=g), torch.randn(4, 6, 64, generator=g)
    norm = RMSNorm(64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=g))

    def run():
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            norm(x).backward(incoming)
        return (x.grad,)

    fast, reference = both_paths(monkeypatch, run)
    assert_close(fast, reference)


@pytest.mark.parametrize("per_row_positions", [False, True])
def test_rope_kernel_equals_autograd(monkeypatch, per_row_positions):
    g = torch.Generator().manual_seed(1)
    b, t, h, d = 2, 7, 3, 16
    positions = torch.randint(0, 50, (b, t), generator=g) if per_row_positions else torch.arange(t).unsqueeze(0)
    cos, sin = (table.unsqueeze(1) for table in rope_cos_sin(positions, d, 10_000.0))
    x0, incoming = torch.randn(b, t, h, d, generator=g), torch.randn(b, h, t, d, generator=g)

    def run():
        x = x0.clone().requires_grad_()
        y = apply_rope(x.transpose(1, 2), cos, sin)  # [B, H, T, d] as a strided view, as in Attention
        y.backward(incoming)
        return y.detach(), x.grad, type(y.grad_fn).__name__

    fast, reference = both_paths(monkeypatch, run)
    assert fast[2] == "_RopeFnBackward" and reference[2] != fast[2]
    assert_close(fast[:2], reference[:2])


def test_gated_silu_kernel_equals_autograd(monkeypatch):
    g = torch.Generator().manual_seed(3)
    ffn = transformer.SwiGLU(16, 40)
    x0, incoming = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)

    def run():
        x = x0.clone().requires_grad_()
        ffn.zero_grad(set_to_none=True)
        y = ffn(x)
        y.backward(incoming)
        return [y.detach(), x.grad, ffn.w1.weight.grad, ffn.w3.weight.grad], graph_nodes(y)

    (fast, fast_nodes), (reference, reference_nodes) = both_paths(monkeypatch, run)
    assert "_GatedSiLUFnBackward" in fast_nodes and "_GatedSiLUFnBackward" not in reference_nodes
    assert_close(fast, reference)


def test_model_logits_and_gradients_equal_autograd(monkeypatch):
    cfg = build(ModelConfig, {"preset": "tiny", "vocab_size": 97, "dim": 32, "ffn_dim": 88, "n_layers": 2})
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))

    def run():
        model.zero_grad(set_to_none=True)
        logits = model(ids)
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1)).backward()
        return [logits.detach()] + [p.grad for p in model.parameters()]

    fast, reference = both_paths(monkeypatch, run)
    assert_close(fast, reference, rtol=1e-5)  # 2 layers of float rounding on top of each op's 1e-7


def test_compiled_blocks_trace_the_plain_formulations_and_match_eager():
    """Under torch.compile the kernels step aside (a hand-written autograd Function is a fusion boundary to the
    compiler): the plain formulations are traced, and the compiled model gives eager's logits and gradients."""

    @torch.compile(fullgraph=True, backend="eager")
    def kernels_chosen(x):
        return x + 1 if transformer._plain_fp32(x) else x - 1

    assert kernels_chosen(torch.zeros(1)).item() == -1
    assert transformer._plain_fp32(torch.zeros(1))  # eager: the kernels

    cfg = build(ModelConfig, {"preset": "tiny", "vocab_size": 97, "dim": 32, "ffn_dim": 88, "n_layers": 2})
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))

    def run(compiled: bool):
        torch.manual_seed(0)
        model = Transformer(cfg)
        if compiled:  # traced as torch.compile traces it; run without code generation (no C++ compiler needed)
            for layer in model.layers:
                layer.compile(backend="aot_eager")
        logits = model(ids)
        torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 97), ids[:, 1:].reshape(-1)).backward()
        return [logits.detach()] + [p.grad for p in model.parameters()]

    assert_close(run(compiled=True), run(compiled=False), rtol=1e-5)


def test_trainer_losses_unchanged(monkeypatch, tmp_path):
    corpus = random_token_corpus(tmp_path / "data", 40, seed=4)

    def losses():
        cfg = build(RunConfig, random_run_config(corpus, 3, checkpoint={"save_final": False}))
        torch.manual_seed(0)
        trainer = Trainer(cfg, tmp_path / f"run{len(list(tmp_path.iterdir()))}", log=lambda *_: None)
        return [trainer.train_step()["loss"] for _ in range(3)]

    fast, reference = both_paths(monkeypatch, losses)
    assert fast == pytest.approx(reference, abs=1e-6, rel=0)


def test_chunked_loss_refuses_a_second_backward():
    """Its gradients are scaled in place and handed to autograd: a retained graph cannot reuse them."""
    from skyloom.model.loss import linear_token_loss

    hidden, weight = torch.randn(2, 5, 8, requires_grad=True), torch.randn(11, 8, requires_grad=True)
    loss = linear_token_loss(hidden, weight, torch.randint(0, 11, (2, 5)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def test_residual_add_writes_only_into_a_same_dtype_plain_branch():
    """The in-place residual never touches the block input (activation checkpointing re-reads it), never narrows
    an fp32 stream to a bf16 branch's dtype, and never writes into a view."""
    x, branch = torch.randn(2, 3), torch.randn(2, 3)
    x0, expected = x.clone(), x + branch
    out = transformer.residual_add(branch, x)
    assert out.data_ptr() == branch.data_ptr() and torch.equal(out, expected) and torch.equal(x, x0)
    half = torch.randn(2, 3).bfloat16()
    half0 = half.clone()
    mixed = transformer.residual_add(half, x)
    assert mixed.dtype == torch.float32 and torch.equal(half, half0) and torch.equal(mixed, x + half)
    buffer = torch.randn(3, 3)
    view = buffer[:2]  # as the MoE layer's output: a slice of its combine buffer
    sliced = transformer.residual_add(view, x)
    assert sliced.data_ptr() != buffer.data_ptr() and torch.equal(sliced, x + view)
