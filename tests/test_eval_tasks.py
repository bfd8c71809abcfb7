"""Eval tasks by name: a task written against the protocol (load → requests → score → aggregate) and registered
from a test module runs through `skyloom eval bench`, and inside a training run through the Evaluator callback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from skyloom.eval import tasks as task_registry
from skyloom.eval.bench import parse_task, run_task
from skyloom.eval.tasks import Task, TaskOptions, register_task
from tests.train_helpers import tiny_run_config, train_corpus, write_config  # noqa: F401  (train_corpus: a fixture)


class TinyChoice(Task):
    """Each JSONL line: {"context", "options", "answer"}; the option with the highest log-likelihood is chosen."""

    name = "tiny-choice"
    kind = "multiple_choice"

    def load(self, path: Path, options: TaskOptions) -> list[dict[str, Any]]:
        items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return items[: options.limit] if options.limit else items

    def requests(self, lm, data, options):
        contexts = lm.encode_batch([item["context"] for item in data])
        return [[(ctx, lm.encode(" " + o)) for o in item["options"]] for item, ctx in zip(data, contexts)]

    def score(self, lm, data, requests, options):
        flat = lm.loglikelihood([pair for pairs in requests for pair in pairs])
        records, k = [], 0
        for i, item in enumerate(data):
            lls = [ll for ll, _ in flat[k : k + len(item["options"])]]
            k += len(item["options"])
            best = max(range(len(lls)), key=lls.__getitem__)
            records.append({"id": f"tiny/{i}", "prediction": best, "correct": best == item["answer"]})
        return records

    def aggregate(self, data, records, options):
        n = len(records)
        acc = sum(r["correct"] for r in records) / n
        return {
            "task": self.name,
            "kind": self.kind,
            "shots": 0,
            "overall": {"acc": acc, "n": n},
            "subjects": {self.name: {"n": n, "acc": acc, "acc_norm": acc}},
            "prompt_sha256": "0" * 64,
        }


ITEMS = [
    {"context": "The cat sat on the", "options": ["mat", "integral of the function"], "answer": 0},
    {"context": "One, two, three,", "options": ["four", "seventeen thousand"], "answer": 0},
    {"context": "Water is", "options": ["wet", "a long word list"], "answer": 1},
    {"context": "Red, green,", "options": ["blue", "yellow orange purple"], "answer": 0},
]


@pytest.fixture
def tiny_task(tmp_path):
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in ITEMS), encoding="utf-8")
    register_task("tiny-choice", TinyChoice)
    yield path
    task_registry._REGISTERED.pop("tiny-choice", None)


class ShortestWins:
    """A stand-in model: log p(continuation) = -(its length), so the shortest option is always chosen."""

    max_length = 64

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def loglikelihood(self, requests, desc=""):
        return [(-float(len(cont)), False) for _, cont in requests]


def test_a_registered_task_is_scored_through_the_protocol(tiny_task):
    result, records = run_task(ShortestWins(), parse_task(f"tiny-choice:{tiny_task}"))
    assert [r["prediction"] for r in records] == [0, 0, 0, 0]
    assert result["overall"] == {"acc": 0.75, "n": 4}
    result, _ = run_task(ShortestWins(), parse_task(f"tiny-choice:{tiny_task}"), limit=2)
    assert result["overall"]["n"] == 2


def test_unknown_and_pathless_tasks_are_named(tiny_task):
    with pytest.raises(ValueError, match="did you mean 'tiny-choice'"):
        parse_task("tiny-choise")
    with pytest.raises(ValueError, match="'tiny-choice' needs a path"):
        parse_task("tiny-choice")
    assert "tiny-choice" in task_registry.task_names() and "ceval" in task_registry.task_names()


def test_eval_bench_runs_a_registered_task_by_name(tiny_task, tmp_path, capsys):
    from skyloom.cli import main
    from tests.test_eval_fixtures import tiny_checkpoint

    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "eval",
                "bench",
                "--model",
                str(tiny_checkpoint()),
                "--task",
                f"tiny-choice:{tiny_task}",
                "--no-progress",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert "| tiny-choice | 0 | 4 |" in capsys.readouterr().out
    result = json.loads(out.read_text())["tasks"]["tiny-choice"]
    assert result["overall"]["n"] == 4 and 0 <= result["overall"]["acc"] <= 1


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_evaluator_callback_logs_task_scores_during_training(train_corpus, tiny_task, tmp_path):
    from skyloom.cli import main
    from skyloom.eval.correlate import read_metrics

    cfg = tiny_run_config(
        train_corpus,
        train={"max_steps": 4},
        validation={"every": 3},
        callbacks={"evaluator": {"tasks": [f"tiny-choice:{tiny_task}"], "every": 2, "at_validation": True}},
    )
    run = tmp_path / "run"
    assert main(["train", str(write_config(cfg, tmp_path / "run.yaml")), "--out", str(run)]) == 0
    lines = _metrics(run)
    bench = [x for x in lines if x["kind"] == "bench"]
    # every 2 steps, and after the validation at step 3 (step 4 is also the last validation: scored once)
    assert [x["step"] for x in bench] == [2, 3, 4] and {x["task"] for x in bench} == {"tiny-choice"}
    assert all(x["n"] == 4 and 0 <= x["score"] <= 1 and x["metric"] == "acc" for x in bench)
    train = {x["step"]: x for x in lines if x["kind"] == "train"}
    assert [s for s, x in sorted(train.items()) if "eval/tiny-choice" in x] == [2, 4]
    assert train[2]["eval/tiny-choice"] == bench[0]["score"]
    # what `eval correlate` reads back as recorded scores
    assert read_metrics(run)[1] == {"tiny-choice": {x["step"]: x["score"] for x in bench}}


@pytest.mark.parametrize(
    "args, message",
    [
        ({"tasks": ["no-such-task"], "every": 2}, "unknown task 'no-such-task'"),
        ({"tasks": ["ceval"]}, "never runs"),
        ({"tasks": ["ceval"], "every": 2, "metrics": "acc"}, "metrics"),
        ({"tasks": [f"humaneval:{Path(__file__).parent / 'data/humaneval/tiny.jsonl'}"], "every": 2}, "executes"),
    ],
)
def test_bad_evaluator_settings_are_refused_naming_the_callback(train_corpus, tmp_path, capsys, args, message):
    from skyloom.cli import main

    cfg = tiny_run_config(train_corpus, train={"max_steps": 2}, callbacks={"evaluator": args})
    assert main(["train", str(write_config(cfg, tmp_path / "run.yaml")), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyloom: error:") and "callbacks.evaluator" in err and message in err, err
