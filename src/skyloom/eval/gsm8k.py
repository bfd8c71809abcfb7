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
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Sequence

from skyloom.eval.lm import LanguageModel, Sampling
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


def evaluate_gsm8k(lm: LanguageModel, path: Path, shots: int = 8, limit: int | None = None,
                   max_new_tokens: int = 256, sampling: Sampling | None = None
                   ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score GSM8K; returns (results JSON, per-problem records with prompt, completion and extraction)."""
    test_file, train_file = resolve_files(path)
    problems = read_problems(test_file)
    if limit:
        problems = problems[:limit]
    exemplars = read_problems(train_file)[:shots] if shots > 0 else []
    prompts = [build_prompt(p["question"], exemplars) for p in problems]
    prompt_ids = lm.encode_batch(prompts)
    completions = lm.generate(prompt_ids, max_new_tokens=max_new_tokens, stop=STOP, sampling=sampling,
                              desc=f"gsm8k ({len(problems)} problems)")
    records, correct, invalid = [], 0, 0
    digest = hashlib.sha256()
    for i, (p, prompt, completion) in enumerate(zip(problems, prompts, completions)):
        gold = gold_answer(p["answer"], p["where"])
        predicted = extract_answer(completion)
        ok = predicted is not None and predicted == gold
        correct += ok
        invalid += predicted is None
        records.append({"id": f"gsm8k/{i}", "where": p["where"], "context": prompt, "completion": completion,
                        "gold": format(gold, "f"), "prediction": None if predicted is None else format(predicted, "f"),
                        "correct": ok})
        digest.update(json.dumps({"id": f"gsm8k/{i}", "context": prompt}, ensure_ascii=False,
                                 sort_keys=True).encode("utf-8") + b"\n")
    n = len(records)
    truncated = sum(len(ids) > lm.max_length - max_new_tokens for ids in prompt_ids)
    warnings = [f"gsm8k: {train_file} has {len(exemplars)} problem(s), fewer than the {shots} exemplars asked for; "
                f"scored {len(exemplars)}-shot"] if len(exemplars) < shots else []
    result = {
        "task": "gsm8k", "kind": "generation", "path": str(test_file), "shots": len(exemplars),
        "shots_requested": shots, "warnings": warnings, "limit": limit,
        "overall": {"acc": correct / n if n else float("nan"), "n": n, "invalid": invalid},
        "subjects": {"gsm8k": {"n": n, "acc": correct / n if n else float("nan"), "shots": len(exemplars)}},
        "generation": {"max_new_tokens": max_new_tokens, "stop": list(STOP),
                       "sampling": vars(sampling) if sampling else "greedy"},
        "prompt_sha256": digest.hexdigest(), "truncated_prompts": truncated,
    }
    return result, records
