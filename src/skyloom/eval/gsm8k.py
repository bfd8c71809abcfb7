"""GSM8K (report §4.2: 8-shot accuracy) by greedy generation and answer extraction.

Prompt: K worked examples — the first K records of the train split, in file order — each as
"Question: …\\nAnswer: <solution>\\n\\n" with the calculator annotations `<<48/2=24>>` removed (they are
tool traces, not reasoning text), then "Question: <test question>\\nAnswer:". Generation is greedy and
stops at a blank line, at "Question:" or at EOS; GSM8K solutions contain single newlines only.

Answer extraction from the completion: the number after the first `#### ` (the dataset's own marker,
which the exemplars teach); else the number after "answer is" / "答案是" (how chat-style models end);
else the last number in the completion. Numbers are compared as values after removing thousands
separators, currency signs and a trailing period (so "$1,234.50" and "1234.5" match).

Shots: a train file with fewer than K problems gives fewer exemplars; the result then records the number
used (`shots`, with `shots_requested` and a line in `warnings`) — the same rule and reason as the
multiple-choice benchmarks (skyloom/eval/multiple_choice.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from skyloom.eval.lm import LanguageModel, Sampling
from skyloom.eval.tasks import Task, TaskOptions
from skyloom.eval.textdata import iter_jsonl

CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")
MARKER = re.compile(r"####\s*(\$?-?[\d,]*\.?\d+)")
ANSWER_IS = re.compile(r"(?:answer is|答案是)\s*[:：]?\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+")
STOP = ("\n\n", "Question:", "</s>", "<|endoftext|>", "<|im_end|>")


def normalize_number(text: str) -> Decimal | None:
    """A numeric value from "1,234", "$5", "7.", "-3.50"; None when it is not a number."""
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    if not cleaned or cleaned in ("-", "."):
        return None
    try:
        return Decimal(cleaned).normalize()
    except InvalidOperation:
        return None


def extract_answer(completion: str) -> Decimal | None:
    """The model's final answer (see the module docstring for the order of the rules)."""
    for pattern in (MARKER, ANSWER_IS):
        match = pattern.search(completion)
        if match:
            value = normalize_number(match.group(1))
            if value is not None:
                return value
    for candidate in reversed(NUMBER.findall(completion)):
        value = normalize_number(candidate)
        if value is not None:
            return value
    return None


def gold_answer(answer: str, where: str) -> Decimal:
    match = MARKER.search(answer)
    value = normalize_number(match.group(1)) if match else None
    if value is None:
        raise ValueError(f"{where}: the reference answer has no '#### N' line")
    return value


def read_problems(path: Path) -> list[dict[str, Any]]:
    problems = []
    for number, record in iter_jsonl(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict) or "question" not in record or "answer" not in record:
            raise ValueError(f"{where}: expected an object with 'question' and 'answer'")
        problems.append({"question": record["question"], "answer": record["answer"], "where": where})
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


def format_exemplar(problem: dict[str, Any]) -> str:
    solution = CALC_ANNOTATION.sub("", problem["answer"]).strip()
    return f"Question: {problem['question'].strip()}\nAnswer: {solution}\n\n"


def build_prompt(question: str, exemplars: Sequence[dict[str, Any]]) -> str:
    return "".join(format_exemplar(e) for e in exemplars) + f"Question: {question.strip()}\nAnswer:"


def resolve_files(path: Path) -> tuple[Path, Path]:
    """(file to score, file of exemplars): a directory with test.jsonl + train.jsonl, or a test file beside train.jsonl."""
    if path.is_dir():
        test, train = path / "test.jsonl", path / "train.jsonl"
    else:
        test, train = path, path.parent / "train.jsonl"
    for p in (test, train):
        if not p.is_file():
            raise FileNotFoundError(f"GSM8K: no {p}")
    return test, train


def evaluate_gsm8k(
    lm: LanguageModel,
    path: Path,
    shots: int = 8,
    limit: int | None = None,
    max_new_tokens: int = 256,
    sampling: Sampling | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score GSM8K; returns (results JSON, per-problem records with prompt, completion and extraction)."""
    options = TaskOptions(shots=shots, limit=limit, max_new_tokens=max_new_tokens, sampling=sampling)
    return Gsm8kTask().evaluate(lm, path, options)


@dataclass
class _Problems:
    test_file: Path
    train_file: Path
    problems: list[dict[str, Any]]
    exemplars: list[dict[str, Any]]
    prompt_ids: list[list[int]] = field(default_factory=list)
    max_length: int = 0  # the model's context, recorded with the prompts


class Gsm8kTask(Task):
    """GSM8K, K-shot by greedy generation; the number after `#### ` (or the last number) is the answer."""

    name = "gsm8k"
    kind = "generation"
    default_path = "gsm8k"
    default_shots = 8

    def load(self, path: Path, options: TaskOptions) -> _Problems:
        test_file, train_file = resolve_files(path)
        problems = read_problems(test_file)
        if options.limit:
            problems = problems[: options.limit]
        exemplars = read_problems(train_file)[: options.shots] if options.shots > 0 else []
        return _Problems(test_file, train_file, problems, exemplars)

    def requests(self, lm: LanguageModel, data: _Problems, options: TaskOptions) -> list[str]:
        prompts = [build_prompt(p["question"], data.exemplars) for p in data.problems]
        data.prompt_ids, data.max_length = lm.encode_batch(prompts), lm.max_length
        return prompts

    def score(
        self, lm: LanguageModel, data: _Problems, requests: list[str], options: TaskOptions
    ) -> list[dict[str, Any]]:
        completions = lm.generate(
            data.prompt_ids,
            max_new_tokens=options.max_new_tokens,
            stop=STOP,
            sampling=options.sampling,
            desc=f"gsm8k ({len(data.problems)} problems)",
        )
        records = []
        for i, (p, prompt, completion) in enumerate(zip(data.problems, requests, completions)):
            gold = gold_answer(p["answer"], p["where"])
            predicted = extract_answer(completion)
            records.append(
                {
                    "id": f"gsm8k/{i}",
                    "where": p["where"],
                    "context": prompt,
                    "completion": completion,
                    "gold": format(gold, "f"),
                    "prediction": None if predicted is None else format(predicted, "f"),
                    "correct": predicted is not None and predicted == gold,
                }
            )
        return records

    def aggregate(self, data: _Problems, records: list[dict[str, Any]], options: TaskOptions) -> dict[str, Any]:
        shots, exemplars, max_new_tokens, sampling = (
            options.shots,
            data.exemplars,
            options.max_new_tokens,
            options.sampling,
        )
        correct = sum(r["correct"] for r in records)
        invalid = sum(r["prediction"] is None for r in records)
        digest = hashlib.sha256()
        for r in records:
            digest.update(
                json.dumps({"id": r["id"], "context": r["context"]}, ensure_ascii=False, sort_keys=True).encode("utf-8")
                + b"\n"
            )
        n = len(records)
        truncated = sum(len(ids) > data.max_length - max_new_tokens for ids in data.prompt_ids)
        warnings = (
            [
                f"gsm8k: {data.train_file} has {len(exemplars)} problem(s), fewer than the {shots} exemplars "
                f"asked for; scored {len(exemplars)}-shot"
            ]
            if len(exemplars) < shots
            else []
        )
        return {
            "task": "gsm8k",
            "kind": "generation",
            "path": str(data.test_file),
            "shots": len(exemplars),
            "shots_requested": shots,
            "warnings": warnings,
            "limit": options.limit,
            "overall": {"acc": correct / n if n else float("nan"), "n": n, "invalid": invalid},
            "subjects": {"gsm8k": {"n": n, "acc": correct / n if n else float("nan"), "shots": len(exemplars)}},
            "generation": {
                "max_new_tokens": max_new_tokens,
                "stop": list(STOP),
                "sampling": vars(sampling) if sampling else "greedy",
            },
            "prompt_sha256": digest.hexdigest(),
            "truncated_prompts": truncated,
        }
