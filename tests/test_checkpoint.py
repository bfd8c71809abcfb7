"""Checkpoints: a killed run resumes bit-identically; broken checkpoints are detected and skipped; retention."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from skyloom.train import checkpointing as ckpt
from skyloom.train.trainer import Trainer
from tests.train_helpers import (  # noqa: F401
    REPO,
    build_run_config,
    cli_env,
    read_metrics,
    run,
    single_thread,
    skyloom_cmd,
    tiny_run_config,
    train_corpus,
    write_config,
)

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.data_free]


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def test_kill_9_and_resume_gives_identical_losses_and_weights(train_corpus, tmp_path):
    cfg = tiny_run_config(train_corpus, train={"max_steps": 40}, checkpoint={"every": 5, "keep_last": 2})
    config = write_config(cfg, tmp_path / "run.yaml")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(skyloom_cmd("train", str(config), "--out", str(straight)))

    proc = subprocess.Popen(
        skyloom_cmd("train", str(config), "--out", str(killed)),
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step_00000015").is_dir():
        assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up or save anything
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "checkpoints" / "step_00000040").exists()

    out = run(skyloom_cmd("train", str(config), "--out", str(killed), "--resume"))
    assert "resumed from" in out.stdout
    a = read_metrics(straight)
    b = read_metrics(killed)
    assert [r["step"] for r in b] == list(range(1, 41))
    assert [r["loss"] for r in b] == [r["loss"] for r in a]  # exactly equal, every step
    assert [r["grad_norm"] for r in b] == [r["grad_norm"] for r in a]
    _assert_same_weights(straight / "checkpoints" / "step_00000040", killed / "checkpoints" / "step_00000040")
    va, vb = read_metrics(straight, "val"), read_metrics(killed, "val")
    assert [r["loss"] for r in va] == [r["loss"] for r in vb]
    resume = [r for r in read_metrics(killed, "event") if r["event"] == "resume"]
    assert len(resume) == 1 and resume[0]["step"] >= 15

    # SIGTERM (what Slurm and torchrun send): the current step finishes, a checkpoint is written, exit 143
    termed = tmp_path / "termed"
    proc = subprocess.Popen(
        skyloom_cmd("train", str(config), "--out", str(termed)),
        cwd=REPO,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while not (termed / "checkpoints" / "step_00000010").is_dir():
        assert proc.poll() is None and time.time() < deadline + 120
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, output
    stopped = [r for r in read_metrics(termed, "event") if r["event"] == "interrupted"]
    assert len(stopped) == 1 and stopped[0]["signal"] == "SIGTERM"
    at = stopped[0]["step"]
    assert at < 40 and (termed / "checkpoints" / f"step_{at:08d}" / "manifest.json").is_file()
    run(skyloom_cmd("train", str(config), "--out", str(termed), "--resume"))
    assert [r["loss"] for r in read_metrics(termed)] == [r["loss"] for r in a]
    _assert_same_weights(straight / "checkpoints" / "step_00000040", termed / "checkpoints" / "step_00000040")


def test_broken_checkpoints_are_reported_and_skipped(train_corpus, tmp_path):
    cfg = build_run_config(tiny_run_config(train_corpus, train={"max_steps": 12}, checkpoint={"every": 4}))
    Trainer(cfg, tmp_path / "straight").fit()
    Trainer(cfg, tmp_path / "run").fit()
    root = tmp_path / "run" / "checkpoints"
    # step 12: truncated weights; step 8: same size, one byte flipped; a leftover temp dir from a crash
    w12 = root / "step_00000012" / "model.safetensors"
    w12.write_bytes(w12.read_bytes()[:-100])
    opt8 = root / "step_00000008" / "optimizer.safetensors"
    data = bytearray(opt8.read_bytes())
    data[-7] ^= 0xFF
    opt8.write_bytes(bytes(data))
    (root / ".tmp-step_00000013").mkdir()
    assert "truncated" in ckpt.verify(root / "step_00000012")
    assert "sha256" in ckpt.verify(root / "step_00000008")
    assert ckpt.verify(root / "step_00000004") is None
    found, broken = ckpt.latest_complete(root)
    assert found.name == "step_00000004" and [p.name for p, _ in broken] == ["step_00000012", "step_00000008"]

    resumed = Trainer(cfg, tmp_path / "run", resume=True)
    assert resumed.step == 4
    assert resumed.fit() == "finished"
    event = [r for r in read_metrics(tmp_path / "run", "event") if r["event"] == "resume"][0]
    assert [b["path"].rsplit("/", 1)[1] for b in event["broken_checkpoints"]] == ["step_00000012", "step_00000008"]
    _assert_same_weights(tmp_path / "straight/checkpoints/step_00000012", root / "step_00000012")
    assert ckpt.verify(root / "step_00000012") is None  # rewritten intact


def test_a_checkpoint_without_manifest_is_unfinished(tmp_path):
    d = tmp_path / "checkpoints" / "step_00000002"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"x")
    assert "no manifest" in ckpt.verify(d)
    assert ckpt.latest_complete(tmp_path / "checkpoints") == (None, [(d, ckpt.verify(d))])


def test_retention_keeps_last_k_and_every_mth(tmp_path):
    root = tmp_path / "checkpoints"
    for step in range(1, 11):
        tmp = ckpt.begin(root, step)
        (tmp / ckpt.TRAINER_STATE).write_text("{}")
        ckpt.commit(tmp, step, step * 10)
        ckpt.prune(root, keep_last=2, keep_every=4)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [4, 8, 9, 10]
    manifest = json.loads((root / "step_00000010" / "manifest.json").read_text())
    assert manifest["tokens"] == 100 and "trainer_state.json" in manifest["files"]


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    opt = torch.optim.AdamW(
        [
            {"params": [model[0].weight], "weight_decay": 0.1, "lr_scale": 1.0},
            {"params": [model[0].bias, *model[1].parameters()], "weight_decay": 0.0},
        ],
        lr=1e-3,
        betas=(0.9, 0.95),
    )
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    ckpt.optimizer_state_to_files(opt.state_dict(), tmp_path)
    back = ckpt.optimizer_state_from_files(tmp_path)
    ref = opt.state_dict()
    assert back["param_groups"] == ref["param_groups"]
    for idx, st in ref["state"].items():
        for key, value in st.items():
            assert torch.equal(back["state"][idx][key], value)
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))


def test_existing_run_is_not_overwritten_without_resume(train_corpus, tmp_path):
    from skyloom.cli import main

    config = write_config(tiny_run_config(train_corpus, train={"max_steps": 2}), tmp_path / "c.yaml")
    assert main(["train", str(config), "--out", str(tmp_path / "r")]) == 0
    assert main(["train", str(config), "--out", str(tmp_path / "r")]) == 2
    assert (tmp_path / "r" / "checkpoints" / "step_00000002").is_dir()
