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
    assert f"SKYLOOM_SHARED_DATA=/nonexistent {tests} -p no:cacheprovider" in lines
