"""Expert parallelism: experts sharded over 2 ranks (tokens exchanged by all-to-all) train exactly like 1 process.

The module is also the worker: `python tests/test_parallel_ep.py OUT` (1 process: the reference) or under
`torchrun --nproc_per_node 2|4` (EP 2 over the DDP ranks) trains a tiny MoE for 6 steps the way the trainer does
(loss ×world/n_global, aux loss per micro-batch, `MoECallback` for statistics and adaptive coefficients, global
grad-norm clipping) and writes every step's numbers to OUT/rank{r}.json. The reference sees the same global batch
as micro-batches of one rank's size, so both route the same token populations: capacity, drops, aux losses and
router statistics must agree (1e-5), and so must the loss and the weights after 6 updates.
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

REPO = Path(__file__).resolve().parents[1]
STEPS, SEQ, PER_RANK, EP = 6, 16, 2, 2  # 2 rows per rank; the reference: micro-batches of 2 rows
MOE = dict(n_experts=4, top_k=2, capacity_factor=1.0, gate_norm=True, adaptive=True, aux_coef=0.01, beta=0.9)
MODEL = dict(arch="llama", vocab_size=128, dim=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=SEQ)
STAT_KEYS = ("drop_rate", "load", "entropy", "max1_max2", "max2_max3", "aux_loss", "aux_coef")


def _train(out: Path, policy: str, aux: str, ranks: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from skyloom.config import build
    from skyloom.model.config import ModelConfig
    from skyloom.model.loss import token_loss
    from skyloom.model.transformer import Transformer
    from skyloom.train.distributed import shutdown
    from skyloom.train.moe import MoECallback
    from skyloom.train.parallel.config import ParallelConfig
    from skyloom.train.parallel.expert import apply_expert_parallel, check_expert_layout, clip_grad_norm_, expert_mesh

    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cfg = build(ModelConfig, {**MODEL, "moe": {**MOE, "drop_policy": policy, "aux_loss": aux}}, prefix="model")
    torch.manual_seed(0)
    model = Transformer(cfg)
    inner = model
    if world > 1:
        dist.init_process_group("gloo")
        pcfg = ParallelConfig(dp_replicate=world, ep=EP, zero1=False)
        check_expert_layout(pcfg)
        mesh = expert_mesh(pcfg, "cpu")
        apply_expert_parallel(model, mesh["ep"], mesh["ep_replicate"])
        model = DDP(model)
    opt = torch.optim.AdamW(inner.parameters(), lr=3e-3, foreach=False)  # mixed DTensor / plain
    callback = MoECallback(cfg.moe)
    trainer = SimpleNamespace(
        model=model,
        env=SimpleNamespace(world_size=world),
        device=torch.device("cpu"),
        step=0,
        total_steps=STEPS,
        cfg=SimpleNamespace(train=SimpleNamespace(log_every=1)),
    )
    data = torch.Generator().manual_seed(1)
    per_rank, rows = PER_RANK, PER_RANK * ranks  # the global batch of a `ranks`-process run
    records = []
    for step in range(STEPS):
        tokens = torch.randint(0, cfg.vocab_size, (rows, SEQ + 1), generator=data)
        mine = tokens[rank * per_rank : (rank + 1) * per_rank] if world > 1 else tokens
        batches = list(mine.split(per_rank))  # EP: one micro-batch per rank; reference: `ranks` of them
        n_global = rows * SEQ
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            sync = model.no_sync() if world > 1 and i < len(batches) - 1 else torch.enable_grad()
            with sync:
                ce = token_loss(model(batch[:, :-1]), batch[:, 1:])
                loss = ce * (world / n_global) + callback.extra_loss(trainer, batch) / len(batches)
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
        if world > 1:
            dist.all_reduce(total)
        records.append({"loss": float(total) / n_global, "grad_norm": grad_norm, **metrics})
    weights = {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().tolist()
        for name, p in inner.named_parameters()
        if name.endswith(("ffn.w1", "ffn.gate.weight", "wq.weight"))
    }
    (out / f"rank{rank}.json").write_text(json.dumps({"steps": records, "weights": weights}))
    if world > 1:
        shutdown()  # barrier, then destroy: a gloo rank exiting while its peers still talk aborts


def _launch(out: Path, nproc: int, policy: str, aux: str, ranks: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    script = [str(Path(__file__)), str(out), policy, aux, str(ranks)]
    cmd = [sys.executable, *script] if nproc == 1 else torchrun_launch(nproc, *script)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / "rank0.json").read_text())


def _close(a, b, tol: float) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b))
    return abs(a - b) <= tol * max(1.0, abs(a))  # relative for the large ones (Max1/Max2 ratios are ~3)


@pytest.mark.parametrize("policy,aux,ranks", [("probs", "eq4", 2), ("position", "switch", 2), ("probs", "eq4", 4)])
def test_ep2_matches_one_process(tmp_path, policy, aux, ranks):
    """EP 2 over 2 ranks, and over 4 ranks (2 copies of the experts, whose gradients are summed)."""
    ref = _launch(tmp_path / "single", 1, policy, aux, ranks)
    ep = _launch(tmp_path / "ep", ranks, policy, aux, ranks)
    assert len(ref["steps"]) == len(ep["steps"]) == STEPS
    drops = []
    for step, (x, y) in enumerate(zip(ref["steps"], ep["steps"])):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (step, x["loss"], y["loss"])
        assert abs(x["grad_norm"] - y["grad_norm"]) < 1e-5 * max(1.0, x["grad_norm"]), step
        for layer in (0, 1):
            for key in STAT_KEYS:
                name = f"moe/L{layer}/{key}"
                assert _close(x[name], y[name], 1e-5), (step, name, x[name], y[name])
            drops.append(x[f"moe/L{layer}/drop_rate"])
    assert max(drops) > 0  # capacity binds: the drop decisions are compared, not just a dropless pass
    for name, w in ref["weights"].items():  # after 6 updates, experts gathered from both ranks
        assert _close(w, ep["weights"][name], 1e-5), name


def test_trainer_ep2_matches_one_process(train_corpus, tmp_path):
    """`skyloom train` with train.parallel {dp_replicate: 2, ep: 2}: the same losses and router numbers as one
    process (whose two micro-batches are the two ranks' micro-batches), and the run resumes."""
    cfg = tiny_run_config(
        train_corpus,
        model={**TINY_MODEL, "moe": dict(MOE)},
        train={"max_steps": 6},
        checkpoint={"every": 3},
        validation={"every": 3},
    )
    config = write_config(cfg, tmp_path / "moe.yaml")
    run(skyloom_cmd("train", str(config), "--out", str(tmp_path / "single")))
    layout = ["train.parallel.ep=2", "train.parallel.zero1=false"]
    out = run(torchrun_cmd(2, "train", str(config), *layout, "--out", str(tmp_path / "ep")), timeout=240)
    assert "EP 2" in out.stdout
    # the experts went into a sharded checkpoint (each rank its own); resume from step 3 on the same layout
    assert (tmp_path / "ep/checkpoints/step_00000003/dcp/.metadata").is_file()
    shutil.rmtree(tmp_path / "ep/checkpoints/step_00000006")
    run(torchrun_cmd(2, "train", str(config), *layout, "--out", str(tmp_path / "ep"), "--resume"), timeout=240)
    a, b = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "ep")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) < 1e-5, (x["loss"], y["loss"])
        assert abs(x["grad_norm"] - y["grad_norm"]) < 1e-5 * max(1.0, x["grad_norm"])
        for key in ("moe/L0/drop_rate", "moe/L1/aux_coef", "moe/L1/max1_max2", "moe/L0/load", "moe/aux_loss"):
            assert _close(x[key], y[key], 1e-5), key
    # validation (eval mode: dropless, C = the largest count over the ep group) on every rank in step
    va, vb = read_metrics(tmp_path / "single", "val"), read_metrics(tmp_path / "ep", "val")
    assert [r["step"] for r in va] == [r["step"] for r in vb] == [3, 6]
    assert all(abs(x["loss"] - y["loss"]) < 1e-5 for x, y in zip(va, vb)), (va, vb)


def test_layouts_ep_does_not_support_are_refused_with_the_key():
    from skyloom.config import ConfigError
    from skyloom.train.parallel.config import ParallelConfig
    from skyloom.train.parallel.expert import check_expert_layout

    cases = {
        "train.parallel.ep": ParallelConfig(dp_replicate=2, ep=4, zero1=False),
        "train.parallel.dp_shard": ParallelConfig(dp_replicate=1, dp_shard=2, ep=2, zero1=False),
        "train.parallel.tp": ParallelConfig(dp_replicate=2, tp=2, ep=2, zero1=False),
        "train.parallel.zero1": ParallelConfig(dp_replicate=2, ep=2, zero1=True),
    }
    for key, pcfg in cases.items():
        with pytest.raises(ConfigError) as err:
            check_expert_layout(pcfg)
        assert key in str(err.value), (key, str(err.value))
    check_expert_layout(ParallelConfig(dp_replicate=4, ep=2, zero1=False))  # 2 expert replicas: fine


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
