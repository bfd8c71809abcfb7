"""Every command explains itself; the README's test command is what CI runs."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest
import torch

import skyloom
from skyloom.cli import build_parser, main
from tests.conftest import REPO


def _all_command_paths(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _all_command_paths(sub, (*prefix, name))


def test_every_command_has_help(capsys):
    paths = list(_all_command_paths(build_parser()))
    assert ("model", "info") in paths and ("export", "hf") in paths
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        assert exit_info.value.code == 0, path
        assert len(capsys.readouterr().out) > 80, path


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "skyloom", "--help"], capture_output=True, text=True, check=True)
    assert "Skywork" in out.stdout


def test_model_init_writes_a_loadable_checkpoint(tmp_path):
    assert main(["model", "init", "tiny", str(tmp_path / "m"), "n_layers=2", "--seed", "3"]) == 0
    model = skyloom.load_model(tmp_path / "m")
    assert not model.training and model.config.n_layers == 2
    logits = model(torch.zeros(1, 5, dtype=torch.long))
    assert logits.shape == (1, 5, model.config.vocab_size)
    assert main(["model", "init", "tiny", str(tmp_path / "m2"), "n_layers=2", "--seed", "3"]) == 0
    again = skyloom.load_model(tmp_path / "m2")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"# tests \(what CI runs\)\n(.+)\n", readme).group(1).strip()
    ci = (REPO / ".ci" / "run").read_text()
    setup, tests = block.split(" && ")  # CI runs the README's two steps, then the same suite without ../shared/data
    lines = [line.strip() for line in ci.splitlines()]
    assert any(line.startswith(setup) for line in lines) and tests in lines
    assert f'SKYLOOM_SHARED_DATA=/nonexistent {tests} -p no:cacheprovider -m "not data_free"' in lines


def test_the_command_line_starts_without_torch():
    """`skyloom --help` builds every command's parser; none may import torch (3-8 s) to do it."""
    code = (
        "import sys, skyloom.cli as cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "cli.build_parser()\n"
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# a minimal command line for each command; --print-config must print its resolved config and run nothing
PRINT_CONFIG_ARGS = {
    ("model", "info"): ["tiny", "n_layers=3"],
    ("model", "init"): ["tiny", "OUT"],
    ("upcycle",): ["CKPT", "--out", "OUT"],
    ("train",): [str(REPO / "recipes" / "tiny.yaml")],
    ("eval", "ppl"): ["--model", "M"],
    ("eval", "leakage"): ["--model", "M"],
    ("eval", "bench"): ["--model", "M", "--task", "ceval"],
    ("eval", "correlate"): ["RUN"],
    ("data", "run"): [str(REPO / "recipes" / "data" / "example.yaml")],
    ("data", "train-quality"): [str(REPO / "recipes" / "data" / "quality.yaml")],
    ("data", "pack"): ["SRC", "-t", "TOK", "-o", "OUT"],
    ("tokenizer", "train"): ["IN", "--out", "OUT"],
    ("tokenizer", "extend"): ["BASE", "IN", "--out", "OUT"],
    ("tokenizer", "stats"): ["TOK", "FILE"],
    ("tokenizer", "convert"): ["MODEL", "OUT"],
    ("export", "hf"): ["CKPT", "OUT"],
    ("export", "gguf"): ["CKPT", "OUT"],
    ("import", "hf"): ["HF", "OUT"],
    ("sft",): [str(REPO / "recipes" / "sft" / "gsm8k-alpaca.yaml")],
    ("skymath",): [str(REPO / "recipes" / "sft" / "skymath-gsm8k.yaml")],
    ("plan",): [str(REPO / "recipes" / "skywork-13b")],
    ("demo",): ["--tiny"],
    ("report",): ["RUN"],
}


def _leaf_parsers(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _leaf_parsers(sub, (*prefix, name))
                else:
                    yield (*prefix, name), sub


def test_every_command_prints_its_resolved_config(capsys, tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)  # nothing may be written: the working directory must stay empty
    leaves = dict(_leaf_parsers(build_parser()))
    assert set(leaves) == set(PRINT_CONFIG_ARGS), "a new command needs a line in PRINT_CONFIG_ARGS"
    for path, args in PRINT_CONFIG_ARGS.items():
        assert main([*path, *args, "--print-config"]) == 0, path
        printed = yaml.safe_load(capsys.readouterr().out)
        assert isinstance(printed, dict) and printed, path
    assert list(tmp_path.iterdir()) == []


def test_print_config_shows_defaults_and_overrides(capsys):
    import yaml

    assert main(["model", "info", "tiny", "n_layers=3", "--print-config"]) == 0
    model = yaml.safe_load(capsys.readouterr().out)
    assert model["n_layers"] == 3 and model["dim"] == 128  # the preset's values, resolved
    pack_args = ["SRC", "-t", "TOK", "-o", "OUT", "--field", "a", "--field", "b", "--print-config"]
    assert main(["data", "pack", *pack_args]) == 0
    pack = yaml.safe_load(capsys.readouterr().out)
    assert pack["fields"] == ["a", "b"] and pack["shard_bytes"] == 64 << 20 and pack["tokenizer"] == "TOK"


def test_overrides_may_be_written_as_options(capsys):
    """`--train.lr=1e-3` is the override `train.lr=1e-3`, before or after other options and plain overrides."""
    import yaml

    tiny = str(REPO / "recipes" / "tiny.yaml")
    assert main(["train", tiny, "--train.lr=1e-3", "model.n_layers=2", "--out", "x", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["train"]["lr"] == 1e-3 and cfg["model"]["n_layers"] == 2
    assert main(["model", "info", "tiny", "--n_layers=3", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["n_layers"] == 3
    with pytest.raises(SystemExit):  # a command without overrides still refuses an unknown option
        main(["report", "RUN", "--n_layers=3"])


def test_a_flag_help_text_is_its_config_field_doc(capsys):
    from skyloom.commandline import field_help
    from skyloom.data.pack_commands import PackConfig

    doc = field_help(PackConfig, "shard_bytes")
    with pytest.raises(SystemExit):
        main(["data", "pack", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"--shard-bytes SHARD_BYTES {doc} (default: {64 << 20})" in help_text


def test_tokenizer_command_defaults_are_the_trainer_defaults():
    """The CLI's tokenizer defaults are written once more than TrainSettings'; this keeps the two equal."""
    import dataclasses

    from skyloom.tokenizer.commands import TokenizerExtendConfig, TokenizerTrainConfig
    from skyloom.tokenizer.train import TrainSettings

    trainer = {
        f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
        for f in dataclasses.fields(TrainSettings)
        if f.name not in ("inputs", "out", "fields")
    }
    for cls in (TokenizerTrainConfig, TokenizerExtendConfig):  # (--field's None is the handler's ["text"])
        for f in dataclasses.fields(cls):
            if f.name in trainer and f.name != "extend" or f.name == "extend" and cls is TokenizerTrainConfig:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                assert default == trainer[f.name], (cls.__name__, f.name)


def test_sft_saves_its_resolved_config_and_resumes_from_it(tmp_path, capsys):
    """RUN_DIR/sft.yaml is the config as resolved (every default written), not the raw input; loading it again
    gives the same config (so `skyloom sft RUN_DIR --resume` runs what ran)."""
    import yaml

    from skyloom.sft.commands import load_sft

    data = tmp_path / "qa.jsonl"
    data.write_text('{"instruction": "1+1?", "output": "2"}\n', encoding="utf-8")
    given = {
        "base": str(tmp_path / "no-such-base"),
        "data": {"sources": {"qa": {"path": str(data)}}},
        "train": {"global_batch_tokens": 64, "micro_batch_size": 1, "device": "cpu"},
    }
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(given), encoding="utf-8")
    assert main(["sft", str(tmp_path / "sft.yaml"), "--out", str(tmp_path / "run"), "train.lr=1e-4"]) == 2
    assert "no-such-base" in capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / "run" / "sft.yaml").read_text(encoding="utf-8"))
    assert saved["train"]["lr"] == 1e-4 and saved["data"]["epochs"] == 3.0  # the override and the default
    assert saved["validation"] == {"every": 50} and saved["data"]["layout"] == "packed"
    assert saved["train"]["max_steps"] is None  # steps still come from data.epochs
    assert load_sft(str(tmp_path / "run"), []) == load_sft(str(tmp_path / "sft.yaml"), ["train.lr=1e-4"])


# A stand-in `torch` package that records every attempt to import it, then fails as a missing torch would.
_NO_TORCH = """import os, traceback
with open(os.environ["SKYLOOM_TEST_TORCH_ATTEMPTS"], "a") as f:
    f.write("".join(traceback.format_stack()) + "\\n")
raise ModuleNotFoundError("No module named 'torch'", name="torch")
"""


def _tiny_bilingual_corpus(path):
    import json

    words = "alpha beta gamma delta epsilon zeta theta lambda sigma omega river stone cloud light".split()
    with path.open("w", encoding="utf-8") as f:
        for i in range(80):
            text = " ".join(words[(i * 5 + j) % len(words)] for j in range(12))
            f.write(json.dumps({"id": str(i), "text": f"{text} {i * 37}. 今天天气很好，我们去公园散步吧。"}) + "\n")
    return path


def test_help_tokenizer_and_data_commands_run_without_torch(tmp_path):
    """Where torch cannot be imported, every command's --help and the tokenizer and data commands still run (and
    never try to import it); off a terminal their progress is plain lines, without tqdm's carriage returns."""
    import json
    import os

    (tmp_path / "block" / "torch").mkdir(parents=True)
    (tmp_path / "block" / "torch" / "__init__.py").write_text(_NO_TORCH)
    corpus = _tiny_bilingual_corpus(tmp_path / "corpus.jsonl")
    recipe = {
        "output_dir": str(tmp_path / "pipeline"),
        "executor": {"tasks": 1, "workers": 1},
        "inputs": [{"path": str(corpus), "format": "jsonl", "source": "s"}],
        "steps": [{"type": "exact_dedup"}],
    }
    (tmp_path / "p.yaml").write_text(json.dumps(recipe))
    paths = [list(p) for p in _all_command_paths(build_parser())]
    tok, t = str(tmp_path / "tok"), tmp_path
    commands = [
        ["tokenizer", "train", str(corpus), "--out", tok, "--total", "352", "--base-size", "330", "--workers", "1"]
        + ["--chinese-chars", "10", "--chinese-words", "2", "--reserved", "10", "--fill", "none"],
        ["data", "pack", str(corpus), "-t", tok, "-o", str(t / "packed"), "--workers", "1"],
        ["data", "run", str(t / "p.yaml")],
    ]
    code = (
        "import json, sys\nfrom skyloom.cli import main\n"
        f"for path in {paths!r}:\n"
        "    try:\n        main([*path, '--help'])\n    except SystemExit as exit:\n        assert exit.code == 0, path\n"
        f"print('RC', json.dumps([main(c) for c in {commands!r}]), 'torch' in sys.modules)\n"
    )
    attempts = tmp_path / "torch-attempts.txt"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "block"), os.environ.get("PYTHONPATH", "")]),
        "SKYLOOM_TEST_TORCH_ATTEMPTS": str(attempts),
        "OMP_NUM_THREADS": "1",
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "RC [0, 0, 0] False", out.stderr[-3000:]
    assert not attempts.exists(), attempts.read_text()[-3000:]
    assert (tmp_path / "packed" / "corpus" / "index.json").is_file() and (
        tmp_path / "pipeline" / "stats.json"
    ).is_file()
    assert "\r" not in out.stderr and "pack: 100% (" in out.stderr  # progress off a terminal: log lines


def test_a_missing_optional_package_is_a_clean_error_naming_its_extra(tmp_path):
    """A command stopping on an optional package that is not installed exits 2 with the extra to install, no
    traceback; the packages are blocked in a fresh interpreter, as if absent."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("train: {}\n")
    (tmp_path / "run" / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "tokens": 10, "loss": 1.0}\n')
    (tmp_path / "p.yaml").write_text(
        '{"output_dir": "out", "inputs": [{"path": "in.jsonl", "format": "jsonl"}], "steps": [{"type": "exact_dedup"}]}'
    )
    code = (
        "import sys\n"
        "class Absent:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('datatrove', 'matplotlib'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "from skyloom.cli import main\n"
        "print(main(['data', 'run', 'p.yaml']), main(['report', 'run']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.split() == ["2", "2"], out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert out.stderr.splitlines() == [
        "skyloom: error: this command needs the package 'datatrove', which is not installed: pip install 'skyloom[data]'",
        "skyloom: error: this command needs the package 'matplotlib', which is not installed: "
        "pip install 'skyloom[report]'",
    ]


def test_what_an_import_error_asks_to_install():
    from skyloom.commandline import missing_package_message as message

    absent = ModuleNotFoundError("No module named 'lm_eval'", name="lm_eval")
    assert message(absent).endswith("not installed: pip install 'skyloom[bench]'")
    protobuf = ModuleNotFoundError("No module named 'google.protobuf'", name="google.protobuf")
    assert message(protobuf).startswith("this command needs the package 'google.protobuf'")
    assert message(protobuf).endswith("pip install 'skyloom[hf]'")
    old = ImportError("cannot import name 'GGUFWriter' from 'gguf'", name="gguf")  # installed, but too old
    assert message(old) == (
        "cannot import name 'GGUFWriter' from 'gguf' (the installed gguf does not fit this skyloom: "
        "pip install -U 'skyloom[gguf]')"
    )
    assert "install torch first" in message(ModuleNotFoundError("No module named 'torch'", name="torch"))
    written = ImportError("reading Parquet needs pyarrow: pip install 'skyloom[data]' (or pyarrow)")
    assert message(written) == str(written)  # skyloom's own advice is kept as written
    assert message(ModuleNotFoundError("No module named 'nonesuch'", name="nonesuch")) is None  # a bug: traceback


def test_a_missing_file_or_package_deep_in_a_command_exits_2_without_traceback(monkeypatch, capsys):
    """The central handler of `skyloom.cli.main`, for a command that does not catch these itself."""
    import errno

    import skyloom.cli as cli

    def parser_whose_report_raises(error):
        def build():
            parser = real_build()
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            sub.choices["report"].set_defaults(handler=lambda args: (_ for _ in ()).throw(error))
            return parser

        return build

    real_build = cli.build_parser
    gone = FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/gone.jsonl")
    monkeypatch.setattr(cli, "build_parser", parser_whose_report_raises(gone))
    assert main(["report", "RUN"]) == 2
    assert capsys.readouterr().err == "skyloom: error: /data/gone.jsonl: No such file or directory\n"
    absent = ModuleNotFoundError("No module named 'wandb'", name="wandb")
    monkeypatch.setattr(cli, "build_parser", parser_whose_report_raises(absent))
    assert main(["report", "RUN"]) == 2
    assert capsys.readouterr().err.endswith("not installed: pip install 'skyloom[wandb]'\n")
    bug = ModuleNotFoundError("No module named 'nonesuch'", name="nonesuch")
    monkeypatch.setattr(cli, "build_parser", parser_whose_report_raises(bug))
    with pytest.raises(ModuleNotFoundError):
        main(["report", "RUN"])
