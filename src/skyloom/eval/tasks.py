"""Evaluation tasks by name: one protocol (load → requests → score → aggregate) and one registry.

Every benchmark — multiple choice by log-likelihood, GSM8K by generation, zero-shot math in a chat template — is
a `Task` with the same four steps and the same options, so `skyloom eval bench`, `eval correlate` and the
training loop's `Evaluator` callback run any of them by name. A new task is one file: subclass `Task` and call
`register_task("name", MyTask)` (or add it to `_builtin()` for one that ships with skyloom).

    load(path, options)            → the items to score (and exemplars …), read and checked
    requests(lm, data, options)    → one record per item with the exact prompt(s) sent to the model
    score(lm, data, reqs, options) → the records with the model's answer and whether it is correct
    aggregate(data, records, opts) → the results JSON (overall, per subject, prompt digest, warnings)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skyloom.eval.lm import LanguageModel, Sampling


@dataclass
class TaskOptions:
    """What a run of a task may set; a task ignores what does not apply to it (e.g. `fmt` for generation)."""

    shots: int = 0
    limit: int | None = None  # score only the first N items (of each subject)
    fmt: str = "letter"  # multiple choice: "letter" or "text"
    split: str | None = None  # multiple choice: split folder (default: test, or val)
    subjects: Sequence[str] | None = None  # multiple choice: subjects to score (default: all)
    max_new_tokens: int = 256  # generation budget
    sampling: Sampling | None = None  # None: greedy


class Task:
    """One benchmark. Subclasses set the class attributes and implement the four steps."""

    name: str = ""
    kind: str = ""  # "multiple_choice" or "generation" (how it is scored)
    default_path: str | None = None  # under the shared data folder; None: the task needs a path
    default_shots: int = 0
    takes_shots: bool = True  # False: always zero-shot (asking for shots gives a warning)

    def load(self, path: Path, options: TaskOptions) -> Any:
        raise NotImplementedError

    def requests(self, lm: LanguageModel, data: Any, options: TaskOptions) -> Any:
        raise NotImplementedError

    def score(self, lm: LanguageModel, data: Any, requests: Any, options: TaskOptions) -> list[dict[str, Any]]:
        raise NotImplementedError

    def aggregate(self, data: Any, records: list[dict[str, Any]], options: TaskOptions) -> dict[str, Any]:
        raise NotImplementedError

    def evaluate(
        self, lm: LanguageModel, path: Path, options: TaskOptions
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(results JSON, per-item records): the four steps in order."""
        data = self.load(path, options)
        records = self.score(lm, data, self.requests(lm, data, options), options)
        return self.aggregate(data, records, options), records


_REGISTERED: dict[str, Callable[[], Task]] = {}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make `name` runnable by `eval bench --task NAME` and the Evaluator callback (`factory()` builds the task)."""
    _REGISTERED[name.lower()] = factory


def _builtin() -> dict[str, Callable[[], Task]]:
    from skyloom.eval.benchmarks import SPECS, BenchmarkTask
    from skyloom.eval.gsm8k import Gsm8kTask
    from skyloom.eval.humaneval import HumanEvalTask
    from skyloom.eval.math import CompetitionMathTask, MathTask
    from skyloom.eval.multiple_choice import MultipleChoiceTask

    return {
        "mmlu": lambda: MultipleChoiceTask("mmlu", None),
        "ceval": lambda: MultipleChoiceTask("ceval", "ceval"),
        "cmmlu": lambda: MultipleChoiceTask("cmmlu", "cmmlu"),
        "gsm8k": Gsm8kTask,
        # zero-shot math in a chat template: GSM8K test, or any math JSONL given as PATH
        "gsm8k-chat": lambda: MathTask("gsm8k-chat", "gsm8k/test.jsonl"),
        "math-zh": lambda: MathTask("math-zh", None),
        # Table 11 / Figure 1 benchmarks with lm-eval's prompts (boolq, piqa, … triviaqa): need a PATH
        **{name: (lambda name=name: BenchmarkTask(name)) for name in SPECS},
        # MATH (competition math, LaTeX answers): minerva_math 4-shot, graded by math_grading.is_equiv
        "math": lambda: CompetitionMathTask("math", None),
        "hendrycks-math": lambda: CompetitionMathTask("hendrycks-math", None, style="hendrycks"),
        # HumanEval (code, pass@k): runs model-written programs, so only with --allow-code-execution
        "humaneval": HumanEvalTask,
    }


def task_names() -> list[str]:
    return list({**_builtin(), **_REGISTERED})


def get_task(name: str) -> Task:
    """The task registered as `name`; an unknown name is named, with the closest known one."""
    tasks = {**_builtin(), **_REGISTERED}
    key = name.strip().lower()
    if key not in tasks:
        close = difflib.get_close_matches(key, list(tasks), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"unknown task {key!r}{hint}; known: {', '.join(tasks)}")
    return tasks[key]()
