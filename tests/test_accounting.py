"""FLOPs and MFU against the report's Table 10; `skyloom model info` output."""

from __future__ import annotations

import json

import pytest

from skyloom.cli import main
from skyloom.config import build
from skyloom.model.accounting import flops_per_token, mfu
from skyloom.model.config import ModelConfig


@pytest.mark.parametrize(
    "preset, tokens_per_sec, reported_mfu",
    [("skywork-13b", 1873, 0.565), ("llama2-13b", 2045, 0.585)],  # Table 10, DP256+PP2, A800 312 TFLOP/s
)
def test_mfu_formula_check_against_table_10_within_1_5_points(preset, tokens_per_sec, reported_mfu):
    """Formula check, not a measurement: Table 10's own throughput in, its MFU back (our FLOPs/token formula)."""
    cfg = build(ModelConfig, {"preset": preset})
    value = mfu(tokens_per_sec, flops_per_token(cfg, 4096), 312e12, 1)
    assert abs(value - reported_mfu) < 0.015


def test_flops_per_token_formula():
    cfg = build(ModelConfig, {"preset": "tiny"})
    from skyloom.model.accounting import count_params

    assert flops_per_token(cfg, 100) == 6 * count_params(cfg).total + 12 * 4 * 128 * 100


def test_mfu_scales_with_gpus():
    assert mfu(2000, 1e9, 1e12, 2) == pytest.approx(1.0)


def test_model_info_json(capsys):
    assert main(["model", "info", "skywork-13b", "--tokens-per-sec", "1873", "--peak-tflops", "312", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params_total"] == 13_854_269_952
    assert out["params_non_embedding"] == 13_250_290_176
    assert out["flops_per_token"] == pytest.approx(flops_per_token(build(ModelConfig, {"preset": "skywork-13b"})))
    assert abs(out["mfu"] - 0.565) < 0.015


def test_model_info_table_and_overrides(capsys):
    assert main(["model", "info", "tiny", "n_layers=2", "model.vocab_size=1000"]) == 0
    out = capsys.readouterr().out
    assert "| Num. layers     | 2 |" in out and "1,000" in out


def test_model_info_bad_override_is_a_clear_error(capsys):
    assert main(["model", "info", "tiny", "n_layer=2"]) == 2
    assert "did you mean 'model.n_layers'" in capsys.readouterr().err
