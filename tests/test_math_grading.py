"""MATH-style grading: boxed extraction, LaTeX normalisation, sympy equivalence, and the `math` task end to end."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import pytest

from skyloom.eval.math import MINERVA_EXEMPLARS, CompetitionMathTask, minerva_prompt, read_competition_math
from skyloom.eval.math_grading import (
    LatexParseError,
    extract_final_answer,
    is_equiv,
    last_boxed_only_string,
    latex_to_sympy,
    normalize_answer,
    strip_equal,
)
from skyloom.eval.tasks import TaskOptions, get_task


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        (r"so $\boxed{\frac{1}{\sqrt{2}}}$.", r"\boxed{\frac{1}{\sqrt{2}}}"),  # nested braces
        (r"first \boxed{1}, then \boxed{{a}^{2}+\{b\}}", r"\boxed{{a}^{2}+\{b\}}"),  # the last one
        (r"$\fbox{7}$", r"\fbox{7}"),
        (r"\boxed 5$ and", r"\boxed 5"),
        (r"\boxed{unclosed", None),
        ("no box here", None),
    ],
)
def test_last_boxed_only_string(text, boxed):
    assert last_boxed_only_string(text) == boxed


@pytest.mark.parametrize(
    ("completion", "answer"),
    [
        (
            r"Thus $x = \boxed{\dfrac{3}{4}}$. Final Answer: The final answer is $9$. I hope it is correct.",
            r"\dfrac{3}{4}",
        ),
        ("Hence.\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.", "$-\\frac{2}{3}$"),
        ("Final Answer: The final answer is $16$. I hope", "$16$"),  # cut off by the stop sequence
        ("So the answer is 42.", "42"),
        ("We get\n$x=7$", "x=7"),
        ("   ", None),
    ],
)
def test_extract_final_answer(completion, answer):
    assert extract_final_answer(completion) == answer


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        (r"\tfrac12", r"\frac{1}{2}"),
        ("0.5", r"\frac{1}{2}"),
        ("3/4", r"\frac{3}{4}"),
        (r"a^{2}", "a^2"),
        (r"10^\circ", "10"),
        (r"90^{\circ}", "90"),
        (r"\$5", "5"),
        (r"5 \text{ cm}", "5"),
        (r"12 \text{inches}", "12"),
        ("1,000,000", "1000000"),
        (r"50\%", "50"),
        ("x = 3", "3"),
        (".5", r"\frac{1}{2}"),
        (r"\sqrt3", r"\sqrt{3}"),
        (r"\!4", "4"),
        ("7.", "7"),
        (r"\text{(B)}", "(B)"),
    ],
)
def test_normalisation_table(raw, normalised):
    assert normalize_answer(raw) == normalised


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (r"\frac{3}{4}", "0.75"),
        (r"\frac{\sqrt{2}}{2}", r"\frac{1}{\sqrt{2}}"),
        ("x^2+2x+1", "(x+1)^2"),
        (r"2\pi", r"\pi \cdot 2"),
        (r"\sqrt[3]{8}", "2"),
        (r"\frac{1}{2}x", r"\frac{x}{2}"),
        (r"(\frac{1}{2}, 3)", "(0.5,3)"),
        ("6", r"2 \times 3"),
        (r"-\frac{2}{3}", r"\frac{-2}{3}"),
        (r"\infty", r"\infty"),
    ],
)
def test_sympy_equivalences(a, b):
    assert is_equiv(a, b) and is_equiv(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("0.333", r"\frac{1}{3}"),  # decimals are exact rationals, not rounded
        ("(1,2)", "[1,2)"),  # interval brackets matter
        ("(1,2)", "(1,2,3)"),
        ("x+1", "x+2"),
        (r"\sqrt{2}", "1.414"),
        ("2", "-2"),
        (r"\infty", r"-\infty"),
        ("", ""),
        (None, "1"),
    ],
)
def test_sympy_non_equivalences(a, b):
    assert not is_equiv(a, b)


def test_pathological_answers_are_wrong_fast():
    start = time.monotonic()
    assert not is_equiv("10^{10^{10}}", "1")  # exponent cap
    assert not is_equiv("(" * 3000 + "1" + ")" * 3000, "1")  # too long to parse
    assert not is_equiv(r"\int_0^1 x dx", r"\frac12")  # outside the parsed forms: a string mismatch
    assert time.monotonic() - start < 5
    with pytest.raises(LatexParseError):
        latex_to_sympy(r"\log x")


def test_exemplars_are_lm_evals_byte_for_byte():
    """The four minerva_math exemplars, read from lm-eval's own source (its module needs antlr4 to import)."""
    lm_eval = pytest.importorskip("lm_eval")
    src = (Path(lm_eval.__file__).parent / "tasks" / "minerva_math" / "utils.py").read_text(encoding="utf-8")
    fn = next(n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    theirs = ast.literal_eval(fn.body[0].value)
    assert [(e["problem"], e["solution"]) for e in theirs] == [(e["problem"], e["solution"]) for e in MINERVA_EXEMPLARS]
    prompt = minerva_prompt("What is $1+1$?", 1)
    assert prompt == (
        f"Problem:\n{theirs[0]['problem']}\n\nSolution: {theirs[0]['solution']}\n\nProblem:\nWhat is $1+1$?\n\nSolution:"
    )


def _write_math_tree(root: Path) -> Path:
    """The released MATH layout: test/<type>/<id>.json with problem/level/type/solution."""
    for kind, number, problem, solution in [
        ("algebra", 2, "Half of one?", r"It is $\boxed{\frac{1}{2}}$."),
        ("algebra", 10, "Two squared?", r"$\boxed{4}$"),
        ("geometry", 1, "Interval?", r"The set is $\boxed{[2,5)}$."),
    ]:
        folder = root / "test" / kind
        folder.mkdir(parents=True, exist_ok=True)
        record = {"problem": problem, "level": "Level 1", "type": kind.title(), "solution": solution}
        (folder / f"{number}.json").write_text(json.dumps(record), encoding="utf-8")
    return root / "test"


def test_reads_the_released_tree_and_jsonl(tmp_path):
    problems = read_competition_math(_write_math_tree(tmp_path / "MATH"))
    assert [p["gold"] for p in problems] == [r"\frac{1}{2}", "4", "[2,5)"]  # 2.json before 10.json
    assert problems[0]["meta"] == {"level": "Level 1", "type": "Algebra"}
    jsonl = tmp_path / "math.jsonl"
    jsonl.write_text('{"problem": "p", "answer": "7"}\n{"problem": "q", "solution": "\\\\boxed{x}"}\n')
    assert [p["gold"] for p in read_competition_math(jsonl)] == ["7", "x"]
    jsonl.write_text('{"problem": "p", "solution": "no box"}\n')
    with pytest.raises(ValueError, match=r"math.jsonl:1: no 'answer'"):
        read_competition_math(jsonl)


class _ScriptedLM:
    """Answers each prompt with a fixed completion (by problem text)."""

    max_length = 4096

    def __init__(self, answers: dict[str, str]):
        self.answers, self.prompts = answers, []

    def encode_batch(self, texts):
        self.prompts = list(texts)
        return [[len(t)] for t in texts]

    def generate(self, prompts, max_new_tokens, stop, sampling=None, desc=""):
        assert "Problem:" in stop
        return [next(v for k, v in self.answers.items() if k in p) for p in self.prompts]


def test_math_task_end_to_end(tmp_path):
    task = get_task("math")
    assert isinstance(task, CompetitionMathTask) and task.default_shots == 4
    lm = _ScriptedLM(
        {
            "Half of one?": r" We get $\boxed{0.5}$."
            + "\nFinal Answer: The final answer is $0.5$. I hope it is correct.",
            "Two squared?": " Final Answer: The final answer is $2^2$. I hope it is correct.",
            "Interval?": r" It is $\boxed{(2,5)}$.",
        }
    )
    result, records = task.evaluate(lm, _write_math_tree(tmp_path / "MATH"), TaskOptions(shots=4))
    assert [r["correct"] for r in records] == [True, True, False]
    assert result["overall"]["acc"] == pytest.approx(2 / 3)
    assert result["subjects"]["Algebra"]["acc"] == 1.0 and result["subjects"]["Geometry"]["acc"] == 0.0
    assert lm.prompts[0] == minerva_prompt("Half of one?", 4)


STRIP_CASES = [
    r"\frac12",
    r"\frac1{72}",
    r"\frac{72}1",
    "0.5",
    ".5",
    "3/4",
    "a/b",
    r"\left(1,2\right)",
    r"5\text{ cm}",
    r"50\%",
    "xy=3",
    r"\sqrt3",
    r"\sqrt[3]{8}",
    r"\frac{a}b",
    "\\frac",
    r"5\text{ m}\text{ s}",
    r"\tfrac{1}{\sqrt2}",
]


def test_hendrycks_exact_match_is_lm_evals():
    """hendrycks-math grades with the reference strip_string, quirks included: same verdicts as lm-eval's."""
    reference = pytest.importorskip("lm_eval.tasks.hendrycks_math.utils")
    for a in STRIP_CASES:
        for b in STRIP_CASES + ["0.5", r"\frac{1}{2}", "3", r"\sqrt{[}3]{8}"]:
            assert strip_equal(a, b) == reference.is_equiv(a, b), (a, b)


def test_hendrycks_math_task_prompt_and_grading(tmp_path):
    task = get_task("hendrycks-math")
    assert not task.takes_shots
    lm = _ScriptedLM(
        {
            "Half of one?": r" $\frac{2}{4}$",  # equal under sympy, not under exact match
            "Two squared?": " $4$ because 2 squared is $4$",  # the span from the first to the last $
            "Interval?": " [2, 5) is the set",
        }
    )
    _, records = task.evaluate(lm, _write_math_tree(tmp_path / "MATH"), TaskOptions())
    assert lm.prompts[0] == "Problem: Half of one?\nAnswer:"
    assert [r["correct"] for r in records] == [False, False, False]
    assert records[1]["prediction"] == "4$ because 2 squared is $4"
    lm.answers["Interval?"] = "$[2,5)$"
    lm.answers["Half of one?"] = "$0.5$"
    _, records = task.evaluate(lm, _write_math_tree(tmp_path / "MATH"), TaskOptions())
    assert [r["correct"] for r in records] == [True, False, True]


def test_a_slow_sympy_comparison_is_cut_off(monkeypatch):
    import sympy

    monkeypatch.setattr(sympy, "simplify", lambda expr: time.sleep(30))
    start = time.monotonic()
    assert not is_equiv("x^2+2x+1", "(x+1)^2", timeout_s=0.3)
    assert time.monotonic() - start < 3


def test_math_through_eval_bench_specs(tmp_path):
    from skyloom.eval.bench import parse_task, run_task

    root = _write_math_tree(tmp_path / "MATH")
    lm = _ScriptedLM({"Half of one?": r"$\boxed{\frac{1}{2}}$", "Two squared?": "$\\boxed{5}$", "Interval?": ""})
    result, records = run_task(lm, parse_task(f"math:{root}"), limit=2)
    assert result["shots"] == 4 and result["overall"]["n"] == 2 and [r["correct"] for r in records] == [True, False]
    with pytest.raises(ValueError, match="at most 4 exemplars"):
        run_task(lm, parse_task(f"math:{root}"), shots=5)
