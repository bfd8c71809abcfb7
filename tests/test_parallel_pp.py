"""Pipeline parallelism through torchrun (gloo, CPU): each layout's loss per step equals the one-process run.

A 4-layer tiny model, 6 steps, 8 windows per step in micro-batches of 2: the one-process run accumulates 4
micro-batches; PP2 runs them as the schedule's 4 micro-batches (1F1B, Interleaved1F1B with 2 stages per rank, an
unequal 1 + 3 split); PP2 × DP2 and PP2 × FSDP2 give each data-parallel rank 2. The loss is the same sum of token
losses over the same global target count, so the trajectories agree to float summation order (tolerance 1e-5, fp32).

The interleaved and the unequal-split cases train an MoE model (4 experts, top-2, capacity 1.0 so tokens drop,
adaptive coefficients): each stage carries its own layers' aux losses, and the logged aux losses, drop rates,
loads and coefficients of every layer — most of them on the stage that rank 0, the logging rank, does not hold —
equal the one-process run's.
"""

from __future__ import annotations

import math
import shutil

import pytest

from tests.train_helpers import (  # noqa: F401
    read_metrics,
    run,
    skyloom_cmd,
    tiny_run_config,
    torchrun_cmd,
    train_corpus,
    write_config,
)

pytestmark = pytest.mark.data_free  # same inputs with or without ../shared/data: CI's second pass skips it

STEPS = 6
TOL = 1e-5
MOE = {"n_experts": 4, "top_k": 2, "capacity_factor": 1.0, "adaptive": True, "aux_coef": 0.002, "beta": 0.9}
MOE_KEYS = ("aux_loss", "drop_rate", "aux_coef", "entropy")


def _single_run(corpus, root, model):
    cfg = tiny_run_config(
        corpus,
        model=model,
        validation={"every": 3},
        train={"max_steps": STEPS, "micro_batch_size": 2},
        checkpoint={"every": 3},
    )
    config = write_config(cfg, root / "run.yaml")
    run(skyloom_cmd("train", str(config), "--out", str(root / "single")))
    return config, root / "single"


@pytest.fixture(scope="module")
def single_run(train_corpus, tmp_path_factory):
    return _single_run(train_corpus, tmp_path_factory.mktemp("pp_single"), {"n_layers": 4})


@pytest.fixture(scope="module")
def moe_single_run(train_corpus, tmp_path_factory):
    return _single_run(train_corpus, tmp_path_factory.mktemp("pp_moe_single"), {"n_layers": 4, "moe": MOE})


def _losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir)]


def _assert_same(a, b):
    la, lb = _losses(a), _losses(b)
    assert len(la) == len(lb) == STEPS
    assert max(abs(x - y) for x, y in zip(la, lb)) < TOL, (la, lb)
    assert la[-1] < la[0] - 0.2  # it trained


def _assert_same_moe(a, b):
    """Every MoE layer's logged aux loss, drop rate, coefficient, entropy and load, and the weighted total."""
    for ra, rb in zip(read_metrics(a), read_metrics(b)):
        for i in range(4):
            for key in MOE_KEYS:
                name = f"moe/L{i}/{key}"
                assert math.isclose(ra[name], rb[name], rel_tol=TOL, abs_tol=1e-9), (
                    ra["step"],
                    name,
                    ra[name],
                    rb[name],
                )
            assert max(abs(x - y) for x, y in zip(ra[f"moe/L{i}/load"], rb[f"moe/L{i}/load"])) < TOL
        assert math.isclose(ra["moe/aux_loss"], rb["moe/aux_loss"], rel_tol=TOL)
    last = read_metrics(a)[-1]
    assert last["moe/drop_rate"] > 0 and last["moe/L3/aux_coef"] > 1.1 * MOE["aux_coef"]  # tokens drop, α moves


def _assert_same_validation(a, b):
    """Validation at steps 3 and 6 (the end): the pipeline's forward-only pass gives the one-process losses."""
    va, vb = read_metrics(a, "val"), read_metrics(b, "val")
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [3, STEPS], (va, vb)
    for ra, rb in zip(va, vb):
        assert ra["eval_tokens"] == rb["eval_tokens"] and abs(ra["loss"] - rb["loss"]) < TOL, (ra, rb)


@pytest.mark.parametrize(
    "nproc, layout, shown, moe",
    [
        (2, ["train.parallel.pp=2"], "PP 2 (1F1B, 2 stages)", False),
        (
            2,
            [
                "train.parallel.pp=2",
                "train.parallel.pp_schedule=Interleaved1F1B",
                "train.parallel.pp_stages_per_rank=2",
            ],
            "PP 2 (Interleaved1F1B, 4 stages)",
            True,
        ),
        (2, ["train.parallel.pp=2", "train.parallel.pp_split=[1,3]"], "PP 2 (1F1B, 2 stages)", True),
        (4, ["train.parallel.pp=2", "train.parallel.dp_replicate=2"], "DDP + ZeRO-1 (2) × PP 2", False),
        (
            4,
            ["train.parallel.pp=2", "train.parallel.dp_shard=2", "train.parallel.dp_replicate=1"],
            "FSDP2 (2) × PP 2",
            False,
        ),
    ],
    ids=["pp2-1f1b", "moe-pp2-interleaved", "moe-pp2-unequal", "pp2xdp2", "pp2xfsdp2"],
)
def test_pipeline_matches_one_process(request, tmp_path, nproc, layout, shown, moe):
    config, single = request.getfixturevalue("moe_single_run" if moe else "single_run")
    zero1 = "ZeRO-1" in shown  # the report's DP + PP + ZeRO-1: also check its checkpoint below
    saves = [] if zero1 else ["checkpoint.every=0"]
    out = run(torchrun_cmd(nproc, "train", str(config), *layout, *saves, "--out", str(tmp_path / "pp")), timeout=300)
    assert shown in out.stdout
    _assert_same(single, tmp_path / "pp")
    _assert_same_validation(single, tmp_path / "pp")
    if moe:
        _assert_same_moe(single, tmp_path / "pp")
    if zero1:  # each stage's dp ranks wrote the Adam moments they own: every parameter's, once, under its name
        from torch.distributed.checkpoint import FileSystemReader

        import skyloom

        path = tmp_path / "pp" / "checkpoints" / "step_00000006"
        saved = FileSystemReader(str(path / "dcp")).read_metadata().state_dict_metadata
        names = {n for n, _ in skyloom.load_model(path).named_parameters()}
        assert {k[len("optim.state.") : -len(".exp_avg")] for k in saved if k.endswith(".exp_avg")} == names


def test_pipeline_checkpoint_resumes_exactly(single_run, tmp_path):
    """A PP2 run's step-3 checkpoint (each stage writes its own shards, DCP) resumes on PP2 and on one process
    with the uninterrupted losses; the checkpoint opens as a full model."""
    config, single = single_run
    out_dir = tmp_path / "pp"
    run(torchrun_cmd(2, "train", str(config), "train.parallel.pp=2", "--out", str(out_dir)), timeout=300)
    _assert_same(single, out_dir)
    assert (out_dir / "checkpoints/step_00000003/dcp/.metadata").is_file()
    import skyloom

    model = skyloom.load_model(out_dir / "checkpoints/step_00000006")
    assert sum(p.numel() for p in model.parameters()) == 344_640

    for nproc in (2, 1):  # the same layout, then another one (one process)
        shutil.rmtree(out_dir / "checkpoints/step_00000006")
        metrics = out_dir / "metrics.jsonl"
        metrics.write_text(
            "".join(
                line
                for line in metrics.read_text().splitlines(keepends=True)
                if '"step": 4' not in line and '"step": 5' not in line and '"step": 6' not in line
            )
        )
        cmd = (
            torchrun_cmd(2, "train", str(config), "train.parallel.pp=2", "--out", str(out_dir), "--resume")
            if nproc == 2
            else skyloom_cmd("train", str(config), "--out", str(out_dir), "--resume")
        )
        run(cmd, timeout=300)
        _assert_same(single, out_dir)
