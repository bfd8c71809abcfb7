"""Skywork-MoE layer: routing (Eq. 1–2), gate normalisation (Eq. 6), capacity and drops, losses (Eq. 4 and the
Switch form), the adaptive coefficient (Eq. 7–9), statistics, accounting, configs and checkpoints."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from skyloom.config import ConfigError, build
from skyloom.model.accounting import count_params, flops_per_token
from skyloom.model.checkpoint import load_model, save_model
from skyloom.model.config import ModelConfig
from skyloom.model.moe import (
    MoE,
    assign_slots,
    expert_capacity,
    expert_lr_scale_fn,
    expert_similarity,
    gate_probabilities,
    router_stats,
    select_experts,
    summarize_stats,
    weighted_aux_loss,
)
from skyloom.model.moe_config import MoEConfig
from skyloom.model.moe_losses import aux_loss_eq4, aux_loss_switch, target_coefficient, update_coefficient
from skyloom.model.transformer import Transformer


def moe_cfg(**kw) -> MoEConfig:
    return build(MoEConfig, kw, prefix="moe")


def reference_moe(layer: MoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1–2 token by token (test-only oracle): returns outputs and the keep mask it used."""
    cfg = layer.cfg
    flat = x.reshape(-1, layer.dim)
    logits = flat @ layer.gate.weight.T + (layer.gate.bias if layer.gate.bias is not None else 0)
    if cfg.gate_norm:
        z = logits
        logits = (
            cfg.gate_norm_lambda
            * (z - z.mean(-1, keepdim=True))
            / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + cfg.gate_norm_eps)
        )
    g = torch.softmax(logits, dim=-1)
    top_p, top_i = g.topk(layer.top_k, dim=-1)
    capacity = layer.capacity(flat.shape[0])
    # queue per expert
    keep = torch.zeros_like(top_i, dtype=torch.bool)
    for e in range(layer.n_experts):
        slots = [(i, j) for i in range(flat.shape[0]) for j in range(layer.top_k) if top_i[i, j] == e]
        if cfg.drop_policy == "probs":
            slots.sort(key=lambda s: -float(top_p[s].detach()))
        for place, s in enumerate(slots):
            keep[s] = capacity is None or place < capacity
    out = torch.zeros_like(flat)
    for i in range(flat.shape[0]):
        s = top_p[i].sum()
        for j in range(layer.top_k):
            if not keep[i, j]:
                continue
            e = int(top_i[i, j])
            h = F.silu(flat[i] @ layer.w1[e].T) * (flat[i] @ layer.w3[e].T)
            out[i] += top_p[i, j] / s * (h @ layer.w2[e].T)
    return out.reshape(x.shape), keep


# ---- gate and routing on hand-made inputs ----


def test_capacity_formula():
    assert expert_capacity(10, 4, 2, 1.0) == 5  # ceil(2·10/4)
    assert expert_capacity(10, 4, 2, 1.25) == 7  # ceil(6.25)
    assert expert_capacity(4096, 16, 2, 1.0) == 512
    assert expert_capacity(3, 16, 2, 1.0) == 1


def test_gate_normalisation_eq6():
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert torch.allclose(gate_probabilities(z), torch.softmax(z, -1))
    mu, sigma = 2.5, math.sqrt(1.25)
    for lam in (0.5, 1.0, 2.0):
        expected = torch.softmax(lam * (z - mu) / sigma, -1)
        assert torch.allclose(gate_probabilities(z, True, lam, eps=0.0), expected, atol=1e-7)
    # invariant to shifting and (positive) scaling of the logits; larger λ = sharper
    p = gate_probabilities(z, True, 1.0)
    assert torch.allclose(gate_probabilities(5 * z - 3, True, 1.0), p, atol=1e-6)
    assert gate_probabilities(z, True, 2.0).max() > p.max()
    # all-equal logits (a zero gate) stay finite and uniform
    assert torch.equal(gate_probabilities(torch.zeros(2, 8), True), torch.full((2, 8), 1 / 8))


def test_topk_renormalisation_eq2():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    top_p, top_i, w = select_experts(probs, 2)
    assert top_i.tolist() == [[0, 1], [2, 1]]
    assert torch.allclose(w, torch.tensor([[0.625, 0.375], [0.7 / 0.9, 0.2 / 0.9]]))
    assert torch.allclose(w.sum(-1), torch.ones(2))


def test_drop_policies_on_a_hand_made_queue():
    # six tokens all choosing expert 0 (top-1) with these probabilities; capacity 3
    p = torch.tensor([0.3, 0.9, 0.5, 0.7, 0.1, 0.8])[:, None]
    i = torch.zeros(6, 1, dtype=torch.long)
    keep, rank, counts = assign_slots(i, p, n_experts=2, capacity=3, policy="probs")
    assert keep[:, 0].tolist() == [False, True, False, True, False, True]  # 0.9, 0.8, 0.7 kept
    assert rank[:, 0].tolist() == [4, 0, 3, 2, 5, 1]
    assert counts.tolist() == [6, 0]
    keep, rank, _ = assign_slots(i, p, n_experts=2, capacity=3, policy="position")
    assert keep[:, 0].tolist() == [True, True, True, False, False, False]
    keep, _, _ = assign_slots(i, p, n_experts=2, capacity=None)
    assert bool(keep.all())


def test_top2_drop_counts():
    # 4 tokens, top-2 over 3 experts; expert 0 is chosen by all four tokens, capacity 2 → 2 slots dropped
    top_i = torch.tensor([[0, 1], [0, 2], [1, 0], [0, 2]])
    top_p = torch.tensor([[0.6, 0.3], [0.5, 0.4], [0.6, 0.35], [0.9, 0.05]])
    keep, _, counts = assign_slots(top_i, top_p, 3, capacity=2, policy="probs")
    assert counts.tolist() == [4, 2, 2]
    assert int((~keep).sum()) == 2
    # expert 0 keeps its two most probable slots: token 3 (0.9) and token 0 (0.6)
    assert keep[:, :].tolist() == [[True, True], [False, True], [True, False], [True, True]]


@pytest.mark.parametrize("policy", ["probs", "position"])
@pytest.mark.parametrize("gate_norm", [False, True])
def test_layer_matches_token_by_token_oracle_with_drops(policy, gate_norm):
    torch.manual_seed(0)
    layer = MoE(
        16, 24, moe_cfg(n_experts=4, top_k=2, capacity_factor=0.6, drop_policy=policy, gate_norm=gate_norm)
    ).double()
    with torch.no_grad():
        layer.gate.weight.mul_(40)  # a confident gate, so some experts overflow
        layer.gate.bias.normal_()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y = layer(x)
    ref, keep = reference_moe(layer, x)
    assert torch.allclose(y, ref, atol=1e-12)
    n_slots = 18 * 2
    stats = summarize_stats(layer.last_stats, 2)
    dropped = int((~keep).sum())
    assert dropped > 0
    assert stats["drop_rate"] == pytest.approx(dropped / n_slots)
    cap = expert_capacity(18, 4, 2, 0.6)
    counts = layer.last_stats["assigned"]
    assert dropped == int((counts - cap).clamp_min(0).sum())


def test_fully_dropped_token_passes_through_residual():
    torch.manual_seed(0)
    layer = MoE(8, 16, moe_cfg(n_experts=2, top_k=1, capacity_factor=0.5, drop_policy="position"))
    with torch.no_grad():
        layer.gate.weight.zero_()
        layer.gate.bias.copy_(torch.tensor([5.0, -5.0]))  # everyone wants expert 0
    x = torch.randn(1, 6, 8)
    y = layer(x)
    cap = expert_capacity(6, 2, 1, 0.5)  # 2
    assert torch.count_nonzero(y[0, :cap].abs().sum(-1)) == cap
    assert torch.equal(y[0, cap:], torch.zeros(6 - cap, 8))  # dropped → the block adds nothing


def test_eval_mode_is_dropless_unless_asked():
    torch.manual_seed(0)
    layer = MoE(8, 16, moe_cfg(n_experts=2, top_k=1, capacity_factor=0.5))
    with torch.no_grad():
        layer.gate.bias.copy_(torch.tensor([5.0, -5.0]))
    x = torch.randn(1, 6, 8)
    layer.train()
    layer(x)
    assert summarize_stats(layer.last_stats, 1)["drop_rate"] > 0
    layer.eval()
    y = layer(x)
    assert summarize_stats(layer.last_stats, 1)["drop_rate"] == 0.0
    # eval results do not depend on what else is in the batch
    assert torch.allclose(layer(x[:, :1]), y[:, :1], atol=1e-6)
    layer.cfg.drop_in_eval = True
    layer(x)
    assert summarize_stats(layer.last_stats, 1)["drop_rate"] > 0


def test_dropless_and_gradients_match_oracle():
    torch.manual_seed(1)
    layer = MoE(8, 12, moe_cfg(n_experts=5, top_k=2, dropless=True)).double()
    with torch.no_grad():
        layer.gate.weight.mul_(30)
    x = torch.randn(3, 7, 8, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert summarize_stats(layer.last_stats, 2)["drop_rate"] == 0.0
    grads = torch.autograd.grad(y.square().sum(), [x, layer.gate.weight, layer.w1, layer.w2])
    x2 = x.detach().clone().requires_grad_(True)
    ref, _ = reference_moe(layer, x2)
    ref_grads = torch.autograd.grad(ref.square().sum(), [x2, layer.gate.weight, layer.w1, layer.w2])
    assert torch.allclose(y, ref, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10)
    assert grads[1].abs().sum() > 0  # the gate learns through the renormalised weights


def test_grouped_layout_equals_expert_loop():
    """The padded (16-row aligned) layout of the grouped_mm path gives the loop path's numbers."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    torch.manual_seed(0)
    layer = MoE(32, 48, moe_cfg(n_experts=6, top_k=2, capacity_factor=1.0))
    x = torch.randn(4, 37, 32)
    with torch.no_grad():
        layer.expert_impl = "loop"
        a = layer(x)
        layer.expert_impl = "grouped_mm"
        b = layer(x)
    assert torch.allclose(a, b, atol=1e-5)


# ---- losses and the adaptive coefficient ----


def test_aux_loss_eq4_against_the_formula():
    g = torch.softmax(torch.randn(50, 6, generator=torch.Generator().manual_seed(0)), -1)
    n, T = 6, 50
    direct = sum((1 / n - sum(float(g[i, j]) for i in range(T)) / T) ** 2 for j in range(n))
    assert float(aux_loss_eq4(g)) == pytest.approx(direct, rel=1e-6)
    assert float(aux_loss_eq4(torch.full((10, 4), 0.25))) == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(10, 4)
    one_hot[:, 2] = 1
    assert float(aux_loss_eq4(one_hot)) == pytest.approx(1 - 1 / 4)


def test_switch_aux_loss():
    g = torch.full((8, 4), 0.25)
    counts = torch.tensor([4, 4, 4, 4])  # 8 tokens × top-2 spread evenly
    assert float(aux_loss_switch(g, counts, top_k=2)) == pytest.approx(1.0)
    probs = torch.softmax(torch.randn(8, 4), -1)
    counts = torch.tensor([6, 5, 3, 2])
    expected = 4 * sum(float(counts[j]) / 16 * float(probs[:, j].mean()) for j in range(4))
    assert float(aux_loss_switch(probs, counts, 2)) == pytest.approx(expected, rel=1e-6)


def test_adaptive_coefficient_eq7_to_9():
    xi, amax, beta = 0.2, 0.01, 0.99
    assert target_coefficient(0.02, xi, amax) == pytest.approx(0.004)
    assert target_coefficient(0.05, xi, amax) == pytest.approx(0.01)  # the kink at α_max/ξ
    assert target_coefficient(0.3, xi, amax) == 0.01
    assert update_coefficient(0.01, 0.02, xi, amax, beta) == pytest.approx(0.99 * 0.01 + 0.01 * 0.004)
    # balanced (no drops): the coefficient decays geometrically by β per step
    alpha = 0.01
    for _ in range(100):
        alpha = update_coefficient(alpha, 0.0, xi, amax, beta)
    assert alpha == pytest.approx(0.01 * 0.99**100)
    # a steady drop rate d drives α to f(d)
    for _ in range(3000):
        alpha = update_coefficient(alpha, 0.03, xi, amax, beta)
    assert alpha == pytest.approx(0.006, rel=1e-6)


def test_weighted_aux_loss_sums_layers_with_their_coefficients():
    torch.manual_seed(0)
    cfg = build(ModelConfig, {"preset": "tiny-moe", "n_layers": 2})
    model = Transformer(cfg)
    model.layers[1].ffn.aux_coef.fill_(0.003)
    model(torch.randint(0, cfg.vocab_size, (2, 16)))
    l0, l1 = model.layers[0].ffn.last_aux_loss, model.layers[1].ffn.last_aux_loss
    assert float(weighted_aux_loss(model).detach()) == pytest.approx(
        0.01 * float(l0.detach()) + 0.003 * float(l1.detach()), rel=1e-6
    )


# ---- diagnostics ----


def test_router_statistics():
    probs = torch.tensor([[0.6, 0.2, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1]])
    stats = router_stats(probs, torch.tensor([2, 1, 1, 0]), torch.tensor([1, 1, 1, 0]), top_k=2)
    s = summarize_stats(stats, 2)
    assert s["drop_rate"] == pytest.approx(0.25)
    assert s["load"] == [0.5, 0.25, 0.25, 0.0]
    assert s["max1_max2"] == pytest.approx((3.0 + 1.0) / 2)
    assert s["max2_max3"] == pytest.approx((2.0 + 4.0) / 2)
    h = lambda p: -sum(v * math.log(v) for v in p)  # noqa: E731
    assert s["entropy"] == pytest.approx((h([0.6, 0.2, 0.1, 0.1]) + h([0.4, 0.4, 0.1, 0.1])) / 2, rel=1e-6)


def test_expert_similarity():
    layer = MoE(4, 6, moe_cfg(n_experts=3, top_k=1))
    with torch.no_grad():
        for w in (layer.w1, layer.w2, layer.w3):
            w.copy_(w[0:1].expand_as(w))
    assert expert_similarity(layer) == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        layer.w2[1].neg_()
        layer.w1[1].neg_()
        layer.w3[1].neg_()
    # pairs (0,1) and (1,2) are now opposite (−1), (0,2) identical (+1) → mean −1/3
    assert expert_similarity(layer) == pytest.approx(-1 / 3, abs=1e-6)
    torch.manual_seed(0)
    assert abs(expert_similarity(MoE(64, 128, moe_cfg(n_experts=4, top_k=2)))) < 0.01


# ---- model integration, accounting, configs, checkpoints ----


def test_every_n_layers_and_param_counts():
    cfg = build(ModelConfig, {"preset": "tiny-moe", "moe": {"every_n_layers": 2}})
    model = Transformer(cfg)
    assert [i for i, _ in model.moe_layers()] == [1, 3]
    counts = count_params(cfg)
    assert counts.total == sum(p.numel() for p in model.parameters())
    d, h, n, k = cfg.dim, cfg.expert_ffn_dim, 8, 2
    assert counts.total - counts.active == 2 * (n - k) * 3 * d * h
    assert flops_per_token(cfg, 256) == 6 * counts.active + 12 * cfg.n_layers * cfg.dim * 256


def test_skywork_moe_preset_matches_the_report():
    cfg = build(ModelConfig, {"preset": "skywork-moe"})
    counts = count_params(cfg)
    assert (cfg.dim, cfg.hidden_ffn_dim, cfg.head_dim, cfg.n_heads, cfg.n_layers) == (4608, 12288, 128, 36, 52)
    assert (cfg.moe.n_experts, cfg.moe.top_k, cfg.moe.every_n_layers, cfg.max_seq_len) == (16, 2, 1, 8192)
    assert round(counts.total / 1e9) == 146  # report: 146B total
    assert 22e9 <= counts.active < 23e9  # report: 22B activated
    assert cfg.moe.gate_norm and cfg.moe.adaptive and cfg.moe.xi == 0.2 and cfg.moe.beta == 0.99


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.moe.top_k"):
        build(ModelConfig, {"preset": "tiny-moe", "moe": {"top_k": 9}}, prefix="model")
    with pytest.raises(ConfigError, match="model.moe.drop_policy.*did you mean 'position'"):
        build(ModelConfig, {"preset": "tiny-moe", "moe": {"drop_policy": "positon"}}, prefix="model")
    with pytest.raises(ConfigError, match="model.moe"):
        build(ModelConfig, {"preset": "tiny-gpt", "moe": {"n_experts": 4}}, prefix="model")
    with pytest.raises(ConfigError, match="model.moe.beta"):
        build(ModelConfig, {"preset": "tiny-moe", "moe": {"beta": 1.0}}, prefix="model")
    # a preset's moe section merges key by key with the one given beside it
    cfg = build(ModelConfig, {"preset": "tiny-moe", "moe": {"capacity_factor": 2.0}})
    assert cfg.moe.n_experts == 8 and cfg.moe.capacity_factor == 2.0 and cfg.moe.gate_norm
    assert build(ModelConfig, {"preset": "tiny-moe", "moe": None}).moe is None


def test_expert_lr_scale_function():
    cfg = build(ModelConfig, {"preset": "tiny-moe", "n_layers": 2, "moe": {"expert_lr_scale": "sqrt(k/n)"}})
    model = Transformer(cfg)
    fn = expert_lr_scale_fn(cfg.moe)
    scales = {name: fn(name, p) for name, p in model.named_parameters()}
    assert scales["layers.0.ffn.w1"] == pytest.approx(0.5) and scales["layers.1.ffn.w2"] == pytest.approx(0.5)
    assert scales["layers.0.ffn.gate.weight"] == 1.0 and scales["layers.0.attn.wq.weight"] == 1.0
    assert moe_cfg(n_experts=16, top_k=2, expert_lr_scale="k/n").lr_scale() == 0.125


def test_checkpoint_round_trip_keeps_coefficients(tmp_path):
    torch.manual_seed(0)
    cfg = build(ModelConfig, {"preset": "tiny-moe", "n_layers": 2})
    model = Transformer(cfg).eval()
    model.layers[1].ffn.aux_coef.fill_(0.0031415926)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == cfg
    assert torch.equal(loaded.layers[1].ffn.aux_coef, model.layers[1].ffn.aux_coef)
    ids = torch.randint(0, cfg.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_meta_init_matches_eager_init():
    cfg = build(ModelConfig, {"preset": "tiny-moe", "n_layers": 2})
    torch.manual_seed(3)
    eager = Transformer(cfg)
    with torch.device("meta"):
        lazy = Transformer(cfg)
    lazy.to_empty(device="cpu")
    torch.manual_seed(3)
    lazy.init_weights()
    torch.manual_seed(3)
    eager.init_weights()
    for (name, a), (_, b) in zip(eager.state_dict().items(), lazy.state_dict().items()):
        assert torch.equal(a, b), name
    assert float(lazy.layers[0].ffn.aux_coef) == pytest.approx(0.01)
