"""Math word problems: calculator-annotation checking, grading, and zero-shot evaluation in a chat template.

* Annotations: GSM8K-style solutions carry `<<expression=result>>` calculator traces. `check_annotation`
  evaluates the expression with a small arithmetic interpreter (numbers, + − × ÷ // % **, parentheses; no
  names, no calls — never `eval`) and accepts the stated result when it equals the value, or equals it rounded
  to the number of decimals the result is written with (GSM8K writes 10/3 as 3.33). All 23,716 annotations of
  the GSM8K train split check exactly (tests/test_sft_math.py).
* Grading: the final answer is extracted as in `skyloom.eval.gsm8k.extract_answer` ("#### N", then
  "the answer is N" / "答案是 N", then the last number) and compared as a decimal value; `grade` also reports
  whether every annotation of the solution checks (what SkyMath's rejection sampling requires).
* Evaluation (`eval bench --task gsm8k-chat` / `--task math-zh:FILE`): each question is put in a chat
  template (`skywork`, `plain`, or `auto` = skywork when the tokenizer has its [USER] token, else plain) with no
  exemplars (zero-shot), decoded greedily until the template's stop token / EOS, and graded.

A Chinese (or any) math set is JSONL with `question` and either `answer` holding the solution text (its final
value marked "#### N" or "答案是 N") or a numeric `final` / `label` / `gold` field.
"""

from __future__ import annotations

import ast
import hashlib
import json
import operator
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from skyloom.eval.gsm8k import ANSWER_IS, MARKER, extract_answer, normalize_number
from skyloom.eval.lm import LanguageModel, Sampling
from skyloom.eval.tasks import Task, TaskOptions
from skyloom.tokenizer.corpus import iter_records

ANNOTATION = re.compile(r"<<([^<>]*)>>")
_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


class ArithmeticError_(ValueError):
    """An annotation that is not plain arithmetic (names, calls, huge powers, division by zero …)."""


def _eval_node(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval_node(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow) and (abs(b) > 64 or abs(a) > 1e6):
            raise ArithmeticError_("power too large")
        try:
            return float(_OPS[type(node.op)](a, b))
        except (ZeroDivisionError, OverflowError) as err:
            raise ArithmeticError_(str(err)) from None
    raise ArithmeticError_(f"not arithmetic: {ast.dump(node)[:60]}")


def evaluate_expression(expr: str) -> float:
    """Value of a calculator expression as written in annotations ("48/2", "3*(4+5)", "1,200*0.5", "20%*50")."""
    text = expr.strip().replace(",", "").replace("$", "").replace("×", "*").replace("÷", "/").replace("^", "**")
    text = re.sub(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d(.])", r"(\1/100)", text)  # "20%*50"; "7%3" stays modulo
    if not text:
        raise ArithmeticError_("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ArithmeticError_(f"cannot parse {expr!r}") from None
    return _eval_node(tree)


@dataclass
class Annotation:
    expression: str
    stated: str
    value: float | None  # None when the expression is not arithmetic
    ok: bool


def check_annotation(body: str) -> Annotation:
    """`body` is the text inside << >>: "expr=result"."""
    expr, sep, stated = body.rpartition("=")
    if not sep:
        return Annotation(body, "", None, False)
    try:
        value = evaluate_expression(expr)
    except ArithmeticError_:
        return Annotation(expr, stated, None, False)
    result = normalize_number(stated.replace("%", ""))
    if result is None:
        return Annotation(expr, stated, value, False)
    r = float(result)
    ok = abs(value - r) <= 1e-6 * max(1.0, abs(r))
    if not ok:  # written rounded: 10/3 = 3.33
        decimals = len(stated.strip().rstrip(".").partition(".")[2])
        ok = abs(value - r) <= 0.5 * 10 ** (-decimals) + 1e-9
    return Annotation(expr, stated, value, ok)


def annotations(solution: str) -> list[Annotation]:
    return [check_annotation(body) for body in ANNOTATION.findall(solution)]


def gold_value(record: dict[str, Any], where: str) -> Decimal:
    """The reference final answer of a record (see the module docstring)."""
    for key in ("final", "label", "gold", "final_answer"):
        if key in record and record[key] is not None:
            value = normalize_number(str(record[key]))
            if value is None:
                raise ValueError(f"{where}: field {key!r} is not a number: {record[key]!r}")
            return value
    answer = record.get("answer")
    if not isinstance(answer, str):
        raise ValueError(f"{where}: no 'answer' text and no numeric final/label/gold field")
    for pattern in (MARKER, ANSWER_IS):
        matches = pattern.findall(answer)
        if matches:
            value = normalize_number(matches[-1])
            if value is not None:
                return value
    raise ValueError(f"{where}: the reference answer has no '#### N' or '答案是 N' / 'the answer is N'")


@dataclass
class Grade:
    correct: bool  # final answer equals the reference
    predicted: Decimal | None
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def annotations_ok(self) -> bool:
        return all(a.ok for a in self.annotations)

    @property
    def accepted(self) -> bool:
        """Correct answer and every calculator annotation checks (rejection-sampling acceptance)."""
        return self.correct and self.annotations_ok


def grade(solution: str, gold: Decimal) -> Grade:
    predicted = extract_answer(solution)
    return Grade(predicted is not None and predicted == gold, predicted, annotations(solution))


# ---- evaluation ---------------------------------------------------------------------------------------------


class _LMTokens:
    """What `skyloom.tokenizer.chat.TemplateEncoder` needs, read off a `LanguageModel` (either backend)."""

    def __init__(self, lm: LanguageModel):
        self.lm = lm
        self.source = getattr(lm, "name", "model")
        tok = getattr(lm, "tokenizer", None)
        inner = getattr(tok, "tokenizer", None)
        if inner is not None and hasattr(inner, "token_to_id"):
            self._lookup = inner.token_to_id
        elif tok is not None and hasattr(tok, "get_vocab"):
            vocab = tok.get_vocab()
            self._lookup = vocab.get
        else:
            self._lookup = lambda token: None
        self.tokenizer = self

    def token_to_id(self, token: str) -> int | None:
        return self._lookup(token)

    @property
    def eos_id(self):
        return self.lm.eos_id

    @property
    def bos_id(self):
        return self.lm.bos_id

    def encode(self, text: str) -> list[int]:
        return self.lm.encode(text)


def resolve_template(lm: LanguageModel, name: str = "auto") -> str:
    if name != "auto":
        return name
    return "skywork" if _LMTokens(lm).token_to_id("[USER]") is not None else "plain"


def read_math_problems(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"math set: no {path}")
    out = []
    for number, record in iter_records(path):  # bad JSON / UTF-8, a damaged .gz: InputError naming FILE:LINE
        where = f"{path}:{number}"
        if not isinstance(record, dict) or not isinstance(record.get("question"), str):
            raise ValueError(f"{where}: expected an object with a 'question' string")
        out.append(
            {
                "question": record["question"],
                "gold": gold_value(record, where),
                "where": where,
                "meta": {k: v for k, v in record.items() if k not in ("question", "answer")},
            }
        )
        if limit and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{path}: no problems")
    return out


def evaluate_math(
    lm: LanguageModel,
    path: Path,
    task: str = "math",
    template: str = "auto",
    limit: int | None = None,
    max_new_tokens: int = 256,
    sampling: Sampling | None = None,
    group_by: str | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Zero-shot accuracy on a math JSONL in a chat template; (results JSON, per-problem records).
    `group_by` names a record field (e.g. "steps") to report accuracy per value of it as subjects."""
    options = TaskOptions(limit=limit, max_new_tokens=max_new_tokens, sampling=sampling)
    return MathTask(task, None, template=template, group_by=group_by).evaluate(lm, path, options)


@dataclass
class _MathSet:
    path: Path
    problems: list[dict[str, Any]]
    template: str = ""  # resolved when the prompts are built
    stop: tuple[str, ...] = ()
    prompts: list[list[int]] = field(default_factory=list)  # token ids, as sent


class MathTask(Task):
    """Zero-shot math in the model's chat template, graded by final answer (and its `<<…>>` annotations)."""

    kind = "generation"
    takes_shots = False

    def __init__(self, name: str, default_path: str | None, template: str = "auto", group_by: str | None = None):
        self.name, self.default_path, self.template, self.group_by = name, default_path, template, group_by

    def load(self, path: Path, options: TaskOptions) -> _MathSet:
        return _MathSet(path, read_math_problems(path, options.limit))

    def requests(self, lm: LanguageModel, data: _MathSet, options: TaskOptions) -> list[list[int]]:
        from skyloom.tokenizer.chat import Message, TemplateEncoder, get_template

        data.template = resolve_template(lm, self.template)
        chat = get_template(data.template)
        encoder = TemplateEncoder(chat, _LMTokens(lm))
        data.stop = tuple(chat.stop_tokens) + ("<|endoftext|>", "</s>")
        data.prompts = [
            encoder.encode([Message("user", p["question"])], add_generation_prompt=True)[0] for p in data.problems
        ]
        return data.prompts

    def score(
        self, lm: LanguageModel, data: _MathSet, requests: list[list[int]], options: TaskOptions
    ) -> list[dict[str, Any]]:
        task = self.name
        completions = lm.generate(
            requests,
            max_new_tokens=options.max_new_tokens,
            stop=data.stop,
            sampling=options.sampling,
            desc=f"{task} ({len(data.problems)} problems)",
        )
        records = []
        for i, (p, completion) in enumerate(zip(data.problems, completions)):
            g = grade(completion, p["gold"])
            records.append(
                {
                    "id": f"{task}/{i}",
                    "where": p["where"],
                    "question": p["question"],
                    "completion": completion,
                    "gold": format(p["gold"], "f"),
                    "prediction": None if g.predicted is None else format(g.predicted, "f"),
                    "correct": g.correct,
                    "annotations_ok": g.annotations_ok,
                    **p["meta"],
                }
            )
        return records

    def aggregate(self, data: _MathSet, records: list[dict[str, Any]], options: TaskOptions) -> dict[str, Any]:
        subjects: dict[str, list[bool]] = {}
        for p, r in zip(data.problems, records):
            key = str(p["meta"].get(self.group_by, "?")) if self.group_by else self.name
            subjects.setdefault(key, []).append(r["correct"])
        digest = hashlib.sha256()
        for i, ids in enumerate(data.prompts):
            digest.update(json.dumps({"id": f"{self.name}/{i}", "prompt": ids}).encode() + b"\n")
        n = len(records)
        correct = sum(r["correct"] for r in records)
        return {
            "task": self.name,
            "kind": "generation",
            "path": str(data.path),
            "shots": 0,
            "template": data.template,
            "limit": options.limit,
            "overall": {
                "acc": correct / n if n else float("nan"),
                "n": n,
                "invalid": sum(r["prediction"] is None for r in records),
                "annotations_ok": sum(r["annotations_ok"] for r in records) / n if n else float("nan"),
            },
            "subjects": {
                k: {"n": len(v), "acc": sum(v) / len(v), "acc_norm": sum(v) / len(v)}
                for k, v in sorted(subjects.items())
            },
            "generation": {
                "max_new_tokens": options.max_new_tokens,
                "stop": list(data.stop),
                "sampling": vars(options.sampling) if options.sampling else "greedy",
            },
            "prompt_sha256": digest.hexdigest(),
        }
