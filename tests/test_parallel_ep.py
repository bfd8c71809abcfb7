"""Expert parallelism: experts sharded over ranks (tokens exchanged by all-to-all) train exactly like 1 process.

The module is also the worker: `python tests/test_parallel_ep.py OUT …` (1 process: the reference) or under
`torchrun --nproc_per_node 2|4` trains a tiny MoE for 6 steps the way the trainer does (loss ×dp/n_global, aux
loss per micro-batch, `MoECallback` for statistics and adaptive coefficients, global grad-norm clipping) in each of
the launch's layouts in turn, built by `parallelize` as the trainer builds them — EP over DDP ranks, EP over FSDP2
ranks (the experts' own FSDP unit over the dp/ep ranks), Expert Data Parallelism (ep = tp, with sequence
parallelism) — and writes every step's numbers to OUT/<layout>.json. Every layout and the reference route the same
micro-batches of 2 rows (a data-parallel slot takes 2 rows per rank-sized micro-batch, accumulating when it has
fewer ranks than micro-batches), so capacity, drops, aux losses and router statistics must agree (1e-5), and so
must the loss and the weights after 6 updates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.train_helpers import (  # noqa: F401
    TINY_MODEL,
    read_metrics,
    run,
    skyloom_cmd,
    tiny_run_config,
    torchrun_cmd,
    torchrun_launch,
    train_corpus,
    write_config,
)

pytestmark = pytest.mark.data_free  # same inputs with or without ../shared/data: CI's second pass skips it

REPO = Path(__file__).resolve().parents[1]
STEPS, SEQ, MICRO, EP = 6, 16, 2, 2  # micro-batches of 2 rows: one per rank for EP over dp ranks
MOE = dict(n_experts=4, top_k=2, capacity_factor=1.0, gate_norm=True, adaptive=True, aux_coef=0.01, beta=0.9)
MODEL = dict(arch="llama", vocab_size=128, dim=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=SEQ)
STAT_KEYS = ("drop_rate", "load", "entropy", "max1_max2", "max2_max3", "aux_loss", "aux_coef")
# the layouts each launch runs (world → name → train.parallel); the reference has `world` micro-batches
LAYOUTS = {
    2: {
        "ddp2_ep2": dict(dp_replicate=2, ep=EP),  # zero1 left at its default: it does not apply under EP
        "fsdp2_ep2": dict(dp_replicate=1, dp_shard=2, ep=EP),
        "tp2_edp2": dict(dp_replicate=1, tp=2, ep=2),
    },
    4: {
        "ddp4_ep2": dict(dp_replicate=4, ep=EP),
        "fsdp4_ep2": dict(dp_replicate=1, dp_shard=4, ep=EP),
        "fsdp2_tp2_edp2": dict(dp_replicate=1, dp_shard=2, tp=2, ep=2),
    },
}


def _train_layout(out: Path, policy: str, aux: str, world: int, layout: str | None) -> None:
    import torch.distributed as dist

    from skyloom.config import build
    from skyloom.model.config import ModelConfig
    from skyloom.model.loss import token_loss
    from skyloom.model.transformer import Transformer
    from skyloom.train.moe import MoECallback
    from skyloom.train.parallel.apply import parallelize
    from skyloom.train.parallel.config import ParallelConfig
    from skyloom.train.parallel.expert import clip_grad_norm_
    from skyloom.train.parallel.mesh import build_mesh, data_parallel_rank

    cfg = build(ModelConfig, {**MODEL, "moe": {**MOE, "drop_policy": policy, "aux_loss": aux}}, prefix="model")
    torch.manual_seed(0)
    model = Transformer(cfg)
    inner = model
    dp_rank, dp, tp = 0, 1, 1
    if layout is not None:
        pcfg = ParallelConfig(**LAYOUTS[world][layout]).resolved(world)
        dp_rank, dp = data_parallel_rank(pcfg, dist.get_rank())
        tp = pcfg.tp
        model = parallelize(model, pcfg, build_mesh(pcfg, world, "cpu"), device=torch.device("cpu"))
    opt = torch.optim.AdamW(inner.parameters(), lr=3e-3, foreach=False)  # mixed DTensor / plain
    callback = MoECallback(cfg.moe)
    trainer = SimpleNamespace(
        model=model,
        pipeline=None,
        env=SimpleNamespace(world_size=world if layout else 1),
        device=torch.device("cpu"),
        step=0,
        total_steps=STEPS,
        cfg=SimpleNamespace(train=SimpleNamespace(log_every=1), model=cfg),
    )
    data = torch.Generator().manual_seed(1)
    rows = MICRO * world  # the global batch: `world` micro-batches of MICRO rows
    per_slot = rows // dp
    records = []
    for step in range(STEPS):
        tokens = torch.randint(0, cfg.vocab_size, (rows, SEQ + 1), generator=data)
        batches = list(tokens[dp_rank * per_slot : (dp_rank + 1) * per_slot].split(MICRO))
        n_global = rows * SEQ
        loss_sum = 0.0
        for batch in batches:
            ce = token_loss(model(batch[:, :-1]), batch[:, 1:])
            loss = ce * (dp / n_global) + callback.extra_loss(trainer, batch) / len(batches)
            loss.backward()
            loss_sum += float(ce.detach())
        grad_norm = float(clip_grad_norm_(inner.parameters(), 1.0))
        callback.pre_optim_step(trainer)
        opt.step()
        opt.zero_grad(set_to_none=True)
        trainer.step = step + 1
        metrics: dict = {}
        callback.post_step(trainer, metrics)
        total = torch.tensor([loss_sum], dtype=torch.float64)
        if layout is not None:
            dist.all_reduce(total)
        records.append({"loss": float(total) / tp / n_global, "grad_norm": grad_norm, **metrics})
    weights = {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().tolist()
        for name, p in inner.named_parameters()
        if name.endswith(("ffn.w1", "ffn.gate.weight", "wq.weight"))
    }
    if layout is None or dist.get_rank() == 0:
        (out / f"{layout or 'single'}.json").write_text(json.dumps({"steps": records, "weights": weights}))


def _train(out: Path, policy: str, aux: str, world: int) -> None:
    """The reference (one process), or every layout of a `world`-rank launch in turn."""
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        _train_layout(out, policy, aux, world, None)
        return
    import torch.distributed as dist

    from skyloom.train.distributed import shutdown

    dist.init_process_group("gloo")
    for layout in LAYOUTS[world]:
        _train_layout(out, policy, aux, world, layout)
    shutdown()  # barrier, then destroy: a gloo rank exiting while its peers still talk aborts


def _launch(out: Path, nproc: int, policy: str, aux: str, world: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    script = [str(Path(__file__)), str(out), policy, aux, str(world)]
    cmd = [sys.executable, *script] if nproc == 1 else torchrun_launch(nproc, *script)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def _close(a, b, tol: float) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    return abs(a - b) <= tol * max(1.0, abs(a))  # relative for the large ones (Max1/Max2 ratios are ~3)


@pytest.mark.parametrize("policy,aux,world", [("probs", "eq4", 2), ("position", "switch", 2), ("probs", "eq4", 4)])
def test_expert_parallel_layouts_match_one_process(tmp_path, policy, aux, world):
    """EP 2 over DDP ranks (over 4 ranks: 2 copies of the experts, whose gradients are summed), over FSDP2 ranks,
    and Expert Data Parallelism over the tp ranks (alone, and with FSDP2 over dp on 4 ranks)."""
    _launch(tmp_path, 1, policy, aux, world)
    _launch(tmp_path, world, policy, aux, world)
    ref = json.loads((tmp_path / "single.json").read_text())
    for layout in LAYOUTS[world]:
        ep = json.loads((tmp_path / f"{layout}.json").read_text())
        assert len(ref["steps"]) == len(ep["steps"]) == STEPS
        drops = []
        for step, (x, y) in enumerate(zip(ref["steps"], ep["steps"])):
            assert abs(x["loss"] - y["loss"]) < 1e-5, (layout, step, x["loss"], y["loss"])
            assert abs(x["grad_norm"] - y["grad_norm"]) < 1e-5 * max(1.0, x["grad_norm"]), (layout, step)
            for layer in (0, 1):
                for key in STAT_KEYS:
                    name = f"moe/L{layer}/{key}"
                    assert _close(x[name], y[name], 1e-5), (layout, step, name, x[name], y[name])
                drops.append(x[f"moe/L{layer}/drop_rate"])
        assert max(drops) > 0  # capacity binds: the drop decisions are compared, not just a dropless pass
        for name, w in ref["weights"].items():  # after 6 updates, experts gathered from their ranks
            assert _close(w, ep["weights"][name], 1e-5), (layout, name)


@pytest.fixture(scope="module")
def moe_single(train_corpus, tmp_path_factory):
    """A tiny-MoE config (6 steps, checkpoints and validation every 3) and its one-process run."""
    root = tmp_path_factory.mktemp("ep_single")
    cfg = tiny_run_config(
        train_corpus,
        model={**TINY_MODEL, "moe": dict(MOE)},
        train={"max_steps": 6},
        checkpoint={"every": 3},
        validation={"every": 3},
    )
    config = write_config(cfg, root / "moe.yaml")
    run(skyloom_cmd("train", str(config), "--out", str(root / "single")))
    return config, root / "single"


def _assert_same_run(single: Path, other: list[dict], steps: int = 6) -> None:
    """Loss, grad norm and router numbers per step equal the one-process run's (1e-5)."""
    a = read_metrics(single)
    assert [r["step"] for r in other[:steps]] == list(range(1, steps + 1))
    for x, y in zip(a, other):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x["step"], x["loss"], y["loss"])
        assert abs(x["grad_norm"] - y["grad_norm"]) < 1e-5 * max(1.0, x["grad_norm"]), x["step"]
        for key in ("moe/L0/drop_rate", "moe/L1/aux_coef", "moe/L1/max1_max2", "moe/L0/load", "moe/aux_loss"):
            assert _close(x[key], y[key], 1e-5), (x["step"], key)


def test_trainer_ep2_matches_one_process(moe_single, tmp_path):
    """`skyloom train` with EP 2 over FSDP2 ranks {dp_shard: 2, ep: 2} (zero1 at its default): the same losses and
    router numbers as one process (whose two micro-batches are the two ranks' micro-batches); its sharded checkpoint
    resumes under Expert Data Parallelism {tp: 2, ep: 2} (DCP reshards the experts) with the same numbers."""
    config, single = moe_single
    fsdp = ["train.parallel.ep=2", "train.parallel.dp_shard=2", "train.parallel.dp_replicate=1"]
    out = run(torchrun_cmd(2, "train", str(config), *fsdp, "--out", str(tmp_path / "ep")), timeout=240)
    assert "FSDP2 (2) × EP 2" in out.stdout
    # the experts went into a sharded checkpoint (each rank its own); resume from step 3 under EDP
    assert (tmp_path / "ep/checkpoints/step_00000003/dcp/.metadata").is_file()
    fsdp_metrics = read_metrics(tmp_path / "ep")
    shutil.rmtree(tmp_path / "ep/checkpoints/step_00000006")
    edp = ["train.parallel.ep=2", "train.parallel.tp=2"]
    out = run(torchrun_cmd(2, "train", str(config), *edp, "--out", str(tmp_path / "ep"), "--resume"), timeout=240)
    assert "TP 2 + SP × EP 2" in out.stdout
    resumed = read_metrics(tmp_path / "ep")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    _assert_same_run(single, fsdp_metrics)  # FSDP2 × EP, steps 1-6
    _assert_same_run(single, resumed)  # steps 1-3 FSDP2 × EP, 4-6 resumed under EDP
    # validation (eval mode: dropless, C = the largest count over the ep group) on every rank in step
    va, vb = read_metrics(single, "val"), read_metrics(tmp_path / "ep", "val")
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [3, 6]
    assert all(abs(x["loss"] - y["loss"]) < 1e-5 for x, y in zip(va, vb)), (va, vb)


def test_trainer_pipeline_with_expert_data_parallelism_matches_one_process(moe_single, tmp_path):
    """The MoE report's layout in small: PP 2 × EDP (TP 2 + SP, experts over the same 2 ranks) on 4 ranks — each
    stage's MoE layers route over its tp ranks and carry their aux losses through the pipeline."""
    config, single = moe_single
    layout = ["train.parallel.pp=2", "train.parallel.tp=2", "train.parallel.ep=2", "train.parallel.dp_replicate=1"]
    out = run(torchrun_cmd(4, "train", str(config), *layout, "--out", str(tmp_path / "pp")), timeout=300)
    assert "PP 2 (1F1B, 2 stages) × TP 2 + SP × EP 2" in out.stdout
    _assert_same_run(single, read_metrics(tmp_path / "pp"))
    va, vb = read_metrics(single, "val"), read_metrics(tmp_path / "pp", "val")
    assert len(vb) == 2 and all(abs(x["loss"] - y["loss"]) < 1e-5 for x, y in zip(va, vb)), (va, vb)


def test_layouts_ep_does_not_support_are_refused_with_the_key():
    from skyloom.config import ConfigError, build
    from skyloom.model.config import ModelConfig
    from skyloom.train.parallel.config import ParallelConfig
    from skyloom.train.parallel.expert import check_expert_layout

    cases = {
        "train.parallel.ep": ParallelConfig(dp_replicate=2, ep=4),  # ep must divide dp
        "train.parallel.pp": ParallelConfig(dp_replicate=2, pp=2, ep=2),  # EP over dp ranks: no stages yet
        "train.parallel.ep ": ParallelConfig(dp_replicate=2, tp=2, ep=4),  # with tp, ep = tp (EDP)
        "train.parallel.sequence_parallel": ParallelConfig(dp_replicate=1, tp=2, ep=2, sequence_parallel=False),
    }
    for key, pcfg in cases.items():
        with pytest.raises(ConfigError) as err:
            check_expert_layout(pcfg)
        assert key.strip() in str(err.value), (key, str(err.value))
    for fine in (
        ParallelConfig(dp_replicate=4, ep=2),  # 2 expert replicas; zero1 at its default true: it does not apply
        ParallelConfig(dp_replicate=1, dp_shard=4, ep=2),  # EP over FSDP2 ranks
        ParallelConfig(dp_replicate=2, dp_shard=2, ep=4),  # over HSDP ranks
        ParallelConfig(dp_replicate=1, dp_shard=2, tp=2, ep=2),  # Expert Data Parallelism
        ParallelConfig(dp_replicate=1, pp=2, tp=2, ep=2),  # EDP in pipeline stages
    ):
        check_expert_layout(fine)
        assert not fine.zero1_applies
    # a MoE model under tp needs EDP: the key to change is named when the config is built
    model = build(ModelConfig, {**MODEL, "moe": dict(MOE)}, prefix="model")
    with pytest.raises(ConfigError, match=r"train\.parallel\.tp.*set train\.parallel\.ep: 2"):
        ParallelConfig(dp_replicate=1, tp=2).check_model(model)
    ParallelConfig(dp_replicate=1, tp=2, ep=2).check_model(model, seq_len=SEQ)


def test_padded_layout_reads_nothing_back_to_the_host_in_training(monkeypatch):
    """Training with a capacity builds the expert buffer from static shapes: no `.tolist()` / `.item()`."""
    from skyloom.model.moe import MoE
    from skyloom.model.moe_config import MoEConfig

    torch.manual_seed(0)
    layer = MoE(16, 24, MoEConfig(n_experts=4, top_k=2, capacity_factor=1.0))
    layer.expert_impl = "padded"
    x = torch.randn(2, 8, 16)

    def refuse(*args, **kwargs):
        raise AssertionError("host read-back in the MoE forward")

    monkeypatch.setattr(torch.Tensor, "tolist", refuse)
    monkeypatch.setattr(torch.Tensor, "item", refuse)
    layer(x).sum().backward()
    assert layer.w1.grad.abs().sum() > 0


if __name__ == "__main__":
    _train(Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]))
