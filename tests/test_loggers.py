"""Loggers: W&B (offline) and TensorBoard get train and validation metrics and the resolved config, a user's logger
(a callback from YAML) gets the same, a --resume continues both without steps going backwards, and the console
prints plain step lines wherever a progress bar would not show.

One tiny run in two sessions (the first ends at step 3, after its checkpoint at step 2) is shared by the tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import sys
import textwrap
from pathlib import Path

import pytest

from tests.train_helpers import (  # noqa: F401  (single_thread: a fixture)
    TINY_MODEL,
    random_token_corpus,
    read_metrics,
    single_thread,
    write_config,
)

USER_LOGGER = '''
import json

from skyloom.config import to_dict
from skyloom.train.checkpointer import TrainingAborted
from skyloom.train.callbacks import Callback


class JsonLogger(Callback):
    """A user's own logger: hyper-parameters, train lines and validation results to a JSON-lines file (rank 0).
    `crash_at` ends the first session after that step is logged, as a killed job would (the flag file remembers)."""

    def __init__(self, out, crash_at=None, flag=None):
        self.out, self.crash_at, self.flag = out, crash_at, flag

    def _write(self, trainer, record):
        if trainer.env.is_main:
            with open(self.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\\n")

    def on_train_start(self, trainer):
        self._write(trainer, {"kind": "hparams", "config": to_dict(trainer.cfg)})

    def on_step_end(self, trainer, metrics):
        self._write(trainer, {"kind": "train", "step": metrics["step"], "loss": metrics["loss"]})
        if metrics["step"] == self.crash_at and not open(self.flag, "a+").tell():
            open(self.flag, "w").write("crashed")
            raise TrainingAborted("simulated crash")

    def on_validation(self, trainer, results):
        self._write(trainer, {"kind": "val", "step": trainer.step, **{k: v["loss"] for k, v in results.items()}})
'''


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, single_thread) -> dict:
    """Session 1: steps 1–3 (validation at 0 and 2, checkpoint at 2, a crash after step 3); session 2 (`--resume`):
    step 3 replayed, 4–5, validation at 4 and 5. Returns the run dir, the user logger's file and both consoles."""
    from skyloom.cli import main

    root = tmp_path_factory.mktemp("loggers")
    corpus = random_token_corpus(root / "tokens", n_docs=120, seed=3)
    (root / "userlog.py").write_text(textwrap.dedent(USER_LOGGER), encoding="utf-8")
    out, run_dir = root / "userlog.jsonl", root / "run"
    cfg = {
        "model": dict(TINY_MODEL),
        "data": {"seq_len": 64, "seed": 0, "sources": {"rand": {"path": str(corpus)}}},
        "train": {
            "global_batch_tokens": 512,
            "micro_batch_size": 8,
            "max_steps": 5,
            "lr": 3e-3,
            "warmup_steps": 1,
            "log_every": 2,
            "tensorboard": True,
            "wandb": {"project": "skyloom-tests", "name": "tiny", "mode": "offline"},
        },
        "validation": {"every": 2, "at_start": True, "batch_size": 8, "sets": {"held": {"path": str(corpus)}}},
        "checkpoint": {"every": 2, "keep_last": 5},
        "callbacks": {
            f"{root / 'userlog.py'}:JsonLogger": {"out": str(out), "crash_at": 3, "flag": str(root / "crashed")}
        },
    }
    config = write_config(cfg, root / "run.yaml")
    consoles = []
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(root)
        for args in (["--out", str(run_dir)], ["--out", str(run_dir), "--resume"]):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                rc = main(["train", str(config), *args])
            consoles.append(buffer.getvalue())
            assert rc == (0 if "--resume" in args else 2), buffer.getvalue()[-3000:]
    return {"run_dir": run_dir, "user_log": out, "consoles": consoles}


def _expected(run_dir: Path) -> tuple[dict[int, float], dict[int, float]]:
    """{step: loss} of the train and validation lines metrics.jsonl holds after the resume."""
    train = {r["step"]: r["loss"] for r in read_metrics(run_dir, "train")}
    val = {r["step"]: r["loss"] for r in read_metrics(run_dir, "val")}
    assert sorted(train) == [1, 2, 3, 4, 5] and sorted(val) == [0, 2, 4, 5]
    return train, val


def wandb_records(path: Path):
    """The records of a `.wandb` file, decoded with wandb's own protobuf schema. The file is a LevelDB-style log
    (a 7-byte ':W&B' header, then 32 KiB blocks of chunks with a 7-byte crc/length/type header); wandb ships no
    Python reader for it."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_holds_train_val_and_config_and_resume_continues_the_same_run(logged_run):
    run_dir = logged_run["run_dir"]
    train, val = _expected(run_dir)
    sessions = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(sessions) == 2, sessions
    run_ids, steps, history, config = set(), [], {}, {}
    for session in sessions:
        for record in wandb_records(next(session.glob("run-*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run_ids.add(record.run.run_id)
                assert record.run.project == "skyloom-tests" and record.run.display_name == "tiny"
            elif kind == "config":
                config.update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == "history":
                items = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item
                }
                steps.append(record.history.step.num)
                history[record.history.step.num] = items
    assert len(run_ids) == 1  # the resume continued the first session's W&B run
    assert run_ids == {json.loads((run_dir / "wandb" / "skyloom_run.json").read_text())["id"]}
    assert steps == sorted(set(steps)) == [0, 1, 2, 3, 4, 5]  # step 3, replayed, is not sent again
    assert {s: history[s]["train/loss"] for s in train} == pytest.approx(train, rel=1e-12)
    assert {s: history[s]["val/held/loss"] for s in val} == pytest.approx(val, rel=1e-12)
    assert "val/held/ppl" in history[4] and "train/grad_norm" in history[5]
    saved = __import__("yaml").safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert config["train"] == json.loads(json.dumps(saved["train"]))  # the resolved config, as the run dir saves it
    assert config["model"]["dim"] == TINY_MODEL["dim"]


def test_tensorboard_holds_train_val_scalars_and_hparams_without_replayed_steps(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = logged_run["run_dir"]
    train, val = _expected(run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tb_train = {e.step: e.value for e in events.Scalars("train/loss")}
    tb_val = {e.step: e.value for e in events.Scalars("val/held/loss")}
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4, 5]  # the replayed step 3 shows once
    assert tb_train == pytest.approx(train, rel=1e-6) and tb_val == pytest.approx(val, rel=1e-6)
    assert "val/held/ppl" in events.Tags()["scalars"]
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(3e-3)
    assert hparams["train.wandb.mode"].string_value == "offline"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"train/loss", "val/held/loss"}


def test_a_user_logger_callback_gets_hparams_train_and_validation(logged_run):
    run_dir = logged_run["run_dir"]
    train, val = _expected(run_dir)
    lines = [json.loads(x) for x in logged_run["user_log"].read_text(encoding="utf-8").splitlines()]
    hparams = [r["config"] for r in lines if r["kind"] == "hparams"]
    assert len(hparams) == 2 and hparams[-1]["train"]["wandb"]["mode"] == "offline"
    assert {r["step"]: r["loss"] for r in lines if r["kind"] == "train"} == train
    assert {r["step"]: r["held"] for r in lines if r["kind"] == "val"} == val


def test_console_prints_plain_step_and_validation_lines_when_not_a_terminal(logged_run):
    first, second = logged_run["consoles"]
    assert "step      2/5" in first and "validation @ step 2: held" in first
    assert "step      4/5" in second and "step      5/5" in second and "validation @ step 5: held" in second
    assert "\r" not in first + second and "it/s" not in first + second


class _Terminal(io.StringIO):
    """A stand-in stderr that says it is a terminal."""

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        return 2


def _train_lines(logger, steps: int) -> None:
    for step in range(1, steps + 1):
        logger.train({"step": step, "loss": 1.0, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_sec": 100.0})


@pytest.mark.parametrize("columns", [0, 80])
def test_a_zero_width_terminal_gets_plain_step_lines(tmp_path, monkeypatch, capsys, columns):
    from skyloom.train import metrics

    monkeypatch.setattr(sys, "stderr", _Terminal())
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((columns, 24)))
    logger = metrics.MetricsLogger(tmp_path, total_steps=4, log_every=2)
    _train_lines(logger, 4)
    logger.close()
    out = capsys.readouterr().out
    if columns == 0:  # tqdm draws nothing at width 0: the plain lines stand in
        assert logger.bar is None and "step      2/4" in out and "step      4/4" in out
    else:  # a real terminal keeps its progress bar
        assert logger.bar is not None and "step      2/4" not in out


def test_wandb_settings_are_checked_before_any_work(monkeypatch):
    from skyloom.config import ConfigError, build
    from skyloom.train import config as train_config

    def train(wandb):
        return build(train_config.TrainConfig, {"max_steps": 1, "wandb": wandb}, prefix="train")

    with pytest.raises(ConfigError, match=r"train\.wandb\.mode.*did you mean 'offline'"):
        train({"mode": "ofline"})
    with pytest.raises(ConfigError, match=r"train\.wandb\.projet.*did you mean 'train\.wandb\.project'"):
        train({"projet": "x"})
    assert train(None).wandb is None and train({"mode": "offline"}).wandb.project == "skyloom"
    monkeypatch.setattr(train_config, "_package_missing", lambda name: True)
    with pytest.raises(ConfigError, match=r"train\.wandb.*pip install 'skyloom\[wandb\]'"):
        train({"mode": "offline"})
    assert train({"mode": "disabled"}).wandb.mode == "disabled"  # nothing to import


def test_wandb_online_without_a_login_is_a_clear_error(tmp_path, monkeypatch):
    from skyloom.config import ConfigError
    from skyloom.train.config import WandbConfig
    from skyloom.train.loggers import WandbLogger

    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, no saved login
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    with pytest.raises(ConfigError, match=r"train\.wandb.*wandb login.*mode: offline"):
        WandbLogger(tmp_path, WandbConfig(mode="online"), resume=False)
