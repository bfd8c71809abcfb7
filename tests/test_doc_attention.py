"""Document-masked attention without a dense mask (model/doc_attention.py) equals today's dense-mask path."""

from __future__ import annotations

import random

import pytest
import torch

from skyloom.config import build
from skyloom.data.batch import Batch
from skyloom.model.config import ModelConfig
from skyloom.model.doc_attention import (
    DocumentMask,
    bucket_length,
    document_attention,
    per_document_flash_cpu,
    segment_attention,
)
from skyloom.model.transformer import Transformer
from skyloom.sft.data import Sample
from skyloom.sft.packing import SFTBatchSource, block_causal_mask

T = 48
# ragged packed rows: 1-token documents, a document spanning the whole row, padding (-1) at the end
DOC_IDS = torch.tensor(
    [
        [0] + [1] * 17 + [2] * 21 + [3] + [-1] * 8,
        [0] * T,
        [0, 1, 2, 3] + [4] * 33 + [5] * 5 + [-1] * 6,
        [0] * 30 + [1] * 17 + [-1],
    ]
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(arch: str, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    heads = dict(n_heads=4, n_kv_heads=2) if arch == "llama" else dict(n_heads=4)
    cfg = dict(arch=arch, vocab_size=97, dim=32, n_layers=2, ffn_dim=64, max_seq_len=64, **heads)
    return Transformer(build(ModelConfig, cfg))


def _positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """Positions restarting at 0 in every document (as sft.packing lays them out)."""
    pos = torch.zeros_like(doc_ids)
    for r in range(doc_ids.shape[0]):
        for i in range(1, doc_ids.shape[1]):
            pos[r, i] = pos[r, i - 1] + 1 if doc_ids[r, i] == doc_ids[r, i - 1] else 0
    return pos


def test_document_mask_is_the_block_causal_mask():
    assert torch.equal(DocumentMask(DOC_IDS).dense(), block_causal_mask(DOC_IDS))
    # a document is a run of equal ids: the same id again later is a new document
    again = DocumentMask(torch.tensor([[7, 7, 3, 7]])).dense()[0, 0]
    assert again[3].tolist() == [False, False, False, True]
    assert [bucket_length(n) for n in (1, 16, 17, 33, 100, 4096)] == [1, 16, 20, 40, 112, 4096]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_mask_mod_and_block_mask_equal_the_dense_mask():
    """The FlexAttention mask_mod evaluated on CPU is the dense mask; its BlockMask keeps every allowed pair
    and eager flex_attention through it gives the dense path's output."""
    from torch.nn.attention.flex_attention import flex_attention

    mask = DocumentMask(DOC_IDS)
    b, t = DOC_IDS.shape
    grid = mask.mask_mod()(
        torch.arange(b)[:, None, None], None, torch.arange(t)[None, :, None], torch.arange(t)[None, None, :]
    )
    assert torch.equal(grid, mask.dense()[:, 0])
    block = mask.block_mask(block_size=8)
    assert torch.equal(block.to_dense().bool().repeat_interleave(8, 2).repeat_interleave(8, 3) | ~mask.dense(),
                       torch.ones(b, 1, t, t, dtype=torch.bool))  # fmt: skip
    assert block.to_dense().sum() < (t // 8) ** 2 * b  # and it does skip blocks
    torch.manual_seed(1)
    q, k, v = (torch.randn(b, 4, t, 8) for _ in range(3))
    out = flex_attention(q, k, v, block_mask=block)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense())
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("attend", [per_document_flash_cpu, segment_attention])
def test_cpu_paths_equal_dense_with_gqa_and_grads(attend):
    torch.manual_seed(2)
    mask = DocumentMask(DOC_IDS)
    q = torch.randn(4, T, 4, 8).transpose(1, 2).requires_grad_()  # the model's layout: [B, T, H, D] seen as BHTD
    k, v = (torch.randn(4, 2, T, 8, requires_grad=True) for _ in range(2))
    out = attend(q, k, v, mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(), enable_gqa=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
    with pytest.raises(ValueError, match="do not match"):
        document_attention(q[:, :, :-1], k[:, :, :-1], v[:, :, :-1], mask)


@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_model_doc_ids_equal_dense_mask_logits_and_grads(arch):
    model = _model(arch)
    ids = torch.randint(0, 97, DOC_IDS.shape, generator=torch.Generator().manual_seed(3))
    pos = _positions(DOC_IDS)
    results = []
    for kwargs in (dict(attn_mask=DocumentMask(DOC_IDS).dense()), dict(doc_ids=DOC_IDS)):
        model.zero_grad()
        logits = model(ids, position_ids=pos, **kwargs)
        logits.float().square().mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (dense, dense_grads), (docs, doc_grads) = results
    torch.testing.assert_close(docs, dense, rtol=0, atol=1e-6)
    for name, g in dense_grads.items():
        torch.testing.assert_close(doc_grads[name], g, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="replaces attn_mask"):
        model(ids, doc_ids=DOC_IDS, attn_mask=DocumentMask(DOC_IDS).dense())


def test_packed_sft_losses_equal_the_dense_mask_path():
    """A few optimizer steps over packed SFT batches: the batch's DocumentMask path gives today's losses."""
    rng = random.Random(0)
    samples = []
    for _ in range(40):
        n = rng.choice([2, 3, rng.randint(4, 40), rng.randint(40, 65)])
        ids = [rng.randrange(97) for _ in range(n)]
        samples.append(Sample(ids, [False] * (n // 2) + [True] * (n - n // 2)))
    source = SFTBatchSource(samples, 64, global_windows=3, micro_batch_size=3, epochs=1.0, pad_id=0)
    assert source.total_steps >= 4
    batches = [source.next_batches()[0] for _ in range(4)]
    assert all(isinstance(b.attn_mask, DocumentMask) for b in batches)
    from skyloom.model.loss import token_loss

    losses = []
    for dense in (True, False):
        model = _model("llama", seed=4)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        run = []
        for batch in batches:
            if dense:
                batch = Batch(batch.input_ids, batch.labels, batch.position_ids, batch.attn_mask.dense())
            loss = token_loss(model(batch.input_ids, position_ids=batch.position_ids, attn_mask=batch.attn_mask),
                              batch.labels) / max(batch.n_targets, 1)  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], abs=1e-6, rel=0)
    assert losses[0][-1] < losses[0][0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's compiled kernel needs CUDA (none here)")
def test_flex_kernel_on_cuda_equals_dense():
    torch.manual_seed(5)
    mask = DocumentMask(DOC_IDS.cuda())
    q = torch.randn(4, 4, T, 16, device="cuda", requires_grad=True)
    k, v = (torch.randn(4, 2, T, 16, device="cuda", requires_grad=True) for _ in range(2))
    out = document_attention(q, k, v, mask)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense(), enable_gqa=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
