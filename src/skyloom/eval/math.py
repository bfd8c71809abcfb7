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

Competition math (`--task math:PATH`, `hendrycks-math:PATH`; `CompetitionMathTask`): MATH's released problems
with LaTeX answers, lm-eval's minerva_math 4-shot (or hendrycks_math zero-shot) prompt, graded by
`skyloom.eval.math_grading` (boxed extraction, normalisation, sympy equivalence).
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


# ---- competition math (MATH, minerva_math) -----------------------------------------------------------------

# lm-eval's minerva_math exemplars (tasks/minerva_math/utils.py `list_fewshot_samples`), byte for byte
MINERVA_EXEMPLARS: tuple[dict[str, str], ...] = (
    {
        "problem": "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.",
        "solution": "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so "
        "$x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so $5-x>0$, "
        "which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\nFinal Answer: The final "
        "answer is $[2,5)$. I hope it is correct.",
    },
    {
        "problem": "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find "
        "$\\det (\\mathbf{A} \\mathbf{B}).$",
        "solution": "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = "
        "(2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
    },
    {
        "problem": "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, "
        "how many times must Terrell lift them in order to lift the same total weight?",
        "solution": "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ "
        "pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a total of "
        "$2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve for $n$:\n"
        "\\begin{align*}\n30n&=480\\\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n\\end{align*}\nFinal Answer: "
        "The final answer is $16$. I hope it is correct.",
    },
    {
        "problem": "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\\\n6y-9x &=b.\n\\end{align*}has a "
        "solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is nonzero.",
        "solution": "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$"
        "Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}=\\boxed{-\\frac{2}"
        "{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is correct.",
    },
)
MATH_STOP = ("Problem:", "</s>", "<|endoftext|>")


def minerva_prompt(problem: str, shots: int) -> str:
    """lm-eval's minerva_math request: K exemplars as "Problem:\\n{p}\\n\\nSolution: {solution}\\n\\n", then
    "Problem:\\n{problem}\\n\\nSolution:" (doc_to_text, target delimiter " ", few-shot delimiter "\\n\\n")."""
    shown = "".join(f"Problem:\n{e['problem']}\n\nSolution: {e['solution']}\n\n" for e in MINERVA_EXEMPLARS[:shots])
    return f"{shown}Problem:\n{problem}\n\nSolution:"


def _math_record(record: Any, where: str) -> dict[str, Any]:
    from skyloom.eval.math_grading import reference_answer

    if not isinstance(record, dict) or not isinstance(record.get("problem"), str):
        raise ValueError(f"{where}: expected an object with a 'problem' string")
    gold = record.get("answer")
    if not isinstance(gold, str) or not gold.strip():
        solution = record.get("solution")
        gold = reference_answer(solution) if isinstance(solution, str) else None
        if gold is None:
            raise ValueError(f"{where}: no 'answer' string and no \\boxed{{…}} answer in 'solution'")
    meta = {k: record[k] for k in ("level", "type", "subject", "unique_id") if k in record}
    return {"problem": record["problem"], "gold": str(gold), "where": where, "meta": meta}


def read_competition_math(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """MATH problems from the released tree (DIR/**/N.json, one problem each), one .json (a problem or a list), or
    JSONL {"problem", "solution" | "answer"[, "level", "type"]}; gold = `answer`, else the solution's last box."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.json"), key=lambda p: (str(p.parent), int(p.stem) if p.stem.isdigit() else 0))
        if not files:
            raise FileNotFoundError(f"MATH: no *.json problem files under {path}")
        items = []
        for file in files:
            try:
                items.append((str(file), json.loads(file.read_text(encoding="utf-8"))))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{file}: not a JSON problem ({err})") from None
    elif path.is_file() and path.suffix == ".json":
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not JSON ({err})") from None
        loaded = loaded if isinstance(loaded, list) else [loaded]
        items = [(f"{path}[{i}]", record) for i, record in enumerate(loaded)]
    elif path.is_file():
        items = [(f"{path}:{number}", record) for number, record in iter_records(path)]
    else:
        raise FileNotFoundError(f"MATH: no {path}")
    problems = [_math_record(record, where) for where, record in items[: limit or None]]
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


@dataclass
class _CompetitionSet:
    path: Path
    problems: list[dict[str, Any]]
    shots: int
    prompts: list[str] = field(default_factory=list)
    prompt_ids: list[list[int]] = field(default_factory=list)


class CompetitionMathTask(Task):
    """MATH. style "minerva": lm-eval minerva_math's 4-shot prompt, the boxed / "final answer is" answer graded by
    `math_grading.is_equiv` (normalised LaTeX, sympy where both sides parse). style "hendrycks": lm-eval
    hendrycks_math's zero-shot "Problem: …\nAnswer:", the span between the first and last `$` (or the whole
    completion), graded as its exact_match: equal after `strip_string`, no sympy."""

    kind = "generation"
    default_shots = 4

    def __init__(self, name: str = "math", default_path: str | None = None, style: str = "minerva"):
        if style not in ("minerva", "hendrycks"):
            raise ValueError(f"MATH prompt style: minerva or hendrycks, got {style!r}")
        self.name, self.default_path, self.style = name, default_path, style
        if style == "hendrycks":
            self.default_shots, self.takes_shots = 0, False

    def load(self, path: Path, options: TaskOptions) -> _CompetitionSet:
        if self.style == "minerva" and options.shots > len(MINERVA_EXEMPLARS):
            raise ValueError(
                f"{self.name}: at most {len(MINERVA_EXEMPLARS)} exemplars (minerva's), got {options.shots}"
            )
        return _CompetitionSet(path, read_competition_math(path, options.limit), options.shots)

    def requests(self, lm: LanguageModel, data: _CompetitionSet, options: TaskOptions) -> list[str]:
        if self.style == "hendrycks":
            data.prompts = [f"Problem: {p['problem']}\nAnswer:" for p in data.problems]
        else:
            data.prompts = [minerva_prompt(p["problem"], data.shots) for p in data.problems]
        data.prompt_ids = lm.encode_batch(data.prompts)
        return data.prompts

    def score(
        self, lm: LanguageModel, data: _CompetitionSet, requests: list[str], options: TaskOptions
    ) -> list[dict[str, Any]]:
        from skyloom.eval.math_grading import dollar_span, extract_final_answer, is_equiv, strip_equal

        completions = lm.generate(
            data.prompt_ids,
            max_new_tokens=options.max_new_tokens,
            stop=MATH_STOP,
            sampling=options.sampling,
            desc=f"{self.name} ({len(data.problems)} problems)",
        )
        records = []
        for i, (p, prompt, completion) in enumerate(zip(data.problems, requests, completions)):
            hendrycks = self.style == "hendrycks"
            predicted = dollar_span(completion) if hendrycks else extract_final_answer(completion)
            records.append(
                {
                    "id": f"{self.name}/{i}",
                    "where": p["where"],
                    "context": prompt,
                    "completion": completion,
                    "gold": p["gold"],
                    "prediction": predicted,
                    "correct": (strip_equal if hendrycks else is_equiv)(predicted, p["gold"]),
                    **p["meta"],
                }
            )
        return records

    def aggregate(self, data: _CompetitionSet, records: list[dict[str, Any]], options: TaskOptions) -> dict[str, Any]:
        subjects: dict[str, list[bool]] = {}
        for p, r in zip(data.problems, records):
            subjects.setdefault(str(p["meta"].get("type", self.name)), []).append(r["correct"])
        digest = hashlib.sha256()
        for r in records:
            digest.update(json.dumps({"id": r["id"], "context": r["context"]}, ensure_ascii=False).encode() + b"\n")
        n = len(records)
        return {
            "task": self.name,
            "kind": "generation",
            "path": str(data.path),
            "shots": data.shots,
            "limit": options.limit,
            "overall": {  # micro accuracy over problems (lm-eval's hendrycks_math group: weight_by_size)
                "acc": sum(r["correct"] for r in records) / n if n else float("nan"),
                "n": n,
                "invalid": sum(r["prediction"] is None for r in records),
            },
            "subjects": {
                k: {"n": len(v), "acc": sum(v) / len(v), "acc_norm": sum(v) / len(v)} for k, v in subjects.items()
            },
            "generation": {
                "max_new_tokens": options.max_new_tokens,
                "stop": list(MATH_STOP),
                "sampling": vars(options.sampling) if options.sampling else "greedy",
            },
            "prompt_sha256": digest.hexdigest(),
        }
