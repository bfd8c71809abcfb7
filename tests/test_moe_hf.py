"""MoE checkpoints ↔ Hugging Face MixtralForCausalLM: logit parity, both weight layouts, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from skyloom.cli import main
from skyloom.config import build
from skyloom.model.checkpoint import load_model, save_model
from skyloom.model.config import ModelConfig
from skyloom.model.hf import export_hf, load_hf_llama
from skyloom.model.transformer import Transformer

transformers = pytest.importorskip("transformers")

MIXTRAL_LIKE = {
    "preset": "tiny-moe",
    "n_layers": 2,
    "n_kv_heads": 2,
    "moe": {"gate_norm": False, "gate_bias": False, "dropless": True},
}


@pytest.fixture(scope="module")
def moe_model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(build(ModelConfig, MIXTRAL_LIKE)).eval()
    with torch.no_grad():  # a confident router, so the routing really differs between tokens
        for _, layer in model.moe_layers():
            layer.gate.weight.mul_(20)
    return model


def test_mixtral_export_logit_parity(moe_model, tmp_path):
    out = export_hf(moe_model, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["MixtralForCausalLM"]
    assert (cfg["num_local_experts"], cfg["num_experts_per_tok"]) == (8, 2)
    names = load_file(str(out / "model.safetensors"))
    assert "model.layers.1.block_sparse_moe.experts.7.w3.weight" in names
    hf = transformers.MixtralForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.randint(0, moe_model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = moe_model(ids), hf(ids).logits
    assert (ours - theirs).abs().max() < 1e-5
    # and back: the import is the same model
    back = load_hf_llama(out)
    assert back.config.moe.n_experts == 8 and back.config.moe.dropless
    with torch.no_grad():
        assert (back(ids) - ours).abs().max() < 1e-6


def test_import_fused_layout(moe_model, tmp_path):
    """Newer transformers keep experts fused ([n, 2H, D] gate_up_proj, [n, D, H] down_proj) under `mlp.`."""
    out = export_hf(moe_model, tmp_path / "hf")
    state = load_file(str(out / "model.safetensors"))
    fused = {}
    for i in range(2):
        p = f"model.layers.{i}.block_sparse_moe"
        w1 = torch.stack([state.pop(f"{p}.experts.{j}.w1.weight") for j in range(8)])
        w3 = torch.stack([state.pop(f"{p}.experts.{j}.w3.weight") for j in range(8)])
        w2 = torch.stack([state.pop(f"{p}.experts.{j}.w2.weight") for j in range(8)])
        fused[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.cat([w1, w3], dim=1)
        fused[f"model.layers.{i}.mlp.experts.down_proj"] = w2
        fused[f"model.layers.{i}.mlp.gate.weight"] = state.pop(f"{p}.gate.weight")
    save_file({**state, **fused}, str(out / "model.safetensors"))
    back = load_hf_llama(out)
    ids = torch.randint(0, 8192, (1, 24))
    with torch.no_grad():
        assert torch.equal(back(ids), moe_model(ids))


def test_export_refusals(tmp_path):
    normed = Transformer(build(ModelConfig, {"preset": "tiny-moe", "n_layers": 1}))  # gate_norm on
    with pytest.raises(ValueError, match="gate_norm"):
        export_hf(normed, tmp_path / "a")
    biased = Transformer(build(ModelConfig, {**MIXTRAL_LIKE, "moe": {**MIXTRAL_LIKE["moe"], "gate_bias": True}}))
    with torch.no_grad():
        biased.layers[0].ffn.gate.bias.fill_(0.1)
    with pytest.raises(ValueError, match="bias is non-zero"):
        export_hf(biased, tmp_path / "b")
    sparse = Transformer(build(ModelConfig, {**MIXTRAL_LIKE, "moe": {**MIXTRAL_LIKE["moe"], "every_n_layers": 2}}))
    with pytest.raises(ValueError, match="every_n_layers"):
        export_hf(sparse, tmp_path / "c")


def test_export_command_with_verify(moe_model, tmp_path, capsys):
    save_model(moe_model, tmp_path / "ckpt")
    assert main(["export", "hf", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--verify"]) == 0
    out = capsys.readouterr().out
    diff = float(out.rsplit("=", 1)[1])
    assert diff < 1e-5
    assert load_model(tmp_path / "hf").config.moe is not None
