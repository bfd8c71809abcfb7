"""Skywork-MoE Appendix C.2: experts upcycled from several dense checkpoints (`skyloom upcycle --expert-init`), and
the FFN-only continued pre-training that makes those checkpoints (`train.trainable: ffn`)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from skyloom.cli import main
from skyloom.config import ConfigError, build
from skyloom.model.checkpoint import load_model, save_model
from skyloom.model.config import ModelConfig
from skyloom.model.transformer import Transformer
from skyloom.model.upcycle import is_ffn_parameter, upcycle
from skyloom.train.config import RunConfig
from skyloom.train.trainer import Trainer
from tests.train_helpers import random_run_config, random_token_corpus, single_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")

MOE = {"n_experts": 4, "top_k": 2, "dropless": True}


def tiny_dense(seed: int = 0, **changes) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(build(ModelConfig, {"preset": "tiny", "n_layers": 2, "vocab_size": 512, **changes})).eval()


@torch.no_grad()
def specialise(base: Transformer, seed: int) -> Transformer:
    """`base` with only its FFN weights changed, as an FFN-only continuation leaves it."""
    model = tiny_dense()
    model.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if is_ffn_parameter(name):
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    return model.eval()


@pytest.fixture(scope="module")
def models():
    base = tiny_dense()
    return base, specialise(base, 1), specialise(base, 2)


def test_each_expert_copies_its_sources_ffn_and_the_rest_is_the_base(models):
    base, cn, en = models
    sources = [("cn", cn, 2), ("base", base, 1), ("en", en, 1)]
    model = upcycle(base, MOE, gate_std=0.02, seed=3, expert_sources=sources)
    expected = [cn, cn, base, en]
    for i, block in enumerate(model.layers):
        layer = block.ffn
        for j, source in enumerate(expected):
            ffn = source.layers[i].ffn
            assert torch.equal(layer.w1[j], ffn.w1.weight) and torch.equal(layer.w3[j], ffn.w3.weight)
            assert torch.equal(layer.w2[j], ffn.w2.weight), (i, j)
        assert not torch.equal(layer.w1[0], layer.w1[2])  # the sources really differ
    # the router is drawn exactly as plain upcycling draws it (same seed), never taken from a source
    plain = upcycle(base, MOE, gate_std=0.02, seed=3)
    dense_state, own, plain_state = base.state_dict(), model.state_dict(), plain.state_dict()
    for name, t in own.items():
        if ".ffn.gate." in name or name.endswith("aux_coef"):
            assert torch.equal(t, plain_state[name]), name
        elif not is_ffn_parameter(name):
            assert torch.equal(t, dense_state[name]), name


def test_all_sources_the_base_equals_plain_upcycling(models):
    base = models[0]
    plain = upcycle(base, MOE, seed=5).state_dict()
    split = upcycle(base, MOE, seed=5, expert_sources=[("base", base, 3), ("base", base, 1)]).state_dict()
    assert plain.keys() == split.keys()
    for name in plain:
        assert torch.equal(plain[name], split[name]), name


def test_refusals_name_the_source_and_the_tensor(models):
    base, cn, _ = models
    with pytest.raises(ValueError, match=r"1 \+ 2 = 3 experts, the MoE has n_experts=4"):
        upcycle(base, MOE, expert_sources=[("base", base, 1), ("cn", cn, 2)])
    with pytest.raises(ValueError, match="at least 1 expert"):
        upcycle(base, MOE, expert_sources=[("base", base, 4), ("cn", cn, 0)])
    moved = specialise(base, 1)
    with torch.no_grad():
        moved.layers[1].attn.wq.weight[0, 0] += 1e-3
    with pytest.raises(ValueError, match=r"moved: tensor layers\.1\.attn\.wq\.weight differs .* by 0\.001"):
        upcycle(base, MOE, expert_sources=[("base", base, 2), ("moved", moved, 2)])
    # within a tolerance it is accepted
    upcycle(base, MOE, expert_sources=[("base", base, 2), ("moved", moved, 2)], shared_atol=2e-3)
    wider = tiny_dense(ffn_dim=96)
    with pytest.raises(ValueError, match="wider: model.ffn_dim is 96"):
        upcycle(base, MOE, expert_sources=[("base", base, 2), ("wider", wider, 2)])


def test_expert_init_command(models, tmp_path, capsys):
    base, cn, en = models
    for name, model in (("base", base), ("cn", cn), ("en", en)):
        save_model(model, tmp_path / name)
    b, c, e, out = (str(tmp_path / name) for name in ("base", "cn", "en", "moe"))
    args = ["upcycle", b, "--experts", "4", "--out", out, "--set", "dropless=true"]
    assert main([*args, "--expert-init", f"{c}:2,base:1,{e}:1"]) == 0
    assert f"experts 0–1: FFN of {c}" in capsys.readouterr().out
    moe = load_model(out)
    layer = moe.layers[0].ffn
    assert torch.equal(layer.w1[1], cn.layers[0].ffn.w1.weight) and torch.equal(
        layer.w1[2], base.layers[0].ffn.w1.weight
    )
    assert torch.equal(layer.w2[3], en.layers[0].ffn.w2.weight)
    for bad, message in (
        (f"{c}:2,base:1", "add up to 2 + 1 = 3, not --experts 4"),
        (f"{c}:2,base", "item 2 'base': expected SOURCE:COUNT"),
        (f"{c}:2,base:2,x:0", "COUNT ≥ 1"),
        (f"{tmp_path / 'nowhere'}:2,base:2", "nowhere"),
    ):
        assert main([*args, "--expert-init", bad]) == 2, bad
        assert message in capsys.readouterr().err, bad
    moved = specialise(base, 3)
    with torch.no_grad():
        moved.norm.weight[0] += 0.5
    save_model(moved, tmp_path / "moved")
    assert main([*args, "--expert-init", f"{tmp_path / 'moved'}:2,base:2"]) == 2
    err = capsys.readouterr().err
    assert "moved: tensor norm.weight differs" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return random_token_corpus(tmp_path_factory.mktemp("specialise") / "data", 60, seed=4)


def run_config(corpus, steps: int, **train) -> RunConfig:
    return build(RunConfig, random_run_config(corpus, steps, **train))


def session(corpus, run_dir, steps: int, **train) -> Trainer:
    cfg = run_config(corpus, steps, **train)
    trainer = Trainer(cfg, run_dir, log=lambda *_: None)
    trainer.fit()
    return trainer


def test_ffn_only_continuation_freezes_the_rest_bit_for_bit_and_feeds_expert_init(corpus, tmp_path, capsys):
    session(corpus, tmp_path / "base", 2)
    trainer = session(corpus, tmp_path / "cn", 3, init_from=str(tmp_path / "base"), trainable="ffn")
    trained = [n for group in trainer.optimizer.param_groups for n in group["params"]]
    ffn = [p for n, p in trainer.raw_model.named_parameters() if is_ffn_parameter(n)]
    assert len(trained) == len(ffn) == 6 and all(any(p is q for q in ffn) for p in trained)
    base_ckpt, cn_ckpt = (next((tmp_path / r / "checkpoints").iterdir()) for r in ("base", "cn"))
    before, after = load_file(base_ckpt / "model.safetensors"), load_file(cn_ckpt / "model.safetensors")
    assert before.keys() == after.keys()
    for name in before:
        if is_ffn_parameter(name):  # trained (with weight decay: every matrix moves)
            assert not torch.equal(before[name], after[name]), name
        else:  # embeddings, attention, norms: no gradient, no AdamW step, no decay
            assert torch.equal(before[name], after[name]), name
    # the specialised checkpoint passes upcycling's default (bit-exact) check
    out = tmp_path / "moe"
    args = ["upcycle", str(base_ckpt), "--experts", "4", "--out", str(out), "--expert-init", f"base:2,{cn_ckpt}:2"]
    assert main(args) == 0, capsys.readouterr().err
    assert torch.equal(load_model(out).layers[1].ffn.w2[3], after["layers.1.ffn.w2.weight"])
    # the all-parameter run's AdamW state does not fit an FFN-only session: refused up front, naming the key
    with pytest.raises(ConfigError, match="train.init_optimizer.*trainable: ffn"):
        session(corpus, tmp_path / "x", 1, init_from=str(tmp_path / "base"), trainable="ffn", init_optimizer=True)
    # torch's SequenceParallel re-creates the norm weights as trainable parameters: refused rather than unfrozen
    with pytest.raises(ConfigError, match="train.trainable.*tensor parallelism"):
        run_config(corpus, 1, trainable="ffn", parallel={"tp": 2})
