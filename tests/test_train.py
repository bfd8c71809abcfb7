"""The trainer on real text: loss falls, metrics and checkpoints are written as documented, faults are handled."""

from __future__ import annotations

import json
import math

import pytest
import torch

from skyloom.model.transformer import Transformer
from skyloom.train import trainer as trainer_module
from skyloom.train.callbacks import Callback, InjectNonFinite
from skyloom.train.config import TrainConfig
from skyloom.train.optim import lr_at, param_groups
from skyloom.train.trainer import Trainer, TrainingAborted
from tests.train_helpers import (  # noqa: F401
    build_run_config,
    random_run_config,
    random_token_corpus,
    read_metrics,
    single_thread,
    tiny_run_config,
    train_corpus,
)

pytestmark = pytest.mark.usefixtures("single_thread")

TRAIN_KEYS = {"kind", "step", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec", "mfu", "mem_gb", "time"}


def test_validation_loss_falls_on_real_text(train_corpus, tmp_path):
    cfg = build_run_config(
        tiny_run_config(
            train_corpus,
            train={"max_steps": 150, "warmup_steps": 10},
            validation={
                "every": 50,
                "at_start": True,
                "sets": {
                    "wikitext_test": {"path": str(train_corpus["val_en"]), "max_tokens": 4096},
                    "wikitext_raw": {"path": str(train_corpus["val_text"] / "*.txt"), "max_tokens": 4096},
                },
            },
            checkpoint={"every": 75},
        )
    )
    trainer = Trainer(cfg, tmp_path / "run")
    assert trainer.fit() == "finished"
    val = read_metrics(tmp_path / "run", "val")
    shard = [r for r in val if r["set"] == "wikitext_test"]
    assert [r["step"] for r in shard] == [0, 50, 100, 150]
    assert shard[0]["loss"] == pytest.approx(math.log(1024), abs=0.3)  # an untrained model is near uniform
    assert shard[-1]["loss"] < shard[0]["loss"] - 1.5, shard
    assert all(b["loss"] < a["loss"] for a, b in zip(shard, shard[1:]))
    assert shard[-1]["ppl"] == pytest.approx(math.exp(shard[-1]["loss"]))
    assert shard[-1]["eval_tokens"] == 64 * 64  # ceil(4096 / 64) windows × 64 predicted tokens
    # the shard set and the same text tokenized on the fly are the same stream: the same loss
    raw = [r for r in val if r["set"] == "wikitext_raw"]
    assert [r["loss"] for r in raw] == pytest.approx([r["loss"] for r in shard], rel=1e-6)

    train = read_metrics(tmp_path / "run")
    assert [r["step"] for r in train] == list(range(1, 151))
    assert TRAIN_KEYS <= set(train[0]) and train[-1]["tokens"] == 150 * 512
    assert train[0]["mfu"] is None  # no invented CPU peak
    assert {"weight/en", "weight/zh"} <= set(train[0])
    assert train[0]["weight/en"] == pytest.approx(0.7) and train[-1]["weight/en"] == pytest.approx(0.5)
    assert sum(r["loss"] for r in train[-10:]) / 10 < train[0]["loss"] - 1.5

    # the final checkpoint opens with skyloom.load_model and evaluate_loss reproduces the logged loss
    import skyloom
    from skyloom.train.validation import evaluate_loss

    ckpt_dir = tmp_path / "run" / "checkpoints" / "step_00000150"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_00000075", "step_00000150"]
    assert (ckpt_dir / "tokenizer.json").is_file()
    model = skyloom.load_model(ckpt_dir)
    loss, n = evaluate_loss(model, trainer.validation.windows["wikitext_test"], batch_size=5)
    assert n == 4096 and loss == pytest.approx(shard[-1]["loss"], rel=1e-5)
    events = [r["event"] for r in read_metrics(tmp_path / "run", "event")]
    assert events.count("checkpoint") == 2 and events[-1] == "finished"
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_weight_decay_on_matrices_only():
    from skyloom.config import build
    from skyloom.model.config import ModelConfig

    model = Transformer(build(ModelConfig, {"preset": "tiny-gpt", "n_layers": 1}))
    groups = param_groups(model, 0.1)
    decayed = {n for g in groups if g["weight_decay"] == 0.1 for n in g["names"]}
    plain = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    assert "layers.0.attn.wq.weight" in decayed and "output.weight" in decayed and "layers.0.ffn.w2.weight" in decayed
    assert {
        "tok_emb.weight",
        "pos_emb.weight",
        "norm.weight",
        "layers.0.attn_norm.weight",
        "layers.0.attn.wq.bias",
    } <= plain
    assert decayed | plain == {n for n, _ in model.named_parameters()} and not decayed & plain
    scaled = param_groups(model, 0.1, lr_scale_fn=lambda name, p: 0.5 if ".ffn." in name else 1.0)
    assert {g["lr_scale"] for g in scaled} == {0.5, 1.0}


def test_lr_schedules():
    cfg = TrainConfig(max_steps=101, lr=6e-4, min_lr=6e-5, warmup_steps=10)
    assert lr_at(0, cfg, 101) == pytest.approx(6e-5) and lr_at(9, cfg, 101) == pytest.approx(6e-4)
    assert lr_at(10, cfg, 101) == pytest.approx(6e-4)
    assert lr_at(100, cfg, 101) == pytest.approx(6e-5)
    mid = 10 + 45  # half-way through the decay
    assert lr_at(mid, cfg, 101) == pytest.approx((6e-4 + 6e-5) / 2)
    const = TrainConfig(max_steps=10, lr=6e-5, min_lr=6e-5, schedule="constant")
    assert {lr_at(s, const, 10) for s in range(10)} == {6e-5}


class _Snapshots(Callback):
    def __init__(self):
        self.weights = {}

    def post_step(self, trainer, metrics):
        self.weights[trainer.step] = trainer.raw_model.layers[0].attn.wq.weight.detach().clone()


def test_non_finite_steps_are_skipped_and_counted(train_corpus, tmp_path):
    cfg = build_run_config(tiny_run_config(train_corpus, train={"max_steps": 8}, checkpoint={"every": 0}))
    snaps = _Snapshots()
    trainer = Trainer(cfg, tmp_path / "run", callbacks=[InjectNonFinite({3, 4}), snaps])
    assert trainer.fit() == "finished"
    train = read_metrics(tmp_path / "run")
    assert [r["skipped"] for r in train] == [False, False, True, True, False, False, False, False]
    assert train[2]["grad_norm"] is None  # NaN is written as null
    assert torch.equal(snaps.weights[2], snaps.weights[4])  # skipped steps leave the weights alone
    assert not torch.equal(snaps.weights[4], snaps.weights[5])
    skipped = [r for r in read_metrics(tmp_path / "run", "event") if r["event"] == "skipped_step"]
    assert [(r["step"], r["consecutive"], r["skipped_total"]) for r in skipped] == [(3, 1, 1), (4, 2, 2)]
    state = json.loads((tmp_path / "run/checkpoints/step_00000008/trainer_state.json").read_text())
    assert state["skipped_steps"] == 2 and state["bad_steps"] == 0
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())


def test_too_many_bad_steps_stop_without_a_checkpoint(train_corpus, tmp_path):
    cfg = build_run_config(
        tiny_run_config(train_corpus, train={"max_steps": 12, "max_bad_steps": 3}, checkpoint={"every": 2})
    )
    trainer = Trainer(cfg, tmp_path / "run", callbacks=[InjectNonFinite(range(5, 13))])
    with pytest.raises(TrainingAborted, match="3 consecutive steps"):
        trainer.fit()
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert steps == ["step_00000002", "step_00000004"]  # nothing written after the first bad step
    assert read_metrics(tmp_path / "run", "event")[-1]["event"] == "abort"


def test_chained_session_starts_from_a_checkpoint_with_a_fresh_schedule(train_corpus, tmp_path):
    first = Trainer(build_run_config(tiny_run_config(train_corpus, train={"max_steps": 6})), tmp_path / "stage1")
    first.fit()
    ckpt = tmp_path / "stage1" / "checkpoints" / "step_00000006"
    snaps = _Snapshots()

    class _Start(Callback):
        def on_train_start(self, trainer):
            self.weights = trainer.raw_model.layers[0].attn.wq.weight.detach().clone()
            self.opt_state = len(trainer.optimizer.state)

    start = _Start()
    cfg = build_run_config(
        tiny_run_config(
            train_corpus,
            train={
                "max_steps": 4,
                "lr": 6e-5,
                "min_lr": 6e-5,
                "schedule": "constant",
                "warmup_steps": 0,
                "init_from": str(tmp_path / "stage1"),
            },
            data={"init_loader_from_checkpoint": True},
        )
    )
    second = Trainer(cfg, tmp_path / "stage2", callbacks=[start, snaps])
    second.fit()
    assert torch.equal(start.weights, first.raw_model.layers[0].attn.wq.weight)
    assert start.opt_state == 0  # fresh optimizer by default
    train = read_metrics(tmp_path / "stage2")
    assert [r["step"] for r in train] == [1, 2, 3, 4] and {r["lr"] for r in train} == {6e-5}
    # the loader continued each source where stage 1 stopped (no window read twice)
    s1 = json.loads((ckpt / "trainer_state.json").read_text())["loader"]["sources"]
    s2 = second.loader.state_dict()["sources"]
    assert sum(s2[n]["drawn"] for n in s2) == sum(s1[n]["drawn"] for n in s1) + 4 * 8
    with_opt = build_run_config(
        tiny_run_config(train_corpus, train={"max_steps": 2, "init_from": str(ckpt), "init_optimizer": True})
    )
    start2 = _Start()
    Trainer(with_opt, tmp_path / "stage2b", callbacks=[start2]).fit()
    assert start2.opt_state > 0


def test_plan_only_prints_and_refuses_a_broken_cap(train_corpus, tmp_path):
    from skyloom.cli import main
    from tests.train_helpers import write_config

    cfg = tiny_run_config(train_corpus, train={"max_steps": 20})
    path = write_config(cfg, tmp_path / "ok.yaml")
    assert main(["train", str(path), "--plan-only"]) == 0
    cfg["data"]["sources"]["zh"]["max_epochs"] = 0.01
    bad = write_config(cfg, tmp_path / "bad.yaml")
    assert main(["train", str(bad), "--plan-only"]) == 2
    assert main(["train", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_activation_checkpointing_and_bf16_switches(train_corpus, tmp_path):
    def losses(name, **train):
        cfg = build_run_config(
            tiny_run_config(
                train_corpus, train={"max_steps": 4, **train}, validation={"sets": {}}, checkpoint={"save_final": False}
            )
        )
        Trainer(cfg, tmp_path / name).fit()
        return [r["loss"] for r in read_metrics(tmp_path / name)]

    base = losses("base")
    assert losses("ac", activation_checkpointing=True) == pytest.approx(base, abs=1e-6)
    bf16 = losses("bf16", precision="bf16")
    assert all(math.isfinite(x) for x in bf16) and bf16 == pytest.approx(base, abs=0.05) and bf16 != base


@pytest.mark.parametrize("grad_clip", [0.05, 0.0])
def test_clipping_inside_the_fused_step_equals_clip_grad_norm(grad_clip, tmp_path, monkeypatch):
    """The fused AdamW divides the gradients by the clip's factor in its kernel (no separate pass over them): the
    same norms, losses and weights as torch's clip_grad_norm_ before the step, to rounding; the factor lives only
    for its step. grad_clip 0.05 clips every step here; 0 (no clipping) never scales."""
    corpus = random_token_corpus(tmp_path / "data", 40, seed=4)

    def run(tag: str):
        cfg = build_run_config(random_run_config(corpus, 4, checkpoint={"save_final": False}, grad_clip=grad_clip))
        torch.manual_seed(0)
        trainer = Trainer(cfg, tmp_path / tag, log=lambda *_: None)
        steps = [trainer.train_step() for _ in range(4)]
        assert getattr(trainer.optimizer, "grad_scale", None) is None
        weights = torch.cat([p.detach().flatten() for p in trainer.raw_model.parameters()])
        return trainer.clip_folded, [s[key] for s in steps for key in ("loss", "grad_norm")], weights

    folded, folded_steps, folded_weights = run("folded")
    monkeypatch.setattr(trainer_module, "clips_in_step", lambda optimizer: False)
    explicit, explicit_steps, explicit_weights = run("explicit")
    assert folded and not explicit
    if grad_clip:
        assert all(norm > grad_clip for norm in explicit_steps[1::2])  # the clip acts on every step
    assert folded_steps == pytest.approx(explicit_steps, rel=1e-6, abs=0)
    # Adam divides by √v: a rounding-level gradient difference moves a weight by < 0.1% of one step (lr 3e-3)
    assert (folded_weights - explicit_weights).abs().max() <= 3e-6
