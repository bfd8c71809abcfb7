"""Export to / import from Hugging Face LlamaForCausalLM with logit parity."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import skyloom
from skyloom.cli import main
from skyloom.config import build
from skyloom.model.checkpoint import save_model
from skyloom.model.config import ModelConfig
from skyloom.model.hf import export_hf, load_hf_llama
from skyloom.model.transformer import Transformer

transformers = pytest.importorskip("transformers", reason="transformers (skyloom[hf]) is not installed")


def _model(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(build(ModelConfig, {"preset": "tiny", "vocab_size": 211, "n_layers": 2, **overrides})).eval()


@pytest.mark.parametrize("overrides", [{}, {"n_kv_heads": 2, "tie_embeddings": True, "rope_theta": 500000.0}])
def test_exported_model_matches_in_transformers(tmp_path, overrides):
    model = _model(**overrides)
    export_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.randint(0, 211, (2, 33))
    with torch.no_grad():
        diff = (model(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-5


def test_import_round_trip_gives_identical_logits(tmp_path):
    model = _model()
    export_hf(model, tmp_path / "hf")
    back = load_hf_llama(tmp_path / "hf")
    via_api = skyloom.load_model(tmp_path / "hf")
    ids = torch.randint(0, 211, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids), back(ids))
        assert torch.equal(model(ids), via_api(ids))


def test_cli_export_verify_and_import(tmp_path, capsys):
    save_model(_model(), tmp_path / "ckpt")
    assert main(["export", "hf", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "max |logit difference|" in out
    assert float(out.rsplit("=", 1)[1]) < 1e-5
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    a, b = skyloom.load_model(tmp_path / "ckpt"), skyloom.load_model(tmp_path / "back")
    ids = torch.randint(0, 211, (1, 8))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))


def test_gpt_architecture_refuses_llama_export(tmp_path):
    with pytest.raises(ValueError, match="LLaMA architecture"):
        export_hf(_model(arch="gpt", bias=True, ffn_dim=None), tmp_path / "hf")


def test_pickled_weights_are_refused(tmp_path):
    model = _model()
    export_hf(model, tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickled weights are never loaded"):
        load_hf_llama(tmp_path / "hf")


def test_unsupported_hf_features_are_named(tmp_path):
    export_hf(_model(), tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "linear", "factor": 2.0}
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_scaling"):
        load_hf_llama(tmp_path / "hf")


def test_checkpoint_with_wrong_weights_names_the_file(tmp_path):
    save_model(_model(), tmp_path / "ckpt")
    save_file({"junk": torch.zeros(1)}, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(ValueError, match="model.safetensors.*do not match"):
        skyloom.load_model(tmp_path / "ckpt")


def test_rope_theta_is_read_where_newer_transformers_write_it():
    from skyloom.model.hf import config_from_hf

    hf = {
        "model_type": "llama",
        "vocab_size": 512,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
    }
    assert config_from_hf(hf, "cfg").rope_theta == 10000.0
    assert config_from_hf(hf | {"rope_theta": 5e5}, "cfg").rope_theta == 5e5
    assert (
        config_from_hf(hf | {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}, "cfg").rope_theta == 5e5
    )
