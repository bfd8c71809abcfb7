"""Tensor (+ sequence) parallelism follows the single-process model step for step (torchrun, gloo, 2 and 4 ranks).

The module-level test runs this file under torchrun: every rank builds the full model as the reference and, as the
trainer does, the same model on meta sharded by `apply_tensor_parallel` (and FSDP2 over the data-parallel ranks for
the 2-D case), materialised and initialised from the same seed (identical full weights); then both take 6 AdamW
steps with the gradient norm clipped below its value: loss and clipped total norm agree within 1e-5 (fp32), the
final weights (gathered) within 1e-4. The trainer-level runs (`skyloom train` with train.parallel.tp) compare
metrics.jsonl with the single-process run.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from skyloom.config import ConfigError
from skyloom.model.config import ModelConfig
from skyloom.train.parallel.tensor import check_tensor_parallel
from tests.train_helpers import train_corpus  # noqa: F401  (fixture)

pytestmark = pytest.mark.data_free  # same inputs with or without ../shared/data: CI's second pass skips it

STEPS = 6
TOL = 1e-5
TINY = dict(arch="llama", vocab_size=256, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32)


# ---- the worker (run by torchrun) ----


def _cases(world: int) -> list[dict]:
    base = dict(TINY)
    if world == 4:  # dp_shard 2 × tp 2
        return [
            dict(name="fsdp2xtp2_sp", model=base, dp=2, sp=True),
            dict(name="fsdp2xtp2", model=base, dp=2, sp=False),
            dict(name="ddp2xtp2_sp", model=base, dp=2, sp=True, replicate=True),
        ]
    return [
        dict(name="tp2_sp", model=base, dp=1, sp=True),
        dict(name="tp2", model=base, dp=1, sp=False),
        dict(name="tp2_sp_packed", model=base, dp=1, sp=True, packed=True),
        dict(name="tp2_sp_tied", model={**base, "tie_embeddings": True}, dp=1, sp=True),
        dict(
            name="tp2_sp_gpt",
            model=dict(
                arch="gpt", vocab_size=256, dim=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=32, bias=True
            ),
            dp=1,
            sp=True,
        ),
    ]


def _batch(torch, cfg, packed: bool):
    """Eight rows of 16 tokens (fixed seed); `packed`: two samples per row (positions restart, block mask)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (8, 17), generator=g)
    inputs, labels = ids[:, :-1], ids[:, 1:].clone()
    labels[:, :3] = -100  # some targets masked, as in SFT
    if not packed:
        return inputs, labels, None, None
    t = inputs.shape[1]
    pos = torch.cat([torch.arange(6), torch.arange(t - 6)]).expand(inputs.shape[0], t)
    seg = (torch.arange(t) >= 6).long()
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    mask = (causal & (seg[:, None] == seg[None, :])).expand(inputs.shape[0], 1, t, t)
    return inputs, labels, pos, mask


def _run_case(case: dict, rank: int, world: int) -> dict:
    import torch
    from torch.distributed._composable.replicate_with_fsdp import replicate
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from skyloom.model.loss import token_loss
    from skyloom.model.transformer import Transformer
    from skyloom.train.parallel.tensor import apply_tensor_parallel

    cfg = ModelConfig(**case["model"])
    dp, tp = case["dp"], world // case["dp"]
    mesh = (
        init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp_shard", "tp"))
        if dp > 1
        else init_device_mesh("cpu", (tp,), mesh_dim_names=("tp",))
    )
    ref = Transformer(cfg)
    torch.manual_seed(0)
    ref.init_weights()
    with torch.device("meta"):  # as the trainer builds it: on meta, sharded, then only the shards materialised
        par = Transformer(cfg)
    apply_tensor_parallel(par, mesh["tp"], sequence_parallel=case["sp"])
    if dp > 1:  # FSDP2, or its replicate-only form (DDP's semantics; DDP itself cannot take DTensors)
        wrap = replicate if case.get("replicate") else fully_shard
        for block in par.layers:
            wrap(block, mesh=mesh["dp_shard"])
        wrap(par, mesh=mesh["dp_shard"])
    par.to_empty(device="cpu")
    torch.manual_seed(0)
    par.init_weights()
    ref_state = dict(ref.named_parameters())
    out = {
        "init_diff": max(float((p.full_tensor() - ref_state[name]).abs().max()) for name, p in par.named_parameters())
    }
    inputs, labels, pos, mask = _batch(torch, cfg, case.get("packed", False))
    n_targets = int((labels != -100).sum())
    dp_rank = mesh["dp_shard"].get_local_rank() if dp > 1 else 0
    rows = slice(dp_rank * len(inputs) // dp, (dp_rank + 1) * len(inputs) // dp)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.1)
    opt_par = torch.optim.AdamW(par.parameters(), lr=3e-3, weight_decay=0.1)
    out.update(loss_ref=[], loss_par=[], norm_ref=[], norm_par=[])
    for _ in range(STEPS):
        loss = token_loss(ref(inputs, position_ids=pos, attn_mask=mask), labels) / n_targets
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        opt_ref.step()
        opt_ref.zero_grad()
        out["loss_ref"].append(float(loss))
        out["norm_ref"].append(float(norm))

        local = token_loss(
            par(
                inputs[rows],
                position_ids=None if pos is None else pos[rows],
                attn_mask=None if mask is None else mask[rows],
            ),
            labels[rows],
        )
        (local * dp / n_targets).backward()  # FSDP averages gradients over the dp ranks
        norm = torch.nn.utils.clip_grad_norm_(par.parameters(), 0.5)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        opt_par.step()
        opt_par.zero_grad()
        total = local.detach().clone()
        if dp > 1:
            torch.distributed.all_reduce(total, group=mesh["dp_shard"].get_group())
        out["loss_par"].append(float(total) / n_targets)
        out["norm_par"].append(float(norm))
    out["all_dtensor"] = all(isinstance(p, DTensor) for p in par.parameters())
    out["weight_diff"] = max(
        float((p.full_tensor() - ref_state[name]).abs().max()) for name, p in par.named_parameters()
    )
    out["tied"] = par.output.weight is par.tok_emb.weight
    out["names"] = sorted(n for n, _ in par.named_parameters()) == sorted(ref_state)
    return out


def _worker(out_path: str) -> None:
    import torch
    import torch.distributed as dist

    from skyloom.train.distributed import shutdown

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {case["name"]: _run_case(case, rank, world) for case in _cases(world)}
    if rank == 0:
        Path(out_path).write_text(json.dumps(results), encoding="utf-8")
    shutdown()  # barrier, then destroy: a gloo rank exiting while its peers still talk aborts


# ---- the tests ----


def _torchrun(nproc: int, out: Path) -> dict:
    from tests.train_helpers import run, torchrun_launch

    run(torchrun_launch(nproc, "-m", "tests.test_parallel_tp", str(out)), timeout=300)
    return json.loads(out.read_text(encoding="utf-8"))


def _assert_matches(name: str, r: dict) -> None:
    assert len(r["loss_par"]) == STEPS
    for key in ("loss", "norm"):
        diff = max(abs(a - b) for a, b in zip(r[f"{key}_ref"], r[f"{key}_par"]))
        assert diff < TOL, (name, key, r[f"{key}_ref"], r[f"{key}_par"])
    assert min(r["norm_ref"]) > 0.5, (name, "clipping must be active for the norm check to mean anything")
    assert r["loss_ref"][-1] < r["loss_ref"][0] - 0.1, name  # it trained
    assert r["weight_diff"] < 1e-4, (name, r["weight_diff"])  # AdamW magnifies ~1e-7 gradient noise on tiny grads
    assert r["all_dtensor"] and r["names"], name
    assert r["init_diff"] == 0, (name, "the same seed must give the same full weights on every layout")


@pytest.mark.parametrize("nproc", [2, 4])
def test_tensor_parallel_matches_single_process(nproc, tmp_path):
    results = _torchrun(nproc, tmp_path / "tp.json")
    assert set(results) == {case["name"] for case in _cases(nproc)}
    for name, r in results.items():
        _assert_matches(name, r)
    if nproc == 2:
        assert results["tp2_sp_tied"]["tied"]


@pytest.fixture(scope="module")
def single_run(train_corpus, tmp_path_factory):
    from tests.train_helpers import run, skyloom_cmd, tiny_run_config, write_config

    root = tmp_path_factory.mktemp("tp_single")
    cfg = tiny_run_config(train_corpus, train={"max_steps": STEPS}, checkpoint={"every": 3}, validation={"every": 3})
    config = write_config(cfg, root / "run.yaml")
    run(skyloom_cmd("train", str(config), "--out", str(root / "single")))
    return config, root / "single"


def _losses(run_dir: Path, kind: str = "train") -> list[float]:
    from tests.train_helpers import read_metrics

    return [r["loss"] for r in read_metrics(run_dir, kind)]


@pytest.mark.parametrize(
    "nproc,layout",
    [
        (2, ["tp=2"]),
        (2, ["tp=2", "sequence_parallel=false"]),
        (4, ["tp=2", "dp_shard=2", "dp_replicate=1"]),
        (4, ["tp=2"]),
        (4, ["tp=2", "pp=2"]),
    ],
    ids=["tp2_sp", "tp2", "fsdp2xtp2_sp", "dp2xtp2_sp", "pp2xtp2_sp"],
)
def test_trainer_tensor_parallel_matches_single_process(single_run, tmp_path, nproc, layout):
    """`skyloom train` with train.parallel.tp (dp_replicate × tp goes through FSDP2's replicate: DDP cannot take
    DTensors): the same loss per step as one process; a TP checkpoint resumes on one process."""
    from tests.train_helpers import run, skyloom_cmd, torchrun_cmd

    config, single = single_run
    overrides = [f"train.parallel.{kv}" for kv in layout]
    out = run(torchrun_cmd(nproc, "train", str(config), *overrides, "--out", str(tmp_path / "tp")), timeout=300)
    assert "TP 2" in out.stdout
    expected, got = _losses(single), _losses(tmp_path / "tp")
    assert len(got) == len(expected) == STEPS
    assert max(abs(a - b) for a, b in zip(expected, got)) < TOL, (expected, got)
    # validation: every rank of a TP group must see the same windows (they are split over data-parallel ranks only)
    val_expected, val_got = _losses(single, "val"), _losses(tmp_path / "tp", "val")
    assert len(val_got) == len(val_expected) == 2, (val_expected, val_got)  # PP runs validate through their stages
    assert max(abs(a - b) for a, b in zip(val_expected, val_got)) < TOL, (val_expected, val_got)
    step3 = tmp_path / "tp" / "checkpoints" / "step_00000003"
    assert (step3 / "dcp" / ".metadata").is_file()  # DTensor shards saved through DCP, nothing gathered
    if layout == ["tp=2"] and nproc == 2:  # the TP checkpoint resumes on one process (DCP reshards it)
        shutil.rmtree(tmp_path / "tp" / "checkpoints" / "step_00000006")
        run(skyloom_cmd("train", str(config), "--out", str(tmp_path / "tp"), "--resume"))
        got = _losses(tmp_path / "tp")
        assert len(got) == STEPS and max(abs(a - b) for a, b in zip(expected, got)) < TOL, (expected, got)


def test_check_tensor_parallel_refuses_what_does_not_split():
    check_tensor_parallel(ModelConfig(**TINY), 2, seq_len=16)
    with pytest.raises(ConfigError, match=r"train\.parallel\.tp.*2 key/value heads not divisible by tp=4"):
        check_tensor_parallel(ModelConfig(**TINY), 4)
    with pytest.raises(ConfigError, match="FFN width"):
        check_tensor_parallel(ModelConfig(**{**TINY, "n_kv_heads": None, "ffn_dim": 66}), 4)
    with pytest.raises(ConfigError, match="sequence positions"):
        check_tensor_parallel(ModelConfig(**{**TINY, "n_kv_heads": None}), 4, seq_len=18)
    check_tensor_parallel(
        ModelConfig(**{**TINY, "n_kv_heads": None, "ffn_dim": 64}), 4, seq_len=18, sequence_parallel=False
    )
    with pytest.raises(ConfigError, match="dropout"):
        check_tensor_parallel(ModelConfig(**{**TINY, "dropout": 0.1}), 2)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _worker(sys.argv[1])
