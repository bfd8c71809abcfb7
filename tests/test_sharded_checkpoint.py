"""Meta-device construction and sharded checkpoints (issue 16, items 1–2), with torchrun on gloo CPU processes.

- The model is built on `meta` and each rank materialises only its shards; one seed gives the same full weights on
  1 process, DDP and FSDP over 2 and 4 ranks (gathered and compared exactly).
- An FSDP checkpoint is written by every rank for its own shards (DCP), with each rank hashing the files it wrote;
  nothing is gathered on one rank while training (the runs fail if a full state dict is asked for).
- `skyloom.load_model` consolidates such a checkpoint by streaming it tensor by tensor.
- kill -9 of a 2-rank FSDP run, then resume on 2 ranks and on 1: the continuation matches uninterrupted runs;
  FSDP 4 → 2 and FSDP 2 → PP 2 resume too.
- DDP + ZeRO-1 checkpoints through DCP too, each rank writing the optimizer entries it owns (consolidation forbidden);
  one key space, so ZeRO-1 → ZeRO-1 (bit-exact), PP, FSDP, plain DDP; 1 process → FSDP, ZeRO-1 (streamed tensor by
  tensor); FSDP → ZeRO-1 all resume (one torchrun launch runs all those sessions).
Everything runs on a synthetic corpus and a ~200k-parameter model; each torchrun start costs a few seconds.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import skyloom
from skyloom.cli import main
from skyloom.model.manifest import CheckpointError
from tests.train_helpers import (
    REPO,
    TINY_MODEL,
    build_run_config,
    cli_env,
    random_token_corpus,
    read_metrics,
    torchrun_launch,
    write_config,
)

pytestmark = pytest.mark.data_free  # same inputs with or without ../shared/data: CI's second pass skips it

# Runs `skyloom train` (argv[1:]) after making every way of gathering a full state dict on one rank fail,
# so a checkpoint that gathers cannot pass unnoticed.
NO_GATHER = """
import sys
import torch.distributed.checkpoint.state_dict as sd
from torch.distributed.optim import ZeroRedundancyOptimizer

def forbid(fn):
    def wrapped(*args, options=None, **kwargs):
        if options is not None and options.full_state_dict:
            raise AssertionError("a full state dict was gathered during training")
        return fn(*args, options=options, **kwargs)
    return wrapped

for name in ("get_model_state_dict", "get_optimizer_state_dict", "get_state_dict"):
    setattr(sd, name, forbid(getattr(sd, name)))

def no_consolidate(self, to=0):
    raise AssertionError("the optimizer state was consolidated on one rank during training")

ZeroRedundancyOptimizer.consolidate_state_dict = no_consolidate
from skyloom.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""

# Builds a Trainer (no step) and writes the gathered full initial weights to argv[2] (rank 0).
GATHER_INIT = """
import sys
import torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from skyloom.config import load
from skyloom.train.config import RunConfig
from skyloom.train.distributed import shutdown
from skyloom.train.trainer import Trainer

cfg = load(RunConfig, sys.argv[1], sys.argv[3:])
trainer = Trainer(cfg, sys.argv[2] + ".run")
local = [p.to_local() if hasattr(p, "to_local") else p for p in trainer.raw_model.parameters()]
assert not any(t.device.type == "meta" for t in local)
full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if trainer.env.is_main:
    save_file({k: v.contiguous() for k, v in full.items()}, sys.argv[2])
shutdown()  # leave the process group together: a gloo rank exiting while its peers still talk aborts
"""


# Several training sessions in ONE torchrun launch (a launch costs seconds), with NO_GATHER's guards: argv[1] is the
# config, argv[2] a JSON list of {"train": RUN_DIR, "overrides": [...], "resume": bool} and {"copy": [SRC, DST]}
# (rank 0 copies a run, dropping its step-6 checkpoint, so the next session resumes from step 3).
SESSIONS = (
    NO_GATHER.split("from skyloom.cli import main")[0]
    + """
import json
import shutil
from pathlib import Path
from skyloom.config import load
from skyloom.train.config import RunConfig
from skyloom.train.distributed import barrier, shutdown
from skyloom.train.trainer import Trainer

for session in json.loads(sys.argv[2]):
    if "copy" in session:
        src, dst = map(Path, session["copy"])
        if int(__import__("os").environ["RANK"]) == 0:
            shutil.copytree(src, dst)
            shutil.rmtree(dst / "checkpoints" / "step_00000006")
            (dst / ".lock").unlink(missing_ok=True)
    else:
        cfg = load(RunConfig, sys.argv[1], session["overrides"])
        Trainer(cfg, session["train"], resume=session["resume"]).fit()
    barrier()
shutdown()
"""
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return random_token_corpus(tmp_path_factory.mktemp("sharded_corpus") / "tokens", n_docs=400, seed=1)


def run_config(corpus: Path, steps: int = 6, every: int = 3) -> dict:
    return {
        "model": dict(TINY_MODEL),
        "data": {"seq_len": 64, "seed": 0, "sources": {"random": {"path": str(corpus)}}},
        "train": {
            "global_batch_tokens": 1024,
            "micro_batch_size": 4,
            "max_steps": steps,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "log_every": 1000,
            "seed": 7,
        },
        "validation": {"every": 0, "at_start": False, "sets": {}},
        "checkpoint": {"every": every, "keep_last": 10},
    }


def torchrun(nproc: int, script: Path, *args: str) -> list[str]:
    return torchrun_launch(nproc, str(script), *args)


def single(script: Path, *args: str) -> list[str]:
    return [sys.executable, str(script), *args]


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env(1), cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scripts")
    (root / "no_gather_train.py").write_text(NO_GATHER, encoding="utf-8")
    (root / "gather_init.py").write_text(GATHER_INIT, encoding="utf-8")
    (root / "sessions.py").write_text(SESSIONS, encoding="utf-8")
    return {"train": root / "no_gather_train.py", "init": root / "gather_init.py", "sessions": root / "sessions.py"}


def run_config_from(config: Path) -> dict:
    import yaml

    return yaml.safe_load(config.read_text(encoding="utf-8"))


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir)]


# ---- 1. meta-device construction: the same full weights on every layout ----


def test_the_same_seed_gives_the_same_full_weights_on_every_layout(corpus, scripts, tmp_path):
    config = write_config(run_config(corpus), tmp_path / "run.yaml")
    from skyloom.train.trainer import Trainer

    reference = Trainer(build_run_config(run_config(corpus)), tmp_path / "one").raw_model.state_dict()
    layouts = {
        "ddp2": (2, "train.parallel=ddp"),
        "fsdp2": (2, "train.parallel=fsdp"),
        "fsdp4": (4, "train.parallel=fsdp"),
    }
    for name, (nproc, layout) in layouts.items():
        out = tmp_path / f"{name}.safetensors"
        run(torchrun(nproc, scripts["init"], str(config), str(out), layout))
        full = load_file(str(out))
        assert full.keys() == reference.keys(), name
        for key, value in reference.items():
            assert torch.equal(full[key], value), f"{name}: {key} differs from the 1-process init"
    # and another seed gives other weights
    other = Trainer(
        build_run_config({**run_config(corpus), "train": {**run_config(corpus)["train"], "seed": 8}}),
        tmp_path / "other",
    ).raw_model.state_dict()
    assert not torch.equal(other["layers.0.attn.wq.weight"], reference["layers.0.attn.wq.weight"])


# ---- 2. sharded checkpoints ----


@pytest.fixture(scope="module")
def fsdp2_straight(corpus, scripts, tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted 2-rank FSDP run of 6 steps (checkpoints at 3 and 6), trained with gathering forbidden."""
    root = tmp_path_factory.mktemp("fsdp2")
    config = write_config(run_config(corpus), root / "run.yaml")
    run(torchrun(2, scripts["train"], str(config), "train.parallel=fsdp", "--out", str(root / "run")))
    return config, root / "run"


def test_an_fsdp_checkpoint_is_written_per_rank_and_streams_into_load_model(fsdp2_straight):
    config, run_dir = fsdp2_straight
    path = run_dir / "checkpoints" / "step_00000006"
    assert not (path / "model.safetensors").exists()  # never gathered
    files = json.loads((path / "manifest.json").read_text())["files"]
    assert any(f.startswith("dcp/__0_") for f in files) and any(f.startswith("dcp/__1_") for f in files)
    assert "dcp/.metadata" in files and "model.json" in files
    model = skyloom.load_model(path)  # verified, then consolidated tensor by tensor
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape == (1, 4, 1024)
    hf = run_dir.parent / "hf"
    assert main(["export", "hf", str(path), str(hf)]) == 0  # export goes through the same streaming load
    exported = load_file(str(hf / "model.safetensors"))
    assert torch.equal(exported["model.norm.weight"], model.norm.weight)
    # the weights are the trained ones: the same as a 1-process resume of step 6 reads back
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from skyloom.train.trainer import Trainer

    cfg = build_run_config(run_config_from(config))
    copy = run_dir.parent / "copy"
    shutil.copytree(run_dir, copy)
    trainer = Trainer(cfg, copy, resume=True)
    assert trainer.step == 6
    loaded = get_model_state_dict(trainer.model)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_a_tampered_sharded_checkpoint_is_refused_before_its_pickle_is_opened(fsdp2_straight, tmp_path, capsys):
    _, run_dir = fsdp2_straight
    path = tmp_path / "step"
    shutil.copytree(run_dir / "checkpoints" / "step_00000003", path)
    shard = next((path / "dcp").glob("__1_*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"dcp/__1_.*sha256"):
        skyloom.load_model(path)
    assert main(["export", "hf", str(path), str(tmp_path / "hf")]) == 2
    assert "dcp/__1_" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    skyloom.load_model(path, verify=False)  # --no-verify: the user vouches for it


def test_kill_9_of_a_2_rank_fsdp_run_resumes_on_2_ranks_and_on_1(corpus, scripts, fsdp2_straight, tmp_path):
    config, straight = fsdp2_straight
    killed = tmp_path / "killed"
    cmd = torchrun(2, scripts["train"], str(config), "train.parallel=fsdp", "--out", str(killed), "train.max_steps=6")
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=cli_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step_00000003").is_dir():
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-3000:]}"
        assert time.time() < deadline
        time.sleep(0.01)
    import os

    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks: no chance to save anything
    proc.wait()
    proc.stderr.close()
    assert not (killed / "checkpoints" / "step_00000006").exists()
    on_one = tmp_path / "on_one"
    shutil.copytree(killed, on_one)
    (killed / ".lock").unlink(missing_ok=True)

    run(torchrun(2, scripts["train"], str(config), "train.parallel=fsdp", "--out", str(killed), "--resume"))
    a, b = losses(straight), losses(killed)
    assert [r["step"] for r in read_metrics(killed)] == list(range(1, 7))
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6, (a, b)

    (on_one / ".lock").unlink(missing_ok=True)
    run(single(scripts["train"], str(config), "train.parallel=ddp", "--out", str(on_one), "--resume"))
    c = losses(on_one)
    assert [r["step"] for r in read_metrics(on_one)] == list(range(1, 7))
    assert max(abs(x - y) for x, y in zip(a, c)) < 1e-6, (a, c)
    resume = [r for r in read_metrics(on_one, "event") if r["event"] == "resume"]
    assert resume[0]["world_size"] == 1 and resume[0]["step"] == 3


def test_fsdp_4_ranks_resume_on_2(corpus, scripts, fsdp2_straight, tmp_path):
    config, straight = fsdp2_straight
    four = tmp_path / "four"
    run(torchrun(4, scripts["train"], str(config), "train.parallel=fsdp", "--out", str(four)))
    assert max(abs(x - y) for x, y in zip(losses(four), losses(straight))) < 1e-5
    shutil.rmtree(four / "checkpoints" / "step_00000006")
    run(torchrun(2, scripts["train"], str(config), "train.parallel=fsdp", "--out", str(four), "--resume"))
    assert [r["step"] for r in read_metrics(four)] == list(range(1, 7))
    assert max(abs(x - y) for x, y in zip(losses(four), losses(straight))) < 1e-5


def test_an_fsdp_checkpoint_resumes_on_a_pipeline(corpus, scripts, fsdp2_straight, tmp_path):
    """FSDP 2 → PP 2 (1F1B, one layer per stage): DCP reshards the FSDP shards onto the stages' own layers."""
    config, straight = fsdp2_straight
    moved = tmp_path / "moved"
    shutil.copytree(straight, moved)
    shutil.rmtree(moved / "checkpoints" / "step_00000006")
    (moved / ".lock").unlink(missing_ok=True)
    run(torchrun(2, scripts["train"], str(config), "train.parallel.pp=2", "--out", str(moved), "--resume"))
    assert [r["step"] for r in read_metrics(moved)] == list(range(1, 7))
    assert max(abs(x - y) for x, y in zip(losses(moved), losses(straight))) < 1e-5
    resume = [r for r in read_metrics(moved, "event") if r["event"] == "resume"]
    assert resume[0]["step"] == 3


# ---- 3. every layout checkpoints without a gather, and resumes onto any other ----


def _resumed_at_3(run_dir: Path) -> None:
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 7))
    assert [r["step"] for r in read_metrics(run_dir, "event") if r["event"] == "resume"] == [3]


def _close(a: Path, b: Path, tol: float) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 6 and max(abs(x - y) for x, y in zip(la, lb)) < tol, (la, lb)


@pytest.fixture(scope="module")
def across_layouts(corpus, scripts, fsdp2_straight, tmp_path_factory) -> dict[str, Path]:
    """ONE 2-rank launch, gathering and ZeRO-1 consolidation forbidden: DDP + ZeRO-1 for 6 steps, then its step-3
    checkpoint resumed on ZeRO-1, PP 2, FSDP 2 and plain DDP; a 1-process run's step 3 resumed on FSDP 2 and on
    ZeRO-1 (streamed); the FSDP run's step 3 resumed on ZeRO-1."""
    from skyloom.train.trainer import Trainer

    root = tmp_path_factory.mktemp("layouts")
    config, fsdp = fsdp2_straight
    Trainer(build_run_config(run_config_from(config)), root / "single").fit()
    runs = {name: root / name for name in ("zero1", "zero1_on_zero1", "zero1_on_pp", "zero1_on_fsdp", "zero1_on_ddp")}
    runs.update({name: root / name for name in ("single", "single_on_fsdp", "single_on_zero1", "fsdp_on_zero1")})
    runs["fsdp"] = fsdp
    sessions = [{"train": str(runs["zero1"]), "overrides": [], "resume": False}]
    for name, source, layout in (
        ("zero1_on_zero1", "zero1", []),
        ("zero1_on_pp", "zero1", ["train.parallel.pp=2"]),
        ("zero1_on_fsdp", "zero1", ["train.parallel=fsdp"]),
        ("zero1_on_ddp", "zero1", ["train.parallel.zero1=false"]),
        ("single_on_fsdp", "single", ["train.parallel=fsdp"]),
        ("single_on_zero1", "single", []),
        ("fsdp_on_zero1", "fsdp", []),
    ):
        sessions.append({"copy": [str(runs[source]), str(runs[name])]})
        sessions.append({"train": str(runs[name]), "overrides": layout, "resume": True})
    run(torchrun(2, scripts["sessions"], str(config), json.dumps(sessions)))
    return runs


def test_a_zero1_checkpoint_is_written_by_each_owner_and_resumes_bit_exactly(across_layouts, tmp_path):
    runs = across_layouts
    path = runs["zero1"] / "checkpoints" / "step_00000006"
    assert not any((path / f).exists() for f in ("model.safetensors", "optimizer.safetensors", "optimizer.json"))
    files = json.loads((path / "manifest.json").read_text())["files"]
    assert any(f.startswith("dcp/__0_") for f in files) and any(f.startswith("dcp/__1_") for f in files)
    # one key space: every parameter's Adam moments once, under its name; the replicated weights written once
    from torch.distributed.checkpoint import FileSystemReader

    saved = FileSystemReader(str(path / "dcp")).read_metadata().state_dict_metadata
    model = skyloom.load_model(path)  # streamed out of the shards
    names = [n for n, _ in model.named_parameters()]
    for kind in ("exp_avg", "exp_avg_sq", "step"):
        assert {k for k in saved if k.startswith("optim.state.") and k.endswith("." + kind)} == {
            f"optim.state.{n}.{kind}" for n in names
        }
    n_floats = sum(p.numel() for p in model.parameters())
    written = sum(f.stat().st_size for f in (path / "dcp").glob("*.distcp"))
    assert written < 1.25 * 3 * 4 * n_floats  # weights + 2 moments, fp32, each once (DDP's 2 replicas: ≥ 4×)
    assert main(["export", "hf", str(path), str(tmp_path / "hf")]) == 0
    assert torch.equal(load_file(str(tmp_path / "hf" / "model.safetensors"))["model.norm.weight"], model.norm.weight)

    _resumed_at_3(runs["zero1_on_zero1"])
    _close(runs["zero1_on_zero1"], runs["zero1"], 1e-6)


def test_a_zero1_checkpoint_resumes_on_a_pipeline_on_fsdp_and_on_plain_ddp(across_layouts):
    for name in ("zero1_on_pp", "zero1_on_fsdp", "zero1_on_ddp"):
        _resumed_at_3(across_layouts[name])
        _close(across_layouts[name], across_layouts["zero1"], 1e-5)


def test_a_single_process_checkpoint_streams_into_fsdp_and_zero1_and_an_fsdp_one_into_zero1(across_layouts):
    for name in ("single_on_fsdp", "single_on_zero1"):
        _resumed_at_3(across_layouts[name])
        _close(across_layouts[name], across_layouts["single"], 1e-5)
    _resumed_at_3(across_layouts["fsdp_on_zero1"])
    _close(across_layouts["fsdp_on_zero1"], across_layouts["fsdp"], 1e-5)


def test_a_single_process_optimizer_file_streams_by_parameter_name(across_layouts, tmp_path):
    """`stream_optimizer` maps optimizer.safetensors' index keys to names; a file without names is refused."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from skyloom.model.manifest import CheckpointError
    from skyloom.train import checkpointing as ckpt
    from skyloom.train.optim import LAYOUT_KEYS
    from skyloom.train.trainer import Trainer

    source = across_layouts["single"] / "checkpoints" / "step_00000006"
    trainer = Trainer(build_run_config(run_config_from(across_layouts["single"] / "config.yaml")), tmp_path / "t")
    flat = get_optimizer_state_dict(
        trainer.model, trainer.optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True)
    )
    ckpt.stream_optimizer(source, flat, keep=LAYOUT_KEYS)
    saved, meta = load_file(str(source / "optimizer.safetensors")), json.loads((source / "optimizer.json").read_text())
    i = meta["param_names"].index("layers.1.ffn.w2.weight")
    assert torch.equal(flat["state.layers.1.ffn.w2.weight.exp_avg_sq"], saved[f"{i}.exp_avg_sq"])
    assert float(flat["state.layers.1.ffn.w2.weight.step"]) == 6.0
    legacy = tmp_path / "legacy"
    shutil.copytree(source, legacy)
    del meta["param_names"]
    (legacy / "optimizer.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="param_names"):
        ckpt.stream_optimizer(legacy, flat, keep=LAYOUT_KEYS)


def test_a_single_process_file_with_other_weights_is_refused_before_streaming(tmp_path):
    """Each rank streams only its own tensors, so the whole file's names are checked first, naming the file."""
    from safetensors.torch import save_file

    from skyloom.train import checkpointing as ckpt

    file = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(2), "extra": torch.zeros(1)}, str(file))
    ckpt.check_weight_names(file, {"a", "extra"})
    with pytest.raises(CheckpointError, match=r"model.safetensors: weights do not match.*unexpected \['extra'\]"):
        ckpt.check_weight_names(file, {"a"})
    with pytest.raises(CheckpointError, match=r"missing \['b'\]"):
        ckpt.check_weight_names(file, {"a", "b", "extra"})
    ckpt.check_weight_names(file, {"a", "extra", "output.weight"}, frozenset({"output.weight"}))
