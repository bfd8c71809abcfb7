"""Nothing lost: the run-directory lock, verified checkpoints in every loader, safe pruning and resume fallbacks.

Everything runs on a synthetic token corpus (random ids, no tokenizer) and a ~200k-parameter model, so a
12-step run takes a second; only the lock and kill -9 tests start `skyloom train` subprocesses.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import skyloom
from skyloom.cli import main
from skyloom.model.manifest import CheckpointError, write_manifest
from skyloom.train import checkpointing as ckpt
from skyloom.train.callbacks import Callback
from skyloom.train.trainer import Trainer
from tests.train_helpers import (  # noqa: F401  (single_thread: a fixture)
    REPO,
    TINY_MODEL,
    build_run_config,
    cli_env,
    random_token_corpus,
    read_metrics,
    single_thread,
    skyloom_cmd,
    write_config,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Token shards of random documents (ids < 1024): enough for a few hundred tiny steps."""
    return random_token_corpus(tmp_path_factory.mktemp("fault_corpus") / "tokens", n_docs=600, seed=0)


def run_config(corpus: Path, **sections) -> dict:
    cfg = {
        "model": dict(TINY_MODEL),
        "data": {"seq_len": 64, "seed": 0, "sources": {"random": {"path": str(corpus)}}},
        "train": {
            "global_batch_tokens": 512,
            "micro_batch_size": 4,
            "max_steps": 12,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "log_every": 1000,
        },
        "validation": {"every": 0, "at_start": False, "sets": {}},
        "checkpoint": {"every": 4, "keep_last": 3},
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


@pytest.fixture(scope="module")
def straight(single_thread, corpus, tmp_path_factory) -> Path:
    """The uninterrupted 12-step run every faulty run must end up equal to (one thread, as the tests)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    Trainer(build_run_config(run_config(corpus)), run_dir).fit()
    return run_dir


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def flip_one_bit(file: Path, tensor: str = "norm.weight") -> None:
    """Flip the lowest bit of `tensor`'s first byte (same size, one ulp off: only a checksum notices)."""
    data = bytearray(file.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start = json.loads(data[8 : 8 + header_len])[tensor]["data_offsets"][0]
    data[8 + header_len + start] ^= 0x01
    file.write_bytes(bytes(data))


def events(run_dir: Path, name: str) -> list[dict]:
    return [r for r in read_metrics(run_dir, "event") if r["event"] == name]


class StopAt(Callback):
    """What SIGTERM does (seen at the next step's all-reduce): end the session at `step` with a checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def post_step(self, trainer, metrics) -> None:
        if trainer.step == self.step - 1:
            trainer.stop_signal = signal.SIGTERM


# ---- pruning ----


def test_a_corrupt_newer_checkpoint_never_makes_pruning_delete_the_new_one(corpus, straight, tmp_path):
    cfg = run_config(corpus)
    Trainer(build_run_config(cfg), tmp_path / "run").fit()
    root = tmp_path / "run" / "checkpoints"
    flip_one_bit(root / "step_00000012" / "model.safetensors")

    # resume (falls back to step 8), keep only the last checkpoint, and stop by "SIGTERM" at step 10
    cfg["checkpoint"] = {"every": 2, "keep_last": 1}
    session = Trainer(build_run_config(cfg), tmp_path / "run", resume=True, callbacks=[StopAt(10)])
    assert session.step == 8
    assert session.fit() == "interrupted"
    assert ckpt.verify(root / "step_00000010") is None  # the SIGTERM checkpoint survived its own pruning
    assert not (root / "step_00000008").exists()  # the older intact one is what keep_last=1 removes
    assert (root / "step_00000012").is_dir()  # the broken one is left for inspection

    again = Trainer(build_run_config(cfg), tmp_path / "run", resume=True)
    assert again.step == 10
    again.fit()
    assert_same_weights(straight / "checkpoints" / "step_00000012", root / "step_00000012")


# ---- resume fallbacks ----


def test_a_re_signed_unreadable_checkpoint_makes_resume_fall_back_to_the_older_one(corpus, straight, tmp_path):
    cfg = build_run_config(run_config(corpus))
    Trainer(cfg, tmp_path / "run").fit()
    newest = tmp_path / "run" / "checkpoints" / "step_00000012"
    (newest / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    (newest / "manifest.json").unlink()
    write_manifest(newest, {"step": 12, "tokens": 0})  # files changed AND the manifest rewritten to match
    assert ckpt.verify(newest) is None

    resumed = Trainer(cfg, tmp_path / "run", resume=True)
    assert resumed.step == 8
    [(path, reason)] = resumed.checkpointer.broken
    assert path == newest and "cannot be read" in reason and "model.safetensors" in reason
    resumed.fit()
    assert_same_weights(straight / "checkpoints" / "step_00000012", newest)


def test_a_resume_that_finds_nothing_intact_truncates_the_metrics(corpus, tmp_path, capsys):
    cfg = build_run_config(run_config(corpus, train={"max_steps": 6}, checkpoint={"every": 3}))
    Trainer(cfg, tmp_path / "run").fit()
    for step in (3, 6):
        flip_one_bit(tmp_path / "run" / "checkpoints" / f"step_{step:08d}" / "model.safetensors")

    resumed = Trainer(cfg, tmp_path / "run", resume=True)
    assert resumed.step == 0
    resumed.fit()
    assert [r["step"] for r in read_metrics(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]  # not 12 lines
    [event] = events(tmp_path / "run", "resume_from_scratch")
    assert event["replayed_lines_dropped"] == 6 and len(event["broken_checkpoints"]) == 2
    out = capsys.readouterr().out
    assert "no intact checkpoint" in out and "dropped 6 train/validation line(s)" in out


def test_a_changed_setting_on_resume_is_recorded(corpus, tmp_path, capsys):
    cfg = run_config(corpus, train={"max_steps": 4})
    config = write_config(cfg, tmp_path / "run.yaml")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    assert main(["train", str(config), "train.grad_clip=0.5", "--out", str(tmp_path / "run"), "--resume"]) == 0
    [event] = events(tmp_path / "run", "config_changed")
    assert event["changes"] == {"train.grad_clip": {"old": 1.0, "new": 0.5}}
    assert "train.grad_clip: 1.0 → 0.5" in capsys.readouterr().out


# ---- the run-directory lock ----

HOLD_LOCK = (
    "import sys, time; from skyloom.train.run_lock import RunLock; "
    "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)"
)


def test_a_second_run_on_a_locked_directory_is_refused_and_a_stale_lock_taken_over(corpus, tmp_path, capsys):
    config = write_config(run_config(corpus, train={"max_steps": 2}), tmp_path / "run.yaml")
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run_dir)]) == 0
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        for extra in (["--resume"], ["--overwrite"], []):
            assert main(["train", str(config), "--out", str(run_dir), *extra]) == 2
            err = capsys.readouterr().err
            assert f"pid {holder.pid} on host {socket.gethostname()}" in err and "skyloom: error:" in err, err
        after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
        assert after == before and sorted(os.listdir(run_dir / "checkpoints")) == ["step_00000002"]
    finally:
        holder.kill()  # kill -9: the kernel drops the flock, the file still names the dead holder
        holder.wait()
    assert main(["train", str(config), "--out", str(run_dir), "--resume"]) == 0
    assert f"stale lock of {run_dir}: its holder, pid {holder.pid}" in capsys.readouterr().err
    assert (run_dir / ".lock").read_text() == ""  # released cleanly: the next run takes it without a note


HOLD_LOCKS = (
    "import sys, time; from skyloom.train.run_lock import RunLock; "
    "locks = [RunLock(d) for d in sys.argv[1:]]; [lock.acquire() for lock in locks]; "
    "print('locked', flush=True); time.sleep(120)"
)


def test_sft_skymath_and_demo_take_the_run_directory_lock_too(tmp_path, capsys):
    from tests.test_input_errors import tiny_sft_base, tiny_sft_config

    config = tiny_sft_config(tiny_sft_base(tmp_path / "base"), tmp_path, seq_len=32)
    skymath = write_config(
        {
            "base": str(tmp_path / "base"),
            "train_data": str(tmp_path / "qa.jsonl"),
            "sft": {"train": {"max_steps": 1, "device": "cpu"}},
        },
        tmp_path / "skymath.yaml",
    )
    sft_dir, skymath_dir, demo_dir = tmp_path / "sft", tmp_path / "skymath", tmp_path / "demo"
    for run_dir, earlier in ((sft_dir, "metrics.jsonl"), (skymath_dir, "rounds.jsonl"), (demo_dir, "demo.json")):
        run_dir.mkdir()
        (run_dir / earlier).write_text("{}\n")  # an earlier run's file: nothing may touch it
    before = {p: p.read_bytes() for p in tmp_path.glob("*/*") if p.name != ".lock" and p.is_file()}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCKS, str(sft_dir), str(skymath_dir), str(demo_dir)],
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        for argv in (
            ["sft", config, "--out", sft_dir],
            ["sft", config, "--out", sft_dir, "--overwrite"],
            ["sft", config, "--out", sft_dir, "--resume"],
            ["skymath", skymath, "--out", skymath_dir, "--overwrite"],
            ["demo", "--tiny", "--out", demo_dir, "--until", "corpus"],
        ):
            assert main([str(a) for a in argv]) == 2, argv
            err = capsys.readouterr().err
            assert f"pid {holder.pid} on host {socket.gethostname()}" in err and "skyloom: error:" in err, (argv, err)
        assert {p: p.read_bytes() for p in tmp_path.glob("*/*") if p.name != ".lock" and p.is_file()} == before
    finally:
        holder.kill()  # the lock files still name the dead holder: stale
        holder.wait()
    # a stale lock is taken over with a note; --overwrite empties the directory around the lock file
    assert main(["sft", str(config), "--out", str(sft_dir), "--overwrite"]) == 0
    assert f"stale lock of {sft_dir}: its holder, pid {holder.pid}" in capsys.readouterr().err
    assert (sft_dir / "metrics.jsonl").read_text() != "{}\n" and (sft_dir / ".lock").read_text() == ""


def test_kill_9_during_a_checkpoint_write_then_resume_gives_the_same_weights(corpus, straight, tmp_path, capsys):
    cfg = run_config(corpus, checkpoint={"every": 1, "keep_last": 2})
    config = write_config(cfg, tmp_path / "run.yaml")
    run_dir = tmp_path / "run"
    root = run_dir / "checkpoints"
    target = random.randint(2, 8)  # any step: the result must not depend on where the kill lands
    proc = subprocess.Popen(
        skyloom_cmd("train", str(config), "--out", str(run_dir)),
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while True:  # kill -9 the moment a checkpoint of step >= target is being written (its .tmp- dir exists)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline
        names = os.listdir(root) if root.is_dir() else []
        writing = [int(n.rsplit("_", 1)[1]) for n in names if n.startswith(".tmp-step_")]
        missed = f"step_{target + 2:08d}" in names  # a loaded machine may miss every write window: kill anyway
        if (writing and writing[0] >= target) or missed:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)  # leave the (shared) cores to the run
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert main(["train", str(config), "--out", str(run_dir), "--resume"]) == 0
    out = capsys.readouterr()
    assert "resumed from" in out.out and "stale lock" in out.err, f"killed at step {target}"
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 13))
    assert [r["loss"] for r in read_metrics(run_dir)] == [r["loss"] for r in read_metrics(straight)]
    assert_same_weights(straight / "checkpoints" / "step_00000012", root / "step_00000012")


# ---- disk full ----


def _assert_clean_abort(run_dir: Path, capsys, step: int) -> None:
    err = capsys.readouterr().err
    assert f"skyloom: error: cannot write the checkpoint of step {step}" in err and "Traceback" not in err, err
    [abort] = events(run_dir, "abort")
    assert abort["step"] == step and "checkpoint" in abort["reason"]
    root = run_dir / "checkpoints"
    assert not [n for n in os.listdir(root) if n.startswith(".tmp-")]
    assert [s for s, _ in ckpt.list_checkpoints(root)] == list(range(1, step))
    assert all(ckpt.verify(p) is None for _, p in ckpt.list_checkpoints(root))


def test_disk_full_on_a_small_tmpfs_aborts_cleanly_keeping_earlier_checkpoints(corpus, tmp_path, capsys):
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    # ~2.9 MB per checkpoint (weights, AdamW state): the third does not fit
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); the simulated "
            "ENOSPC test covers the same path"
        )
    try:
        cfg = run_config(corpus, checkpoint={"every": 1, "keep_last": 100})
        config = write_config(cfg, tmp_path / "run.yaml")
        assert main(["train", str(config), "--out", str(mount_point / "run")]) == 2
        _assert_clean_abort(mount_point / "run", capsys, 3)
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_disk_full_simulated_aborts_cleanly_keeping_earlier_checkpoints(corpus, tmp_path, capsys, monkeypatch):
    import errno

    from skyloom.train import checkpointer as trainer_module

    real_save = trainer_module.save_file

    def save_file(tensors, filename, metadata=None):
        if "step_00000003" in filename and filename.endswith("rng.safetensors"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(trainer_module, "save_file", save_file)
    config = write_config(run_config(corpus, checkpoint={"every": 1}), tmp_path / "run.yaml")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    _assert_clean_abort(tmp_path / "run", capsys, 3)


# ---- every loader verifies ----


@pytest.fixture(scope="module")
def flipped(tmp_path_factory) -> tuple[Path, Path]:
    """A model checkpoint (with tokenizer and manifest) whose norm.weight has one bit flipped, and a text file."""
    from skyloom.config import build
    from skyloom.model.checkpoint import save_model
    from skyloom.model.config import ModelConfig
    from skyloom.model.transformer import Transformer
    from skyloom.train.prepare import train_bpe

    root = tmp_path_factory.mktemp("flipped")
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "green", "cloud", "north"]
    rng = np.random.default_rng(1)
    text = "\n".join(" ".join(rng.choice(words, 12)) + "." for _ in range(300))
    (root / "text.txt").write_text(text, encoding="utf-8")
    tok_dir = train_bpe([root / "text.txt"], root / "tokenizer", vocab_size=300)
    torch.manual_seed(0)
    ckpt_dir = save_model(Transformer(build(ModelConfig, TINY_MODEL, prefix="model")), root / "ckpt")
    for f in tok_dir.iterdir():
        (ckpt_dir / f.name).write_bytes(f.read_bytes())
    write_manifest(ckpt_dir, {"step": 0, "tokens": 0})
    flip_one_bit(ckpt_dir / "model.safetensors")
    return ckpt_dir, root / "text.txt"


def test_load_model_refuses_a_flipped_bit_and_no_verify_loads_it(flipped):
    ckpt_dir, _ = flipped
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its sha256"):
        skyloom.load_model(ckpt_dir)
    assert skyloom.load_model(ckpt_dir, verify=False).config.dim == TINY_MODEL["dim"]


def test_eval_ppl_refuses_a_flipped_bit_and_no_verify_loads_it(flipped, capsys):
    ckpt_dir, text = flipped
    args = ["eval", "ppl", "--model", str(ckpt_dir), "--data", f"t={text}", "--device", "cpu", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "skyloom: error:" in err and "model.safetensors does not match its sha256" in err
    assert main([*args, "--no-verify"]) == 0


def test_export_hf_refuses_a_flipped_bit_and_no_verify_exports_it(flipped, tmp_path, capsys):
    ckpt_dir, _ = flipped
    assert main(["export", "hf", str(ckpt_dir), str(tmp_path / "hf")]) == 2
    assert "model.safetensors does not match its sha256" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()  # nothing laundered into a directory without a manifest
    assert main(["export", "hf", str(ckpt_dir), str(tmp_path / "hf"), "--no-verify"]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()


def test_init_from_and_upcycle_refuse_a_flipped_bit_and_no_verify_loads_it(flipped, corpus, tmp_path):
    from skyloom.model.upcycle import upcycle_checkpoint

    ckpt_dir, _ = flipped
    cfg = build_run_config(run_config(corpus, train={"init_from": str(ckpt_dir)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its sha256"):
        Trainer(cfg, tmp_path / "run")
    started = Trainer(cfg, tmp_path / "run2", verify=False)
    assert torch.equal(started.raw_model.norm.weight.detach(), weights(ckpt_dir)["norm.weight"])
    moe = {"n_experts": 2, "top_k": 1}
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        upcycle_checkpoint(ckpt_dir, tmp_path / "moe", moe)
    upcycle_checkpoint(ckpt_dir, tmp_path / "moe", moe, verify=False)


def test_upcycle_command_refuses_a_flipped_bit_and_no_verify_upcycles_it(flipped, tmp_path, capsys):
    ckpt_dir, _ = flipped
    argv = ["upcycle", str(ckpt_dir), "--out", str(tmp_path / "moe"), "--experts", "2", "--top-k", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "model.safetensors does not match its sha256" in err and "--no-verify" in err
    assert not (tmp_path / "moe").exists()
    assert main([*argv, "--no-verify"]) == 0
    assert skyloom.load_model(tmp_path / "moe").config.moe.n_experts == 2


def test_a_directory_without_a_manifest_loads_as_is(flipped, tmp_path):
    from skyloom.model.checkpoint import save_model

    ckpt_dir, _ = flipped
    model = skyloom.load_model(ckpt_dir, verify=False)
    plain = save_model(model, tmp_path / "plain")  # like `model init` / `import hf` output: nothing to verify
    assert not (plain / "manifest.json").exists()
    assert skyloom.load_model(plain).config == model.config


def test_unreadable_weights_are_named_not_a_raw_safetensors_error(tmp_path):
    from skyloom.config import build
    from skyloom.model.checkpoint import save_model
    from skyloom.model.config import ModelConfig
    from skyloom.model.transformer import Transformer

    out = save_model(Transformer(build(ModelConfig, TINY_MODEL, prefix="model")), tmp_path / "m")
    (out / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read it as safetensors"):
        skyloom.load_model(out)


def test_dcp_metadata_is_never_unpickled_before_the_manifest_verifies_it(corpus, tmp_path):
    """An FSDP checkpoint's dcp/.metadata is a pickle: a tampered one must be refused before it is opened."""
    cfg = build_run_config(run_config(corpus, train={"max_steps": 4}))
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    path = tmp_path / "run" / "checkpoints" / "step_00000004"
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import pickle

    (path / "dcp").mkdir()
    (path / "dcp" / ".metadata").write_bytes(pickle.dumps(Payload()))  # not in the manifest, or not matching it
    with pytest.raises(CheckpointError, match=r"dcp/.metadata is a pickle"):
        trainer.checkpointer.load_sharded(path, optimizer=False)
    assert not marker.exists()
    (path / "manifest.json").unlink()  # no manifest at all: nothing vouches for the pickle either
    with pytest.raises(CheckpointError, match="no manifest.json"):
        trainer.checkpointer.load_sharded(path, optimizer=False)
    assert not marker.exists()
