"""The dense model against the formulas of the report §3.4 and basic invariants."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from skyloom.config import build
from skyloom.model.accounting import count_params
from skyloom.model.config import ModelConfig
from skyloom.model.presets import PRESETS
from skyloom.model.transformer import RMSNorm, SwiGLU, Transformer, apply_rope, rope_cos_sin


def tiny(**overrides) -> ModelConfig:
    return build(ModelConfig, {"preset": "tiny", "vocab_size": 101, "n_layers": 2, **overrides})


def test_rmsnorm_matches_formula():
    torch.manual_seed(0)
    norm = RMSNorm(8, eps=1e-6)
    norm.weight.data = torch.randn(8)
    x = torch.randn(3, 5, 8)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_rope_is_a_rotation_of_pairs_by_position_angle():
    d, theta = 8, 10000.0
    x = torch.randn(1, 1, 5, d)
    pos = torch.arange(5).unsqueeze(0)
    cos, sin = rope_cos_sin(pos, d, theta)
    out = apply_rope(x, cos.unsqueeze(1), sin.unsqueeze(1))
    # Direct formula: pair (x_i, x_{i+d/2}) rotated by angle p * theta^(-2i/d).
    for p in range(5):
        for i in range(d // 2):
            a = p * theta ** (-2 * i / d)
            x1, x2 = x[0, 0, p, i], x[0, 0, p, i + d // 2]
            assert out[0, 0, p, i].item() == pytest.approx((x1 * math.cos(a) - x2 * math.sin(a)).item(), abs=1e-5)
            assert out[0, 0, p, i + d // 2].item() == pytest.approx(
                (x2 * math.cos(a) + x1 * math.sin(a)).item(), abs=1e-5
            )


def test_rope_scores_depend_only_on_relative_position():
    d = 16
    q, k = torch.randn(1, 1, 1, d), torch.randn(1, 1, 1, d)

    def score(pq: int, pk: int) -> float:
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), d, 10000.0)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), d, 10000.0)
        return float((apply_rope(q, cq[:, None], sq[:, None]) * apply_rope(k, ck[:, None], sk[:, None])).sum())

    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)


def test_swiglu_matches_formula():
    ffn = SwiGLU(6, 10)
    x = torch.randn(2, 6)
    expected = (F.silu(x @ ffn.w1.weight.T) * (x @ ffn.w3.weight.T)) @ ffn.w2.weight.T
    torch.testing.assert_close(ffn(x), expected)


@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_causality_future_tokens_never_change_past_logits(arch):
    torch.manual_seed(0)
    cfg = tiny(arch=arch, bias=arch == "gpt", ffn_dim=None)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 12))
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 17) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_gqa_equals_mha_with_repeated_kv_weights():
    torch.manual_seed(0)
    gqa_cfg = tiny(n_heads=4, n_kv_heads=2)
    gqa = Transformer(gqa_cfg).eval()
    mha = Transformer(tiny(n_heads=4, n_kv_heads=None)).eval()
    state = gqa.state_dict()
    hd = gqa_cfg.head_dim
    for name, tensor in list(state.items()):
        if name.endswith(("attn.wk.weight", "attn.wv.weight")):
            heads = tensor.view(2, hd, -1)  # [kv_heads, head_dim, dim]
            state[name] = heads.repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(state)
    ids = torch.randint(0, 101, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids), atol=1e-5, rtol=1e-5)


def test_explicit_causal_mask_equals_default_and_position_ids_default():
    torch.manual_seed(0)
    model = Transformer(tiny()).eval()
    ids = torch.randint(0, 101, (2, 9))
    mask = torch.ones(9, 9, dtype=torch.bool).tril()[None, None].expand(2, 1, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids), model(ids, position_ids=torch.arange(9)[None].expand(2, 9), attn_mask=mask)
        )


def test_logits_shape_and_tied_embeddings_share_storage():
    model = Transformer(tiny(tie_embeddings=True))
    assert model.output.weight is model.tok_emb.weight
    assert model(torch.zeros(3, 7, dtype=torch.long)).shape == (3, 7, 101)
    assert sum(p.numel() for p in model.parameters()) == count_params(model.config).total


def test_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    cfg = build(ModelConfig, {"preset": "small", "n_layers": 8, "vocab_size": 1000})
    model = Transformer(cfg)
    assert model.layers[0].attn.wq.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers[0].attn.wo.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.layers[0].ffn.w2.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.all(model.norm.weight == 1)


def test_gpt_rejects_sequences_longer_than_its_position_table():
    model = Transformer(tiny(arch="gpt", max_seq_len=16, ffn_dim=None))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_on_meta_allocate_nothing_and_match_the_analytic_count(name):
    cfg = build(ModelConfig, {"preset": name})
    with torch.device("meta"):
        model = Transformer(cfg)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg).total


def test_skywork_13b_parameter_count_is_exact():
    counts = count_params(build(ModelConfig, {"preset": "skywork-13b"}))
    assert counts.total == 13_854_269_952
    assert counts.non_embedding == 13_854_269_952 - 2 * 65536 * 4608


def test_small_presets_have_the_documented_sizes():
    assert 1e6 <= count_params(build(ModelConfig, {"preset": "tiny"})).total <= 5e6
    assert 20e6 <= count_params(build(ModelConfig, {"preset": "small"})).total <= 50e6
