"""MoE under the training engine: aux loss in the objective, adaptive coefficients per Eq. 7–8 from the logged drop
rates, router diagnostics in metrics.jsonl, exact resume of the coefficients, expert LR groups, upcycled init,
and 2-process DDP matching one process."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

import skyloom
from skyloom.model.checkpoint import save_model
from skyloom.model.upcycle import upcycle
from skyloom.train.trainer import Trainer
from tests.train_helpers import (  # noqa: F401
    TINY_MODEL,
    build_run_config,
    read_metrics,
    run,
    single_thread,
    skyloom_cmd,
    tiny_run_config,
    torchrun_cmd,
    train_corpus,
    write_config,
)

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.data_free]

MOE = {
    "n_experts": 4,
    "top_k": 2,
    "capacity_factor": 1.0,
    "gate_norm": True,
    "adaptive": True,
    "aux_coef": 0.01,
    "xi": 0.2,
    "alpha_max": 0.01,
    "beta": 0.9,
}


def moe_run_config(corpus, **sections):
    return tiny_run_config(corpus, model={**TINY_MODEL, "moe": dict(MOE)}, **sections)


@pytest.fixture(scope="module")
def moe_run(single_thread, train_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_run")
    cfg = moe_run_config(train_corpus, train={"max_steps": 12, "log_every": 4}, checkpoint={"every": 6})
    trainer = Trainer(build_run_config(cfg), root / "run")  # one thread, as the resumed run it is compared with
    assert trainer.fit() == "finished"
    return cfg, root / "run"


def test_moe_trains_and_logs_router_diagnostics(moe_run):
    _, run_dir = moe_run
    train = read_metrics(run_dir)
    assert len(train) == 12
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    first, last = train[0], train[-1]
    for i in (0, 1):
        p = f"moe/L{i}/"
        for key in ("drop_rate", "entropy", "max1_max2", "max2_max3", "aux_loss", "aux_coef"):
            assert isinstance(first[p + key], float), key
        assert len(first[p + "load"]) == 4 and sum(first[p + "load"]) == pytest.approx(1.0, abs=1e-3)
        assert 0.0 <= first[p + "drop_rate"] < 0.5
        assert 0.0 < first[p + "entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-6
        assert first[p + "max1_max2"] >= 1.0
        # expert similarity on log steps (1, 4, 8, 12) only; fresh experts are near-orthogonal
        assert abs(first[p + "expert_similarity"]) < 0.1
        assert (p + "expert_similarity") in train[3] and (p + "expert_similarity") not in train[4]
    assert last["moe/aux_loss"] > 0 and "moe/drop_rate" in last


def test_adaptive_coefficients_follow_eq7_to_9(moe_run):
    _, run_dir = moe_run
    train = read_metrics(run_dir)
    for i in (0, 1):
        p = f"moe/L{i}/"
        alpha = MOE["aux_coef"]
        for rec in train:
            target = min(MOE["xi"] * rec[p + "drop_rate"], MOE["alpha_max"])
            alpha = MOE["beta"] * alpha + (1 - MOE["beta"]) * target
            assert rec[p + "aux_coef"] == pytest.approx(alpha, rel=1e-5)
    # the coefficients travel in the checkpoint
    weights = load_file(str(run_dir / "checkpoints" / "step_00000012" / "model.safetensors"))
    assert float(weights["layers.1.ffn.aux_coef"]) == pytest.approx(train[-1]["moe/L1/aux_coef"], rel=1e-6)


def test_resume_restores_coefficients_exactly(moe_run, tmp_path):
    cfg, run_dir = moe_run
    resumed = tmp_path / "run"
    shutil.copytree(run_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000012")
    trainer = Trainer(build_run_config(cfg), resumed, resume=True)
    assert trainer.step == 6
    assert trainer.fit() == "finished"
    a, b = read_metrics(run_dir), read_metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, 13))
    for x, y in zip(a[6:], b[6:]):
        for key in ("loss", "moe/L0/aux_coef", "moe/L1/aux_coef", "moe/L0/drop_rate", "moe/L1/max1_max2"):
            assert x[key] == y[key], (x["step"], key)
    wa = load_file(str(run_dir / "checkpoints" / "step_00000012" / "model.safetensors"))
    wb = load_file(str(resumed / "checkpoints" / "step_00000012" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_aux_loss_enters_the_objective(train_corpus, tmp_path):
    """With a huge fixed coefficient, the aux loss dominates and the routers balance (Eq. 4 → 0)."""
    base = {**MOE, "adaptive": False, "gate_norm": False}
    runs = {}
    for name, coef in (("off", 0.0), ("strong", 10.0)):
        cfg = tiny_run_config(
            train_corpus, model={**TINY_MODEL, "moe": {**base, "aux_coef": coef}}, train={"max_steps": 10, "lr": 1e-2}
        )
        Trainer(build_run_config(cfg), tmp_path / name).fit()
        runs[name] = read_metrics(tmp_path / name)[-1]
    assert runs["strong"]["moe/L0/aux_coef"] == 10.0
    assert runs["strong"]["moe/aux_loss"] == pytest.approx(
        10.0 * (runs["strong"]["moe/L0/aux_loss"] + runs["strong"]["moe/L1/aux_loss"]), rel=1e-5
    )
    assert runs["strong"]["moe/L0/aux_loss"] < runs["off"]["moe/L0/aux_loss"]


def test_expert_lr_scale_param_groups(train_corpus, tmp_path):
    cfg = tiny_run_config(
        train_corpus, model={**TINY_MODEL, "moe": {**MOE, "expert_lr_scale": "k/n"}}, train={"max_steps": 1}
    )
    trainer = Trainer(build_run_config(cfg), tmp_path / "run")
    scales = {}
    names = {id(p): n for n, p in trainer.raw_model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            scales[names[id(p)]] = group["lr_scale"]
    assert scales["layers.0.ffn.w1"] == 0.5 and scales["layers.1.ffn.w2"] == 0.5
    assert scales["layers.0.ffn.gate.weight"] == 1.0 and scales["tok_emb.weight"] == 1.0
    trainer.fit()
    lr = read_metrics(tmp_path / "run")[0]["lr"]
    expert_group = next(g for g in trainer.optimizer.param_groups if g["lr_scale"] == 0.5)
    assert expert_group["lr"] == pytest.approx(0.5 * lr)


def test_upcycled_checkpoint_starts_where_the_dense_model_ended(train_corpus, tmp_path):
    dense_cfg = tiny_run_config(train_corpus, train={"max_steps": 8}, validation={"every": 0, "at_start": False})
    dense = Trainer(build_run_config(dense_cfg), tmp_path / "dense")
    dense.fit()
    dense_val = read_metrics(tmp_path / "dense", "val")[-1]["loss"]
    moe_model = upcycle(dense.raw_model, {"n_experts": 4, "top_k": 2, "dropless": True, "gate_norm": True})
    save_model(moe_model, tmp_path / "moe_init")
    cfg = tiny_run_config(
        train_corpus,
        model={**TINY_MODEL, "moe": {"n_experts": 4, "top_k": 2, "dropless": True, "gate_norm": True}},
        train={"max_steps": 4, "init_from": str(tmp_path / "moe_init")},
        validation={"every": 0, "at_start": True},
    )
    Trainer(build_run_config(cfg), tmp_path / "moe").fit()
    val = read_metrics(tmp_path / "moe", "val")
    assert val[0]["step"] == 0 and val[0]["loss"] == pytest.approx(dense_val, abs=1e-5)
    train = read_metrics(tmp_path / "moe")
    # identical copies before step 1; each expert's tokens then pull it its own way (logged after the update)
    sims = [train[0]["moe/L0/expert_similarity"], train[-1]["moe/L0/expert_similarity"]]
    assert 0.95 < sims[0] < 1.0 and sims[1] < sims[0]


def test_ddp_two_processes_match_one(train_corpus, tmp_path):
    cfg = moe_run_config(train_corpus, train={"max_steps": 6})
    config = write_config(cfg, tmp_path / "moe.yaml")
    run(skyloom_cmd("train", str(config), "--out", str(tmp_path / "single")))
    out = run(torchrun_cmd(2, "train", str(config), "--out", str(tmp_path / "ddp")), timeout=240)
    assert "DDP + ZeRO-1" in out.stdout
    a, b = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ddp")
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-4
        # the drop rates are summed over ranks, so both layouts see the same d and move α the same way
        for key in ("moe/L0/drop_rate", "moe/L1/aux_coef", "moe/L1/max1_max2"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
    wa = load_file(str(tmp_path / "single/checkpoints/step_00000006/model.safetensors"))
    wb = skyloom.load_model(tmp_path / "ddp/checkpoints/step_00000006").state_dict()  # DCP shards, streamed
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


def test_fsdp2_with_activation_checkpointing_matches_and_resumes(train_corpus, tmp_path):
    """FSDP2 shards the stacked expert weights over ranks; the coefficients (buffers) go through the sharded
    (DCP) checkpoint and come back on resume."""
    cfg = moe_run_config(
        train_corpus, train={"max_steps": 4, "activation_checkpointing": True}, checkpoint={"every": 2}
    )
    config = write_config(cfg, tmp_path / "moe.yaml")
    run(skyloom_cmd("train", str(config), "--out", str(tmp_path / "single")))
    out = run(
        torchrun_cmd(2, "train", str(config), "train.parallel=fsdp", "--out", str(tmp_path / "fsdp")), timeout=240
    )
    assert "FSDP2" in out.stdout
    shutil.rmtree(tmp_path / "fsdp" / "checkpoints" / "step_00000004")
    run(
        torchrun_cmd(2, "train", str(config), "train.parallel=fsdp", "--out", str(tmp_path / "fsdp"), "--resume"),
        timeout=240,
    )
    a, b = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "fsdp")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-4
        assert x["moe/L1/aux_coef"] == pytest.approx(y["moe/L1/aux_coef"], rel=1e-5)
        assert x["moe/L0/drop_rate"] == pytest.approx(y["moe/L0/drop_rate"], abs=1e-6)
    assert b[0]["moe/L0/expert_similarity"] == pytest.approx(a[0]["moe/L0/expert_similarity"], abs=1e-5)
