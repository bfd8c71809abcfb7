"""Callbacks switched on from YAML: a user's own class in a .py file, bad names refused, state kept over resume."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from tests.train_helpers import (  # noqa: F401  (train_corpus: a fixture)
    build_run_config,
    read_metrics,
    tiny_run_config,
    train_corpus,
    write_config,
)

RECORDER = '''
import json
import signal

from skyloom.train.callbacks import Callback


class Recorder(Callback):
    """Writes what it receives to `out` (JSON lines) and counts the steps it saw (its checkpointed state)."""

    def __init__(self, out, tag="x"):
        self.out, self.tag, self.count = out, tag, 0

    def _write(self, record):
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({"tag": self.tag, **record}) + "\\n")

    def post_step(self, trainer, metrics):
        self.count += 1
        self._write({"kind": "train", "step": metrics["step"], "loss": metrics["loss"],
                     "tokens_per_sec": metrics.get("tokens_per_sec"), "count": self.count})

    def on_validation(self, trainer, results):
        self._write({"kind": "val", "step": trainer.step, "sets": {k: v["loss"] for k, v in results.items()}})

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


class StopAfter(Callback):
    """What SIGTERM does: the session ends after `step` with a checkpoint."""

    def __init__(self, step):
        self.step = step

    def post_step(self, trainer, metrics):
        if trainer.step == self.step - 1:
            trainer.stop_signal = signal.SIGTERM
'''


def _user_module(root: Path, name: str) -> str:
    (root / f"{name}.py").write_text(textwrap.dedent(RECORDER), encoding="utf-8")
    return name


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_a_user_callback_from_yaml_receives_train_and_validation_metrics(train_corpus, tmp_path, monkeypatch):
    from skyloom.cli import main

    monkeypatch.chdir(tmp_path)
    module = _user_module(tmp_path, "mycb_yaml")
    out = tmp_path / "seen.jsonl"
    cfg = tiny_run_config(
        train_corpus,
        train={"max_steps": 4},
        validation={"every": 2},
        callbacks={f"{module}:Recorder": {"out": str(out), "tag": "mine"}},
    )
    config = write_config(cfg, tmp_path / "run.yaml")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 0
    seen = _lines(out)
    train = [r for r in seen if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4] and all(r["tag"] == "mine" for r in seen)
    logged = read_metrics(tmp_path / "run")
    assert [r["loss"] for r in train] == pytest.approx([r["loss"] for r in logged])
    assert all(r["tokens_per_sec"] > 0 for r in train)  # the speed monitor ran before the user's callback
    val = [r for r in seen if r["kind"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    logged_val = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "run", "val")}
    assert [r["sets"]["wikitext_test"] for r in val] == pytest.approx([logged_val[2], logged_val[4]])


def test_a_callback_given_as_a_file_path(train_corpus, tmp_path):
    from skyloom.train.trainer import Trainer

    module = _user_module(tmp_path, "mycb_path")
    out = tmp_path / "seen.jsonl"
    cfg = build_run_config(
        tiny_run_config(
            train_corpus, train={"max_steps": 2}, callbacks={f"{tmp_path / module}.py:Recorder": {"out": str(out)}}
        )
    )
    Trainer(cfg, tmp_path / "run").fit()
    assert [r["step"] for r in _lines(out) if r["kind"] == "train"] == [1, 2]


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("nope", {}, "unknown callback 'nope'"),
        ("no_such_module_xyz:Recorder", {}, "cannot import module 'no_such_module_xyz'"),
        ("mycb_bad:Missing", {}, "has no 'Missing'"),
        ("mycb_bad:Recorder", {"unknown_arg": 1}, "do not fit Recorder"),
        ("inject_non_finite", {"step": [3]}, "do not fit InjectNonFinite"),
    ],
)
def test_a_bad_callback_is_a_config_error_naming_its_key(
    train_corpus, tmp_path, monkeypatch, capsys, name, args, message
):
    from skyloom.cli import main

    monkeypatch.chdir(tmp_path)
    _user_module(tmp_path, "mycb_bad")
    cfg = tiny_run_config(train_corpus, train={"max_steps": 2}, callbacks={name: args})
    config = write_config(cfg, tmp_path / "run.yaml")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyloom: error:") and f"callbacks.{name}" in err and message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before anything was written


def test_a_registered_callback_is_switched_on_by_name(train_corpus, tmp_path):
    from skyloom.train.trainer import Trainer

    cfg = build_run_config(
        tiny_run_config(train_corpus, train={"max_steps": 4}, callbacks={"inject_non_finite": {"steps": [2]}})
    )
    Trainer(cfg, tmp_path / "run").fit()
    assert [r["skipped"] for r in read_metrics(tmp_path / "run")] == [False, True, False, False]


def test_callback_state_survives_resume(train_corpus, tmp_path, monkeypatch):
    from skyloom.train.trainer import Trainer

    monkeypatch.chdir(tmp_path)
    module = _user_module(tmp_path, "mycb_resume")
    out = tmp_path / "seen.jsonl"
    spec = {f"{module}:Recorder": {"out": str(out)}}
    cfg = build_run_config(
        tiny_run_config(
            train_corpus,
            train={"max_steps": 5},
            checkpoint={"every": 0},
            callbacks={**spec, f"{module}:StopAfter": {"step": 3}},
        )
    )
    first = Trainer(cfg, tmp_path / "run")
    assert first.fit() == "interrupted" and first.step == 3
    state = json.loads((tmp_path / "run/checkpoints/step_00000003/trainer_state.json").read_text())
    assert state["callbacks"] == {f"{module}:Recorder": {"count": 3}}

    again = Trainer(
        build_run_config(
            tiny_run_config(train_corpus, train={"max_steps": 5}, checkpoint={"every": 0}, callbacks=spec)
        ),
        tmp_path / "run",
        resume=True,
    )
    assert again.step == 3
    assert again.fit() == "finished"
    counts = [r["count"] for r in _lines(out) if r["kind"] == "train"]
    assert counts == [1, 2, 3, 4, 5]  # the resumed session counted on from the checkpoint, not from 0


def test_a_run_saved_before_the_callbacks_section_resumes_without_a_config_change(tmp_path):
    import yaml

    from skyloom.config import save
    from skyloom.train.checkpointer import config_changes

    fake = {name: tmp_path / name for name in ("tokenizer", "en", "zh", "val_en")}
    cfg = build_run_config(tiny_run_config(fake))
    save(cfg, tmp_path / "config.yaml")
    old = yaml.safe_load((tmp_path / "config.yaml").read_text(encoding="utf-8"))
    del old["callbacks"]  # what config.yaml looked like before `callbacks:` existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False), encoding="utf-8")
    assert config_changes(tmp_path / "config.yaml", cfg) == {}
    with_cb = build_run_config(tiny_run_config(fake, callbacks={"inject_non_finite": {"steps": [2]}}))
    assert config_changes(tmp_path / "config.yaml", with_cb) == {
        "callbacks.inject_non_finite.steps": {"old": None, "new": [2]}
    }


def test_a_callback_adding_a_loss_is_refused_under_pipeline_stages_not_ignored():
    """Pipeline schedules run the micro-batches themselves, so `extra_loss` would never be called there."""
    from skyloom.config import ConfigError
    from skyloom.model.moe_config import MoEConfig
    from skyloom.train.callbacks import Callback, refuse_extra_losses_under_pipeline
    from skyloom.train.moe import MoECallback

    class AddsALoss(Callback):
        def extra_loss(self, trainer, batch):
            return torch.ones(())

    refuse_extra_losses_under_pipeline([AddsALoss()], pp=1)
    refuse_extra_losses_under_pipeline([Callback(), MoECallback(MoEConfig(n_experts=4))], pp=2)
    with pytest.raises(ConfigError, match="AddsALoss adds a loss") as err:
        refuse_extra_losses_under_pipeline([AddsALoss()], pp=2)
    assert err.value.key == "train.parallel.pp"
