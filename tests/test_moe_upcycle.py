"""Upcycling a dense checkpoint (Skywork-MoE §3) and the §3.3 rule of thumb."""

from __future__ import annotations

import pytest
import torch

from skyloom.cli import main
from skyloom.config import ConfigError, build
from skyloom.model.checkpoint import load_model, save_model
from skyloom.model.config import ModelConfig
from skyloom.model.moe import expert_similarity, summarize_stats
from skyloom.model.transformer import Transformer
from skyloom.model.upcycle import upcycle, upcycle_advice


@pytest.fixture(scope="module")
def dense() -> Transformer:
    torch.manual_seed(0)
    return Transformer(build(ModelConfig, {"preset": "tiny", "n_layers": 3})).eval()


@pytest.mark.parametrize(
    "moe",
    [
        {"n_experts": 8, "top_k": 2, "dropless": True},
        {"n_experts": 6, "top_k": 2, "capacity_factor": 3.0, "gate_norm": True},  # C ≥ T: nothing can drop
        {"n_experts": 4, "top_k": 1, "dropless": True, "every_n_layers": 2},
    ],
)
def test_upcycled_equals_dense_at_init(dense, moe):
    model = upcycle(dense, moe, gate_std=0.02).eval()
    ids = torch.randint(0, dense.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = dense(ids), model(ids)
        got_train = model.train()(ids)  # training mode applies the capacity; C ≥ T here, so still no drop
    assert (got - expected).abs().max() < 1e-6
    assert (got_train - expected).abs().max() < 1e-6
    for _, layer in model.moe_layers():
        assert summarize_stats(layer.last_stats, layer.top_k)["drop_rate"] == 0.0
        assert expert_similarity(layer) == pytest.approx(1.0, abs=1e-6)
        assert layer.gate.weight.abs().max() < 0.2 and float(layer.gate.weight.detach().std()) > 0
    # routing is spread by the small random gate, not collapsed on ties
    loads = summarize_stats(model.moe_layers()[0][1].last_stats, moe["top_k"])["load"]
    assert sum(v > 0 for v in loads) == moe["n_experts"]


def test_upcycle_copies_everything_but_the_ffn(dense):
    model = upcycle(dense, {"n_experts": 4, "top_k": 2, "every_n_layers": 2})
    d = dense.state_dict()
    for name, t in model.state_dict().items():
        if ".ffn." not in name or name.startswith("layers.0.") or name.startswith("layers.2."):
            assert torch.equal(t, d[name]), name
    layer = model.layers[1].ffn
    for j in range(4):
        assert torch.equal(layer.w1[j], dense.layers[1].ffn.w1.weight)
        assert torch.equal(layer.w2[j], dense.layers[1].ffn.w2.weight)
    assert torch.equal(layer.gate.bias, torch.zeros(4))


def test_upcycle_refusals(dense):
    with pytest.raises(ValueError, match="copy the dense FFN"):
        upcycle(dense, {"n_experts": 4, "expert_ffn_dim": 64})
    gpt = Transformer(build(ModelConfig, {"preset": "tiny-gpt", "n_layers": 1}))
    with pytest.raises(ValueError, match="SwiGLU"):
        upcycle(gpt, {"n_experts": 4})
    with pytest.raises(ConfigError, match="moe.top_k"):
        upcycle(dense, {"n_experts": 2, "top_k": 3})


def test_upcycle_command(dense, tmp_path, capsys):
    save_model(dense, tmp_path / "dense")
    rc = main(
        [
            "upcycle",
            str(tmp_path / "dense"),
            "--experts",
            "4",
            "--top-k",
            "2",
            "--out",
            str(tmp_path / "moe"),
            "--set",
            "dropless=true",
            "aux_loss=switch",
        ]
    )
    assert rc == 0
    assert "3 MoE layers × 4 experts" in capsys.readouterr().out
    moe = load_model(tmp_path / "moe")
    assert moe.config.moe.n_experts == 4 and moe.config.moe.aux_loss == "switch"
    ids = torch.randint(0, dense.config.vocab_size, (1, 32))
    with torch.no_grad():
        assert (moe(ids) - dense(ids)).abs().max() < 1e-6
    assert main(["upcycle", str(tmp_path / "moe"), "--out", str(tmp_path / "again")]) == 2
    assert "already a mixture" in capsys.readouterr().err
    assert main(["upcycle", str(tmp_path / "dense"), "--out", str(tmp_path / "x"), "--set", "top_k=20"]) == 2
    assert "moe.top_k" in capsys.readouterr().err


def test_upcycle_advice_rule_of_thumb():
    assert upcycle_advice(0, 100).choice == "from-scratch"  # no checkpoint
    assert upcycle_advice(100, 200).choice == "from-scratch"  # C_MoE ≥ 2 C_dense
    assert upcycle_advice(100, 500).choice == "from-scratch"
    assert upcycle_advice(100, 10).choice == "upcycle"  # C_MoE ≪ C_dense
    mid = upcycle_advice(100, 100)
    assert mid.choice == "either" and mid.ratio == 1.0
    assert "learning-rate schedule" in mid.reasoning
    assert upcycle_advice(300, 200).choice == "either"  # the report's 2/3·C experiment: level
    with pytest.raises(ValueError):
        upcycle_advice(-1, 10)


def test_advise_command(capsys):
    assert main(["upcycle", "--advise", "--dense-cost", "1000", "--moe-budget", "2500"]) == 0
    out = capsys.readouterr().out
    assert "advice: from-scratch" in out and "2.5" in out
    # from tokens: the dense 13B for 3.2T tokens vs a 16×top-2 upcycle for 0.5T tokens → upcycle
    assert main(["upcycle", "skywork-13b", "--advise", "--dense-tokens", "3.2e12", "--moe-tokens", "5e11"]) == 0
    assert "advice: upcycle" in capsys.readouterr().out
    assert main(["upcycle", "--advise", "--dense-cost", "1"]) == 2
