"""Bad config / command-line input ends in one clean line, `skyloom: error: …` naming the file/line/key, exit 2.

Issue 14, config and command items: duplicate YAML keys, non-UTF-8 configs, validators naming the wrong key,
NaN/inf numbers, data.seq_len above model.max_seq_len, `--plan-only` errors, mixture weights near the float
maximum, overrides after options, `export hf` / `import hf` on missing paths, `raw:` typos falling back to other
data, and the demo leaving out a mistyped source. Offline, tiny synthetic inputs only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from skyloom import cli as skyloom_cli
from skyloom.cli import build_parser, main
from skyloom.config import ConfigError, apply_overrides, build, parse_override, read_yaml
from skyloom.data.shards import finalize_index, write_shard

MODEL = dict(arch="llama", vocab_size=128, dim=32, n_layers=1, n_heads=2, ffn_dim=64, max_seq_len=32)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `skyloom ARGV` in-process; the error path must be one clean message, never a traceback."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Token sources of random ids: a (4,000 tokens), b (3,000) and small (20, less than one window)."""
    root = tmp_path_factory.mktemp("input_errors")
    rng = np.random.default_rng(0)
    for name, n in (("a", 4000), ("b", 3000), ("small", 20)):
        write_shard(root / name, "000", [rng.integers(0, 100, n)], vocab_size=128, source=name)
        finalize_index(root / name)
    return root


def run_tree(shards: Path) -> dict:
    return {
        "model": dict(MODEL),
        "data": {
            "seq_len": 32,
            "sources": {"a": {"path": str(shards / "a")}, "b": {"path": str(shards / "b"), "weight": 0.5}},
        },
        "train": {"global_batch_tokens": 128, "micro_batch_size": 2, "max_steps": 4},
        "validation": {"every": 0, "at_start": False},
        "checkpoint": {"every": 0},
    }


@pytest.fixture
def config(shards, tmp_path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(run_tree(shards), sort_keys=False), encoding="utf-8")
    return path


def build_run(shards: Path, overrides: list[str]):
    from skyloom.train.config import RunConfig

    return build(RunConfig, apply_overrides(run_tree(shards), overrides))


# ---- item 9: duplicate YAML keys; item 11: non-UTF-8 configs ----


def test_duplicate_yaml_key_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  preset: tiny\n  n_layers: 2\n  n_layers: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"dup\.yaml:4: .*duplicate key 'n_layers' \(first given on line 3\)"):
        read_yaml(path)
    rc, _, err = cli(capsys, "model", "info", path)
    assert rc == 2 and "dup.yaml:4" in err and "duplicate key 'n_layers'" in err


def test_duplicate_keys_in_flow_mappings_and_override_values():
    with pytest.raises(ConfigError, match="duplicate key 'n_experts'"):
        parse_override("model.moe={n_experts: 2, n_experts: 4}")
    assert parse_override("model.moe={n_experts: 2, top_k: 1}")[1] == {"n_experts": 2, "top_k": 1}


def test_yaml_merge_keys_may_still_override(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lr: 1, steps: 2}\ntrain: {<<: *b, lr: 3}\n", encoding="utf-8")
    assert read_yaml(path)["train"] == {"lr": 3, "steps": 2}


def test_non_utf8_config_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model:\n  preset: tiny  # café\n".encode("latin-1"))
    rc, _, err = cli(capsys, "model", "info", path)
    assert rc == 2 and "latin1.yaml:2" in err and "not UTF-8" in err


# ---- item 10: validators name the real key; NaN/inf refused in every number field ----


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=-1", "train.lr"),
        ("train.lr=0", "train.lr"),
        ("train.min_lr=-1", "train.min_lr"),
        ("train.grad_clip=-1", "train.grad_clip"),
        ("train.weight_decay=-0.1", "train.weight_decay"),
        ("train.eps=0", "train.eps"),
        ("train.micro_batch_size=0", "train.micro_batch_size"),
        ("train.global_batch_tokens=0", "train.global_batch_tokens"),
        ("train.peak_tflops=0", "train.peak_tflops"),
        ("validation.batch_size=0", "validation.batch_size"),
        ("validation.every=-1", "validation.every"),
        ("checkpoint.every=-1", "checkpoint.every"),
        ("checkpoint.keep_last=0", "checkpoint.keep_last"),
    ],
)
def test_validation_error_names_the_real_key(shards, override, key):
    with pytest.raises(ConfigError) as err:
        build_run(shards, [override])
    assert err.value.key == key


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=.nan", "train.lr"),
        ("train.lr=.inf", "train.lr"),
        ("train.lr=1e400", "train.lr"),  # read as the string "1e400", converted to inf
        ("train.min_lr=-.inf", "train.min_lr"),
        ("train.grad_clip=.nan", "train.grad_clip"),
        ("model.rope_theta=.nan", "model.rope_theta"),
        ("data.max_epochs=.inf", "data.max_epochs"),
        ("data.sources.a.weight=.inf", "data.sources.a.weight"),
        ("data.sources.a.weight=[[0, 1], [1, .nan]]", "data.sources.a.weight[1][1]"),
    ],
)
def test_non_finite_numbers_are_refused(shards, override, key):
    with pytest.raises(ConfigError, match="finite") as err:
        build_run(shards, [override])
    assert err.value.key == key


def test_sft_validators_name_their_keys():
    from skyloom.sft.config import build_sft_config

    tree = {"base": "runs/x", "data": {"sources": {"s": {"path": "s.jsonl"}}}, "train": {"max_steps": 2}}
    for override, key in (
        ("data.seq_len=0", "data.seq_len"),
        ("data.val_max_samples=0", "data.val_max_samples"),
        ("data.sources.s.limit=0", "data.sources.s.limit"),
        ("train.lr=.nan", "train.lr"),
    ):
        with pytest.raises(ConfigError) as err:
            build_sft_config(apply_overrides(tree, [override]))
        assert err.value.key == key, override


@pytest.mark.parametrize(
    "cls, field, value",
    [
        ("skyloom.data.pipeline.dedup.MinhashStepConfig", "hashes_per_bucket", 0),
        ("skyloom.sft.skymath.SampleConfig", "temperature", -1.0),
        ("skyloom.sft.skymath.SampleConfig", "max_new_tokens", 0),
    ],
)
def test_sibling_validators_name_their_keys(cls, field, value):
    import importlib

    module, name = cls.rsplit(".", 1)
    with pytest.raises(ConfigError) as err:
        build(getattr(importlib.import_module(module), name), {field: value})
    assert err.value.key == field


def test_pipeline_env_variable_error_names_the_key(monkeypatch):
    from skyloom.data.pipeline.config import expand_env

    monkeypatch.delenv("SKYLOOM_NO_SUCH_VAR", raising=False)
    with pytest.raises(ConfigError) as err:
        expand_env({"inputs": [{"path": "${SKYLOOM_NO_SUCH_VAR}/x"}]})
    assert err.value.key == "inputs[0].path"


# ---- item 9: data.seq_len above model.max_seq_len ----


@pytest.mark.parametrize("arch", ["llama", "gpt"])
def test_seq_len_above_max_seq_len_is_refused(shards, arch):
    with pytest.raises(ConfigError, match=r"model\.max_seq_len=32") as err:
        build_run(shards, [f"model.arch={arch}", "data.seq_len=64", "train.global_batch_tokens=256"])
    assert err.value.key == "data.seq_len"


# ---- item 11: --plan-only and the run share one error path; extreme weights ----


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.micro_batch_size=3"], "does not split into 1 ranks"),
        (["data.sources.a.weight=0", "data.sources.b.weight=0"], "all mixture weights"),
        (["data.sources.a.path=SMALL"], "fewer than one window"),
    ],
)
@pytest.mark.parametrize("plan_only", [True, False])
def test_impossible_plans_are_clean_errors(config, shards, tmp_path, capsys, overrides, message, plan_only):
    overrides = [o.replace("SMALL", str(shards / "small")) for o in overrides]
    flags = ["--plan-only"] if plan_only else []
    rc, _, err = cli(capsys, "train", config, *overrides, "--out", tmp_path / "run", *flags)
    assert rc == 2 and err.startswith("skyloom: error:") and message in err


def test_mixture_weights_near_the_float_maximum_do_not_overflow(shards):
    from skyloom.data.mixture import MixtureLoader, MixtureSourceSpec, WeightSchedule
    from skyloom.data.shards import TokenSource

    specs = [MixtureSourceSpec(n, TokenSource(shards / n), WeightSchedule(1e308), 5.0) for n in ("a", "b")]
    loader = MixtureLoader(specs, seq_len=32, global_windows=4, micro_batch_size=2, total_steps=4)
    assert loader.weights_at(0).tolist() == [0.5, 0.5]
    assert [r["windows_drawn"] for r in loader.plan()] == [8, 8]
    with pytest.raises(ValueError, match="non-finite"):
        WeightSchedule(float("inf"))
    # `skyloom plan`'s vectorised path (long runs) does the same arithmetic
    from skyloom.recipes.plan import _vectorised_draws

    assert _vectorised_draws(loader, np.zeros(2, dtype=np.int64)).tolist() == [8, 8]


# ---- item 11: overrides after options, for every command that takes them ----


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "cfg.yaml", "a.b=1", "--out", "runs/x", "train.lr=1e-3"],
        ["sft", "sft.yaml", "a.b=1", "--out", "runs/x", "train.lr=1e-3"],
        ["skymath", "sm.yaml", "a.b=1", "--resume", "train.lr=1e-3"],
        ["data", "run", "p.yaml", "a.b=1", "--workers", "2", "train.lr=1e-3"],
        ["data", "train-quality", "q.yaml", "a.b=1", "--output", "m", "train.lr=1e-3"],
        ["demo", "a.b=1", "--tiny", "--out", "runs/x", "train.lr=1e-3"],
        ["plan", "recipes/demo", "a.b=1", "--root", "runs/x", "train.lr=1e-3"],
        ["model", "info", "tiny", "a.b=1", "--json", "train.lr=1e-3"],
        ["model", "init", "tiny", "out", "a.b=1", "--seed", "1", "train.lr=1e-3"],
    ],
)
def test_overrides_may_follow_the_options(argv):
    assert skyloom_cli.parse_args(build_parser(), argv).overrides == ["a.b=1", "train.lr=1e-3"]


def test_a_stray_word_after_the_options_is_still_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        skyloom_cli.parse_args(build_parser(), ["train", "cfg.yaml", "--out", "runs/x", "stray"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized arguments: stray" in err
    assert err.startswith("usage: skyloom train ")  # the command's own usage, not the top-level one


def test_an_unknown_option_of_a_subcommand_shows_that_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        skyloom_cli.parse_args(build_parser(), ["eval", "leakage", "--model", "m", "--bogus", "X"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("usage: skyloom eval leakage ") and "--bogus X" in err


def test_train_override_after_out_is_applied(config, tmp_path, capsys):
    rc, out, _ = cli(capsys, "train", config, "--plan-only", "--out", tmp_path / "run", "train.max_steps=7")
    assert rc == 0 and "steps        7 " in out and "plan OK" in out


# ---- item 11: export hf / import hf (and upcycle) on missing paths ----


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "hf", "MISSING", "OUT"], "CHECKPOINT MISSING: no such directory"),
        (["import", "hf", "MISSING", "OUT"], "HF_DIR MISSING: no such directory"),
        (["upcycle", "MISSING", "--out", "OUT"], "no such checkpoint: MISSING"),
        (["export", "hf", "EMPTY", "OUT"], "neither a skyloom checkpoint"),
        (["import", "hf", "EMPTY", "OUT"], "no config.json"),
    ],
)
def test_export_import_on_missing_paths(tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    names = {"MISSING": str(tmp_path / "missing"), "EMPTY": str(tmp_path / "empty"), "OUT": str(tmp_path / "out")}
    rc, _, err = cli(capsys, *[names.get(a, a) for a in argv])
    assert rc == 2 and message.replace("MISSING", names["MISSING"]) in err
    assert not (tmp_path / "out").exists()


# ---- item 6: a `raw:` typo is refused, never replaced by the fallback or dropped ----


@pytest.fixture
def raw_dir(tmp_path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "en.txt").write_text("real text " * 50, encoding="utf-8")
    (corpus / "fallback.txt").write_text("other text " * 50, encoding="utf-8")
    return corpus


def with_raw(raw: list[str], fallback: list[str], tmp_path: Path) -> list[str]:
    return [
        f"data.sources.a.path={tmp_path / 'to_pack'}",
        f"data.sources.a.raw={json.dumps(raw)}",
        f"data.sources.a.raw_fallback={json.dumps(fallback)}",
        f"data.tokenizer={tmp_path / 'tok'}",
    ]


def test_raw_typo_with_a_fallback_is_refused(config, raw_dir, tmp_path, capsys):
    overrides = with_raw([str(raw_dir / "en.tx")], [str(raw_dir / "fallback.txt")], tmp_path)
    rc, out, err = cli(capsys, "train", config, *overrides, "--plan-only", "--out", tmp_path / "run")
    assert rc == 2 and "'data.sources.a.raw'" in err and "en.tx matches no file" in err
    assert "fallback" not in out


def test_missing_file_in_a_raw_list_is_refused(config, raw_dir, tmp_path, capsys):
    overrides = with_raw([str(raw_dir / "en.txt"), str(raw_dir / "zh.txt")], [], tmp_path)
    rc, _, err = cli(capsys, "train", config, *overrides, "--plan-only", "--out", tmp_path / "run")
    assert rc == 2 and "'data.sources.a.raw'" in err and "zh.txt matches no file" in err


def test_missing_tokenizer_file_is_refused_before_training(config, raw_dir, tmp_path, capsys):
    overrides = [
        f"data.tokenizer={tmp_path / 'tok'}",
        "data.train_tokenizer.vocab_size=300",
        f"data.train_tokenizer.files={json.dumps([str(raw_dir / 'en.txt'), str(raw_dir / 'typo.txt')])}",
    ]
    rc, _, err = cli(capsys, "train", config, *overrides, "--plan-only", "--out", tmp_path / "run")
    assert rc == 2 and "'data.train_tokenizer.files'" in err and "typo.txt" in err
    assert not (tmp_path / "tok").exists()


def test_fallback_stands_in_only_for_absent_data_and_says_so(raw_dir, tmp_path):
    from skyloom.train.prepare import _resolve_files

    notes: list[str] = []
    files = _resolve_files(
        [str(tmp_path / "no_data_here" / "en.txt")], [str(raw_dir / "fallback.txt")], "data.sources.a.raw", notes.append
    )
    assert files == [raw_dir / "fallback.txt"]
    assert len(notes) == 1 and "no_data_here" in notes[0] and "fallback" in notes[0]


def test_validation_set_path_typo_is_refused_and_its_fallback_stands_in_only_for_absent_data(raw_dir, tmp_path, capsys):
    from skyloom.tokenizer.loading import TextTokenizer
    from skyloom.train.config import ValidationSetConfig
    from skyloom.train.validation import ValidationMonitor

    fallback = [str(raw_dir / "fallback.txt")]
    typo = ValidationSetConfig(path=str(raw_dir / "en.tx"), fallback=fallback)
    with pytest.raises(ConfigError, match=r"en\.tx matches no file") as err:
        ValidationMonitor({"wiki": typo}, seq_len=8)
    assert err.value.key == "validation.sets.wiki.path"
    tok = TextTokenizer.from_dir(tiny_sft_base(tmp_path / "base"))
    absent = ValidationSetConfig(path=str(tmp_path / "no_data_here" / "en.txt"), fallback=fallback)
    capsys.readouterr()
    monitor = ValidationMonitor({"wiki": absent}, seq_len=8, tokenizer=tok)
    out = capsys.readouterr().out
    assert "validation.sets.wiki.path" in out and "no_data_here" in out and "fallback" in out
    direct = ValidationMonitor({"wiki": ValidationSetConfig(path=fallback[0])}, seq_len=8, tokenizer=tok)
    assert torch.equal(monitor.windows["wiki"], direct.windows["wiki"])


def test_recipe_rebases_every_file_list(tmp_path):
    from skyloom.recipes.recipe import rebase_paths

    tree = {
        "data": {
            "train_tokenizer": {"files": ["raw/a.txt"], "fallback": ["${stdlib}/*.py"]},
            "sources": {"s": {"path": "tok/s", "raw": ["raw/a.txt"], "raw_fallback": ["raw/b.txt"]}},
        },
        "validation": {"sets": {"v": {"path": "v.txt", "fallback": ["raw/c.txt"]}}},
    }
    out = rebase_paths(tree, tmp_path)
    assert out["data"]["train_tokenizer"] == {"files": [str(tmp_path / "raw/a.txt")], "fallback": ["${stdlib}/*.py"]}
    assert out["data"]["sources"]["s"]["raw_fallback"] == [str(tmp_path / "raw/b.txt")]
    assert out["validation"]["sets"]["v"]["fallback"] == [str(tmp_path / "raw/c.txt")]


# ---- item 6 in the demo: a mistyped source is refused, not trained without ----


def test_demo_refuses_a_mistyped_source_path(tmp_path):
    from skyloom.demo.run import Demo

    demo = Demo(
        tmp_path / "ws", tiny=True, overrides=["stage2.data.sources.stem.path=data/tokens/stme"], log=lambda _: None
    )
    (tmp_path / "ws" / "corpus").mkdir(parents=True)
    (tmp_path / "ws" / "corpus" / "manifest.json").write_text(json.dumps({"domains": []}), encoding="utf-8")
    (tmp_path / "ws" / "data" / "tokens" / "main").mkdir(parents=True)
    (tmp_path / "ws" / "data" / "tokens" / "main" / "index.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"stage2\.yaml.*data/tokens/stme") as err:
        demo.session_config("stage2")
    assert err.value.key == "data.sources.stem.path"
    # the demo's own empty STEM subset is still left out, with a note
    demo.recipe = Demo(tmp_path / "ws", tiny=True).recipe
    assert list(demo.session_config("stage2").data.sources) == ["main"]


def test_demo_refuses_a_shared_layout_with_a_folder_missing(tmp_path, capsys):
    data = tmp_path / "shared"
    for folder in ("wikitext2", "gsm8k", "skywork"):  # fewclue_zh/ missing
        (data / folder).mkdir(parents=True)
    (data / "gsm8k" / "train.txt").write_text(("A long enough paragraph. " * 20 + "\n\n") * 3, encoding="utf-8")
    rc, _, err = cli(capsys, "demo", "--tiny", "--data", data, "--out", tmp_path / "ws", "--until", "corpus")
    assert rc == 2 and "lacks fewclue_zh/" in err


# ---- SFT: a seq_len above the base's max_seq_len ----

SFT_TEXT = [f"Question {i}: what is {i} plus {i}? Answer: {i} plus {i} is {2 * i}." for i in range(60)]


def tiny_sft_base(root: Path, arch: str = "llama", max_seq_len: int = 32) -> Path:
    """An SFT base in a second, no data needed: a byte-level BPE (</s> as eos) and a random tiny model beside it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from skyloom.model.checkpoint import save_model
    from skyloom.model.config import ModelConfig
    from skyloom.model.transformer import Transformer

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        SFT_TEXT,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    torch.manual_seed(0)
    cfg = build(ModelConfig, dict(MODEL, arch=arch, vocab_size=tok.get_vocab_size(), max_seq_len=max_seq_len))
    save_model(Transformer(cfg), root)
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>"}))
    return root


def tiny_sft_config(base: Path, root: Path, seq_len: int, **train) -> Path:
    """An `skyloom sft` YAML of 2 steps on a few question/answer records (written beside it)."""
    data = root / "qa.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": t.split(" Answer:")[0], "output": t.split("Answer: ")[1]}) + "\n"
            for t in SFT_TEXT[:20]
        ),
        encoding="utf-8",
    )
    cfg = {
        "base": str(base),
        "data": {"sources": {"qa": {"path": str(data)}}, "seq_len": seq_len},
        "train": {
            "max_steps": 2,
            "global_batch_tokens": 2 * seq_len,
            "micro_batch_size": 2,
            "lr": 1e-3,
            "warmup_steps": 0,
            "device": "cpu",
            **train,
        },
        "validation": {"every": 0},
        "export_hf": False,
    }
    path = root / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_sft_seq_len_above_a_rope_base_raises_the_saved_max_seq_len(tmp_path, capsys):
    base = tiny_sft_base(tmp_path / "base", "llama", max_seq_len=32)
    rc, out, _ = cli(capsys, "sft", tiny_sft_config(base, tmp_path, seq_len=64), "--out", tmp_path / "run")
    assert rc == 0 and "max_seq_len 32 → 64" in out
    saved = json.loads(next((tmp_path / "run" / "checkpoints").glob("step_*/model.json")).read_text())
    assert saved["model"]["max_seq_len"] == 64  # what the model was trained on, not the base's 32


def test_sft_seq_len_above_a_gpt_base_is_refused_before_anything_is_written(tmp_path, capsys):
    base = tiny_sft_base(tmp_path / "base", "gpt", max_seq_len=32)
    rc, _, err = cli(capsys, "sft", tiny_sft_config(base, tmp_path, seq_len=64), "--out", tmp_path / "run")
    assert rc == 2 and "data.seq_len" in err and "model.max_seq_len=32" in err and "learned positions" in err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "sft.yaml"]  # no init/ to --overwrite
    rc, _, err = cli(capsys, "sft", tiny_sft_config(base, tmp_path, seq_len=32), "--out", tmp_path / "run")
    assert rc == 0, err
