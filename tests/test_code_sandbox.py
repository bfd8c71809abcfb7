"""The code sandbox (limits, failures counted), pass@k against enumeration, and the humaneval task and its refusal."""

from __future__ import annotations

import itertools
import json
import time
from math import comb
from pathlib import Path

import pytest

from skyloom.cli import main
from skyloom.eval import commands
from skyloom.eval.code_exec import (
    CodeExecutionRefused,
    Limits,
    mean_pass_at_k,
    network_isolated,
    pass_at_k,
    run_program,
)
from skyloom.eval.humaneval import HumanEvalTask, check_program, read_problems, truncate_at_stop
from skyloom.eval.tasks import TaskOptions

TINY = Path(__file__).parent / "data" / "humaneval" / "tiny.jsonl"
LIMITS = Limits(timeout_s=1.5, memory_bytes=512 << 20, file_bytes=1 << 20)
ROOMY = Limits(timeout_s=10, memory_bytes=512 << 20, file_bytes=1 << 20)  # programs that end on their own (slow CI)


@pytest.mark.parametrize("n", range(1, 7))
def test_pass_at_k_equals_enumeration(n):
    """Chance that a random k-subset of n samples (c correct) holds a correct one, counted over all subsets."""
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            exact = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
    assert mean_pass_at_k([(4, 1), (4, 0)], 1) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="at least 3 samples"):
        pass_at_k(2, 1, 3)


def test_pass_at_k_is_stable_at_large_n():
    assert 0 < pass_at_k(200, 1, 1) == pytest.approx(1 / 200)
    assert pass_at_k(1000, 3, 100) == pytest.approx(1 - comb(997, 100) / comb(1000, 100))


def _run(program: str, limits: Limits = LIMITS) -> tuple[object, float]:
    start = time.monotonic()
    result = run_program(program, limits, allow=True)
    return result, time.monotonic() - start


def test_a_correct_program_passes_and_its_output_is_captured():
    result, _ = _run("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('ran')", ROOMY)
    assert result.passed and result.status == "passed" and result.stdout == "ran\n"
    flood, _ = _run("print('y' * 100000)", ROOMY)
    assert flood.passed and len(flood.stdout) < LIMITS.output_bytes + 20 and flood.stdout.endswith("[… truncated]")


BAD_PROGRAMS = {
    "fails its test": "assert 1 == 2",
    "allocates 10 GB": "block = bytearray(10 * 1024**3)",
    "writes a large file": "with open('big', 'wb') as f:\n    f.write(b'x' * (8 << 20))",
    "opens a socket": "import socket\nsocket.socket().connect(('127.0.0.1', 9))",
    # bounded on purpose: were forking allowed, this makes 20 short-lived children, not a bomb
    "forks repeatedly": "import posix\nfor _ in range(20):\n    if posix.fork() == 0:\n        posix._exit(0)",
    "starts a thread": "import threading\nthreading.Thread(target=print).start()",
    "calls os.system": "import os\nos.system('echo escaped')",
    "calls subprocess": "import subprocess\nsubprocess.run(['echo', 'escaped'])",
    "exits early with 0": "import sys\nsys.exit(0)",
    "os._exit(0) early": "import os\nos._exit(0)",
}


@pytest.mark.parametrize("what", list(BAD_PROGRAMS))
def test_misbehaving_programs_fail_quickly(what):
    result, elapsed = _run(BAD_PROGRAMS[what], ROOMY)
    assert not result.passed and result.status == "failed", (what, result)  # stopped by a limit, not the clock
    assert "escaped" not in result.stdout
    assert elapsed < ROOMY.timeout_s


def test_an_endless_loop_is_stopped_at_the_timeout():
    result, elapsed = _run("while True:\n    pass")
    assert result.status == "timeout" and not result.passed
    assert LIMITS.timeout_s <= elapsed < LIMITS.timeout_s + 3


@pytest.mark.skipif(not network_isolated(), reason="no unprivileged network namespace on this kernel")
def test_no_network_even_past_the_python_guard():
    result, _ = _run("import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('1.1.1.1', 80))", ROOMY)
    assert not result.passed and "unreachable" in result.stderr


def test_nothing_runs_without_permission(tmp_path):
    with pytest.raises(CodeExecutionRefused, match="--allow-code-execution"):
        run_program("print(1)")
    with pytest.raises(CodeExecutionRefused):
        HumanEvalTask().load(TINY, TaskOptions())


def test_the_cli_refuses_before_loading_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(commands, "_load", lambda *a: pytest.fail("the model was loaded"))
    out = tmp_path / "bench.json"
    rc = main(["eval", "bench", "--model", str(tmp_path), "--task", f"humaneval:{TINY}", "--output", str(out)])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "skyloom: error:" in err and "--allow-code-execution" in err


class _ScriptedLM:
    """Returns scripted completions in request order (n per problem), followed by text past a stop sequence."""

    name, max_length = "scripted", 4096

    def __init__(self, completions: list[str]):
        self.completions, self.requests = completions, []

    def encode_batch(self, texts):
        return [[i + 1] for i, _ in enumerate(texts)]

    def generate(self, prompts, max_new_tokens, stop, sampling=None, desc=""):
        self.requests.append(list(prompts))
        assert "\ndef" in stop and len(prompts) == len(self.completions)
        return [c + "\ndef junk():\n    raise SystemExit(1)" for c in self.completions]

    def describe(self):
        return {"name": self.name}


COMPLETIONS = [
    "    return a + b\n",  # add: right
    "    return a - b\n",  # add: wrong
    "    while True:\n        pass\n",  # add: loops
    "    return s.split()[0]\n",  # first_word: right
    "    return s\n",  # first_word: wrong
    "    return s.split(' ')[0]\n",  # first_word: right
]


def test_humaneval_cli_with_permission_computes_pass_at_k(tmp_path, monkeypatch):
    lm = _ScriptedLM(COMPLETIONS)
    monkeypatch.setattr(commands, "_load", lambda *a: lm)
    out = tmp_path / "bench.json"
    argv = ["eval", "bench", "--model", str(tmp_path), "--task", f"humaneval:{TINY}", "--output", str(out)]
    argv += [
        "--allow-code-execution",
        "--samples",
        "3",
        "--pass-k",
        "1,2",
        "--code-timeout",
        "2",
        "--temperature",
        "0.8",
    ]
    assert main(argv) == 0
    result = json.loads(out.read_text())["tasks"]["humaneval"]
    assert result["overall"]["pass@1"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert result["overall"]["pass@2"] == pytest.approx((pass_at_k(3, 1, 2) + pass_at_k(3, 2, 2)) / 2)
    assert result["execution"]["timeouts"] == 1 and result["overall"]["samples"] == 3
    assert len(lm.requests[0]) == 6  # each prompt asked for 3 times


def test_program_layout_and_stop_truncation():
    problem = read_problems(TINY)[0]
    completion = truncate_at_stop("    return a + b\n\nif __name__ == '__main__':\n    print(1)")
    assert completion == "    return a + b\n"
    program = check_program(problem, completion)
    assert program == problem["prompt"] + completion + "\n" + problem["test"] + "\ncheck(add)"
    assert run_program(program, ROOMY, allow=True).passed


def test_bad_problem_file_is_named(tmp_path):
    bad = tmp_path / "he.jsonl"
    bad.write_text('{"task_id": "x", "prompt": "p", "test": "t"}\n')
    with pytest.raises(ValueError, match=r"he.jsonl:1: expected string fields entry_point"):
        read_problems(bad)
