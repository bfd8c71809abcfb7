"""The memory planner is a model of memory (skyloom.model.memory), checked against the report's measured column:
Skywork-13B report Table 10 (A800 80 GB, global batch 4,096, micro-batch 1, seq 4,096, bf16, Megatron-LM)."""

import pytest

from skyloom.config import build
from skyloom.model.config import ModelConfig
from skyloom.model.memory import GB, Layout, format_memory, gpu_capacity_bytes, plan_memory, stage_layers

# (model, DP, TP, PP, the report's memory in GB or None for OOM)
TABLE_10 = [
    ("llama2-13b", 512, 1, 1, None),
    ("llama2-13b", 256, 1, 2, 70.7),
    ("llama2-13b", 256, 2, 1, 65.5),
    ("llama2-13b", 128, 2, 2, 39.4),
    ("llama2-13b", 128, 1, 4, 53.4),
    ("llama2-13b", 128, 4, 1, 35.4),
    ("skywork-13b", 512, 1, 1, None),
    ("skywork-13b", 256, 1, 2, 77.1),
    ("skywork-13b", 256, 2, 1, 67.9),
    ("skywork-13b", 128, 2, 2, 42.5),
    ("skywork-13b", 128, 1, 4, 58.7),
    ("skywork-13b", 128, 4, 1, 36.6),
]


def preset(name: str, **changes) -> ModelConfig:
    return build(ModelConfig, {"preset": name, **changes}, prefix="model")


@pytest.mark.parametrize("name,dp,tp,pp,reported", TABLE_10, ids=lambda v: str(v))
def test_table10_memory_within_15_percent_and_oom_where_the_report_has_it(name, dp, tp, pp, reported):
    plan = plan_memory(
        preset(name), Layout(dp_replicate=dp, tp=tp, pp=pp, sequence_parallel=True), gpu_bytes=gpu_capacity_bytes(80)
    )
    assert plan.layout.gpus == 512
    if reported is None:
        assert plan.fits is False
    else:
        assert plan.fits is True
        assert abs(plan.peak.total / GB / reported - 1) <= 0.15, (plan.peak.total / GB, reported)


def test_each_parallelism_shrinks_its_own_term():
    cfg = preset("skywork-13b")
    base = plan_memory(cfg, Layout(dp_replicate=64, zero1=False)).peak
    zero1 = plan_memory(cfg, Layout(dp_replicate=64, zero1=True)).peak
    assert zero1.optimizer == pytest.approx(base.optimizer / 64) and zero1.weights == base.weights
    fsdp = plan_memory(cfg, Layout(dp_replicate=1, dp_shard=8)).peak
    assert fsdp.weights == pytest.approx(base.weights / 8) and fsdp.gradients == pytest.approx(base.gradients / 8)
    assert fsdp.fsdp_buffers > 0
    sp = plan_memory(cfg, Layout(dp_replicate=8, tp=8, sequence_parallel=True)).peak
    no_sp = plan_memory(cfg, Layout(dp_replicate=8, tp=8, sequence_parallel=False)).peak
    assert sp.activations == pytest.approx(base.activations / 8) and no_sp.activations > sp.activations
    ckpt = plan_memory(cfg, Layout(dp_replicate=64, activation_checkpointing=True)).peak
    assert ckpt.activations < base.activations / 5
    eager = plan_memory(cfg, Layout(dp_replicate=64, flash_attention=False)).peak
    assert eager.activations > 3 * base.activations  # the 5as²b term dominates at seq 4,096


def test_1f1b_first_stage_holds_pp_micro_batches_and_interleaving_costs_more():
    cfg = preset("llama2-13b")
    plan = plan_memory(cfg, Layout(dp_replicate=64, pp=4))
    assert [r.micro_batches for r in plan.ranks] == [4, 3, 2, 1]
    assert plan.peak.rank == 0
    inter = plan_memory(cfg, Layout(dp_replicate=64, pp=4, pp_schedule="Interleaved1F1B", pp_stages_per_rank=2))
    assert inter.ranks[0].micro_batches == pytest.approx(4 * (1 + 3 / 8))
    assert inter.peak.activations > plan.peak.activations


def test_stage_layers_follow_pp_split_and_interleave_virtual_stages():
    assert [len(r) for r in stage_layers(52, Layout(pp=2, pp_split=(25, 27)))] == [25, 27]
    assert [len(r) for r in stage_layers(10, Layout(pp=4))] == [2, 3, 3, 2]  # the extra layers go to the middle
    assert stage_layers(8, Layout(pp=2, pp_stages_per_rank=2)) == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_expert_parallel_holds_a_share_of_the_experts():
    cfg = preset("skywork-moe")
    one = plan_memory(cfg, Layout(dp_replicate=8, tp=1, ep=1, seq_len=8192)).peak
    four = plan_memory(cfg, Layout(dp_replicate=8, tp=1, ep=4, seq_len=8192)).peak
    assert four.params < one.params / 3


def test_format_names_every_term_and_the_verdict():
    text = format_memory(plan_memory(preset("skywork-13b"), Layout(dp_replicate=512), gpu_capacity_bytes(80)))
    for word in ("weights", "gradients", "optimizer", "activations", "CUDA context + NCCL", "verdict: OOM"):
        assert word in text


def test_skywork_recipe_layout_fits_and_the_reports_layout_needs_megatrons_bytes(capsys):
    """recipes/skywork-13b runs a layout the planner says fits on 80 GB; the report's DP256+PP2+ZeRO-1 fits only
    with Megatron-LM's 6 + 12/DP bytes per parameter, not with skyloom's fp32 weights (torch-amp)."""
    from pathlib import Path

    from skyloom.cli import main
    from skyloom.recipes.plan import plan_recipe
    from skyloom.recipes.recipe import load_recipe

    recipe_dir = Path(__file__).resolve().parents[1] / "recipes" / "skywork-13b"
    for session in plan_recipe(load_recipe(recipe_dir))["sessions"]:
        assert session["memory"]["fits"] is True and session["layout"]["pipeline_parallel"] == 2
    ddp = ["stage1-a.train.parallel.dp_shard=1"]
    ours = plan_recipe(load_recipe(recipe_dir, ddp))["sessions"][0]["memory"]
    megatron = plan_recipe(load_recipe(recipe_dir, ddp), memory_profile="megatron-bf16")["sessions"][0]["memory"]
    assert ours["fits"] is False and megatron["fits"] is True and megatron["layout"] == "DP256+PP2+ZeRO-1"
    assert main(["plan", str(recipe_dir), *ddp]) == 0
    out = capsys.readouterr().out
    assert "verdict: OOM" in out and "WARNING   the layout needs" in out


def test_model_info_prints_the_memory_plan_and_refuses_impossible_layouts(capsys):
    import json

    from skyloom.cli import main

    assert main(["model", "info", "llama2-13b", "--dp", "512", "--gpu-mem", "80"]) == 0
    assert "verdict: OOM" in capsys.readouterr().out
    assert main(["model", "info", "skywork-13b", "--dp", "128", "--tp", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)["memory_plan"]
    assert plan["layout"] == "DP128+TP4+ZeRO-1" and plan["fits"] is True
    assert abs(plan["peak_gb"] / 36.6 - 1) <= 0.15
    assert main(["model", "info", "skywork-13b", "--tp", "5"]) == 2
    assert "36 heads" in capsys.readouterr().err


def test_train_warns_before_a_layout_the_planner_says_will_not_fit(monkeypatch, capsys):
    """`skyloom train` on CUDA compares the planner with the device's memory; on CPU it says nothing."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from skyloom.config import load_config
    from skyloom.model.memory import GIB
    from skyloom.train.commands import _warn_if_it_will_not_fit, memory_warning
    from skyloom.train.config import RunConfig

    stage = Path(__file__).resolve().parents[1] / "recipes" / "skywork-13b" / "stage1a.yaml"
    fits = load_config(RunConfig, str(stage), [])
    assert memory_warning(fits, 512, 80 * GIB) is None
    ddp = load_config(RunConfig, str(stage), ["train.parallel.dp_shard=1"])  # DP256+PP2+ZeRO-1, fp32 weights
    warning = memory_warning(ddp, 512, 80 * GIB)
    assert warning.startswith("skyloom: warning: the memory planner expects") and "verdict: OOM" in warning
    assert memory_warning(ddp, 3, 80 * GIB) is None  # a world the layout cannot fill: the trainer's error, not ours

    monkeypatch.setenv("WORLD_SIZE", "512")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _warn_if_it_will_not_fit(ddp)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * GIB))
    _warn_if_it_will_not_fit(ddp)
    assert "skyloom: warning: the memory planner expects" in capsys.readouterr().err
    _warn_if_it_will_not_fit(fits)
    assert capsys.readouterr().err == ""
