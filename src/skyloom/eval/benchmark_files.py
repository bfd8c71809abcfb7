"""Readers for the Table 11 / Figure 1 benchmarks: each dataset's released files → uniform `Item`s.

An `Item` is what lm-eval 0.4.13's task YAML + utils make of one document (`doc_to_text`, `doc_to_choice`,
`doc_to_target`), so one prompt builder (skyloom/eval/benchmarks.py) serves every task:

    contexts  the question text (one), or — partial scoring, WinoGrande — the sentence up to the blank with each
              option filled in (one per option)
    targets   the answer choices (one per option), or — partial scoring — the one continuation after the blank;
              for generation (TriviaQA) the accepted answers, the first being the few-shot target
    gold      index of the right option (0 for generation)

Row layouts read (detected per row, so a file may be the dataset's own release or a Hugging Face export):

    any task   {"query", "choices", "gold"}                  the prompt text as is, choices, gold index
               {"context_options", "continuation", "gold"}   partial scoring (WinoGrande's schema)
    boolq      question, passage, answer (bool; the release) | label (0/1; SuperGLUE / HF)
    piqa       goal, sol1, sol2, label — or no label and a `<file stem>-labels.lst` beside the file (the release)
    winogrande sentence, option1, option2, answer ("1"/"2") — or a `-labels.lst` file
    arc        question.stem + question.choices[{text,label}] + answerKey (the release) | question + choices{text,label}
    hellaswag  ctx_a, ctx_b, activity_label, endings, label (int in the release, str on HF)
    race       per article: article + problems (list, or its Python repr as EleutherAI/race stores it) |
               article + questions/options/answers (the release's per-article JSON, a file each or JSON lines) |
               per question: article, question, options, answer (HF ehovy/race) — consecutive rows of one article
               are grouped into one document, as EleutherAI/race (which lm-eval reads) groups them
    triviaqa   question + answer.aliases (else answer.normalized_aliases) | the release's Question/Answer.Aliases

Errors name the file, the line and the key; they are ValueErrors, which `skyloom eval` reports as
`skyloom: error: …` (exit 2).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyloom.eval.textdata import iter_jsonl
from skyloom.tokenizer.corpus import read_text_file

RACE_LETTERS = "ABCD"


@dataclass(frozen=True)
class Item:
    index: int  # position among the scored items
    where: str  # file:line, for errors and sample logs
    contexts: tuple[str, ...]
    targets: tuple[str, ...]
    gold: int
    row: str = ""  # the source row as canonical JSON: lm-eval's sampler tells an item from an exemplar by the row

    @property
    def partial(self) -> bool:
        """Partial scoring: several contexts, one continuation (WinoGrande)."""
        return len(self.contexts) > 1


class RowError(ValueError):
    """A row that does not have what its layout needs; the message names file:line and the key."""


def _need(row: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in row:
        raise RowError(f"{where}: missing key {key!r} (keys: {', '.join(map(str, row))})")
    value = row[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RowError(f"{where}: key {key!r} should be {names}, got {type(value).__name__}")
    return value


def _strings(value: Any, key: str, where: str, count: int | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RowError(f"{where}: key {key!r} should be a non-empty list of strings")
    if count is not None and len(value) != count:
        raise RowError(f"{where}: key {key!r} has {len(value)} entries, expected {count}")
    return tuple(value)


def _index(value: Any, n: int, key: str, where: str) -> int:
    """A gold index from an int, a digit string or a bool (BoolQ's answer)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or not 0 <= value < n:
        raise RowError(f"{where}: key {key!r} = {value!r} is not an option index in 0..{n - 1}")
    return value


def generic(row: dict[str, Any], where: str) -> tuple[tuple[str, ...], tuple[str, ...], int] | None:
    """The two common layouts, or None when the row is in neither."""
    if "query" in row and "choices" in row:
        choices = _strings(row["choices"], "choices", where)
        return (_need(row, "query", where),), choices, _index(row.get("gold"), len(choices), "gold", where)
    if "context_options" in row:
        contexts = _strings(row["context_options"], "context_options", where)
        continuation = _need(row, "continuation", where)
        return contexts, (continuation,), _index(row.get("gold"), len(contexts), "gold", where)
    return None


# ---- one function per dataset: (row, where, label from a labels file or None) → (contexts, targets, gold) ----


def boolq_row(row: dict[str, Any], where: str, label: Any) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    passage, question = _need(row, "passage", where), _need(row, "question", where)
    key = "label" if "label" in row else "answer"
    value = row.get(key, label)
    if value is None:
        raise RowError(f"{where}: missing key 'answer' (or 'label')")
    return (f"{passage}\nQuestion: {question}?\nAnswer:",), ("no", "yes"), _index(value, 2, key, where)


def piqa_row(row: dict[str, Any], where: str, label: Any) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    goal, sol1, sol2 = (_need(row, k, where) for k in ("goal", "sol1", "sol2"))
    value = row.get("label", label)
    if value is None:
        raise RowError(f"{where}: missing key 'label' (and no -labels.lst file beside it)")
    return (f"Question: {goal}\nAnswer:",), (sol1, sol2), _index(value, 2, "label", where)


def winogrande_row(row: dict[str, Any], where: str, label: Any) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    """lm-eval's preprocess_winogrande: contexts = sentence up to "_" with each option, target = the rest."""
    sentence, option1, option2 = (_need(row, k, where) for k in ("sentence", "option1", "option2"))
    if "_" not in sentence:
        raise RowError(f"{where}: key 'sentence' has no blank '_'")
    value = row.get("answer") or label  # the release's test rows carry answer "" (labels, if any, apart)
    if value in (None, ""):
        raise RowError(f"{where}: missing key 'answer' (and no -labels.lst file beside it)")
    gold = _index(str(value).strip(), 3, "answer", where) - 1
    if gold < 0:
        raise RowError(f"{where}: key 'answer' = {value!r} is not 1 or 2")
    blank = sentence.index("_")
    return (sentence[:blank] + option1, sentence[:blank] + option2), (sentence[blank + 1 :].strip(),), gold


def arc_row(row: dict[str, Any], where: str, label: Any) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    question = row.get("question")
    if isinstance(question, dict):  # the release: question.stem, question.choices[{text, label}]
        stem = _need(question, "stem", f"{where}: question")
        choices = question.get("choices")
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise RowError(f"{where}: key 'question.choices' should be a list of {{text, label}} objects")
        texts = _strings([c.get("text") for c in choices], "question.choices[].text", where)
        labels = _strings([c.get("label") for c in choices], "question.choices[].label", where)
    else:
        stem = _need(row, "question", where)
        choices = _need(row, "choices", where, dict)
        texts = _strings(choices.get("text"), "choices.text", where)
        labels = _strings(choices.get("label"), "choices.label", where, len(texts))
    key = _need(row, "answerKey", where)
    if key not in labels:
        raise RowError(f"{where}: key 'answerKey' = {key!r} is not one of the labels {', '.join(labels)}")
    return (f"Question: {stem}\nAnswer:",), texts, labels.index(key)


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's hellaswag/utils.py `preprocess` (WikiHow's bracket artefacts removed)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_row(row: dict[str, Any], where: str, label: Any) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    ctx_a, ctx_b, activity = (_need(row, k, where) for k in ("ctx_a", "ctx_b", "activity_label"))
    endings = _strings(row.get("endings"), "endings", where)
    query = hellaswag_preprocess(activity + ": " + ctx_a + " " + ctx_b.capitalize())
    choices = tuple(hellaswag_preprocess(e) for e in endings)
    value = row.get("label", label)
    if value in (None, ""):
        raise RowError(f"{where}: missing key 'label'")
    return (query,), choices, _index(value, len(choices), "label", where)


def triviaqa_row(row: dict[str, Any], where: str, label: Any) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    if "Question" in row and "question" not in row:  # the release's JSON
        row = {"question": row["Question"], "answer": row.get("Answer")}
        aliases_keys = ("Aliases", "NormalizedAliases")
    else:
        aliases_keys = ("aliases", "normalized_aliases")
    question = _need(row, "question", where)
    answer = _need(row, "answer", where, dict)
    key = next((k for k in aliases_keys if answer.get(k)), None)
    if key is None:
        raise RowError(f"{where}: key 'answer' has no {' or '.join(repr(k) for k in aliases_keys)}")
    return (f"Question: {question}?\nAnswer:",), _strings(answer[key], f"answer.{key}", where), 0


def race_problems(article: str, problems: list[dict[str, Any]], where: str) -> tuple[tuple[str, ...], tuple, int]:
    """lm-eval's preprocess_race: earlier questions of the article answered in the context, the last one scored."""
    checked = []
    for k, p in enumerate(problems):
        at = f"{where}: problems[{k}]"
        if not isinstance(p, dict):
            raise RowError(f"{at} should be an object with question, options, answer")
        options = _strings(p.get("options"), "options", at, 4)
        answer = _need(p, "answer", at)
        if answer not in RACE_LETTERS:
            raise RowError(f"{at}: key 'answer' = {answer!r} is not one of A, B, C, D")
        checked.append((_need(p, "question", at), options, RACE_LETTERS.index(answer)))
    if not checked:
        raise RowError(f"{where}: no questions")
    text = "Article: " + article + "\n\n"
    for question, options, gold in checked[:-1]:
        if question[-6:] == "  _  .":
            text += question[:-5] + options[gold] + "\n"
        else:
            text += "Question: " + question + "\n" + "Answer: " + options[gold] + "\n"
    question, options, gold = checked[-1]
    return (text + question,), options, gold


def race_article(row: dict[str, Any], where: str) -> tuple[tuple[str, ...], tuple, int]:
    """One article in EleutherAI/race's layout (problems, possibly as a Python repr) or the release's."""
    article = _need(row, "article", where)
    if "problems" in row:
        problems = row["problems"]
        if isinstance(problems, str):
            try:
                problems = ast.literal_eval(problems)
            except (ValueError, SyntaxError):
                raise RowError(f"{where}: key 'problems' is not a list literal") from None
        if not isinstance(problems, list):
            raise RowError(f"{where}: key 'problems' should be a list")
        return race_problems(article, problems, where)
    questions = _need(row, "questions", where, list)
    options = _need(row, "options", where, list)
    answers = _need(row, "answers", where, list)
    if not len(questions) == len(options) == len(answers):
        raise RowError(f"{where}: 'questions', 'options' and 'answers' differ in length")
    problems = [{"question": q, "options": o, "answer": a} for q, o, a in zip(questions, options, answers)]
    return race_problems(article, problems, where)


ROW_READERS: dict[str, Callable[[dict[str, Any], str, Any], tuple[tuple[str, ...], tuple[str, ...], int]]] = {
    "boolq": boolq_row,
    "piqa": piqa_row,
    "winogrande": winogrande_row,
    "arc": arc_row,
    "hellaswag": hellaswag_row,
    "triviaqa": triviaqa_row,
}


def _labels_beside(path: Path) -> list[str] | None:
    """The release's separate answers (`train-labels.lst` beside `train.jsonl`), one per line; None if absent."""
    stem = path.name.split(".")[0]
    labels = path.with_name(f"{stem}-labels.lst")
    if not labels.is_file():
        return None
    return [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, row) of a .jsonl file, a .json file holding a list (or TriviaQA's {"Data": [...]}), or one object."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    if name.endswith(".jsonl"):
        for number, row in iter_jsonl(path):
            yield f"{path}:{number}", row
        return
    try:
        payload = json.loads(read_text_file(path))
    except json.JSONDecodeError as err:
        raise RowError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if isinstance(payload, dict) and isinstance(payload.get("Data"), list):
        payload = payload["Data"]
    rows = payload if isinstance(payload, list) else [payload]
    for k, row in enumerate(rows):
        yield (f"{path}:item {k}" if isinstance(payload, list) else str(path)), row


def _race_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Articles of a RACE file or folder; consecutive per-question rows of one article (same text and example_id) are
    grouped."""
    files = [path]
    if path.is_dir():  # the release's numbered files, in numeric order (2.txt before 10.txt)
        found = [p for p in path.rglob("*") if p.is_file() and p.suffix in (".txt", ".json")]
        files = sorted(found, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])
    pending: tuple[str, str, Any, list[dict[str, Any]]] | None = None  # where, article, example_id, problems
    for file in files:
        for where, row in _json_rows(file):
            if not isinstance(row, dict):
                raise RowError(f"{where}: expected a JSON object")
            if "question" in row and "problems" not in row and "questions" not in row:
                article, example = _need(row, "article", where), row.get("example_id")
                problem = {"question": row.get("question"), "options": row.get("options"), "answer": row.get("answer")}
                if pending and (pending[1], pending[2]) == (article, example):
                    pending[3].append(problem)
                    continue
                if pending:
                    yield pending[0], {"article": pending[1], "problems": pending[3]}
                pending = (where, article, example, [problem])
                continue
            if pending:
                yield pending[0], {"article": pending[1], "problems": pending[3]}
                pending = None
            yield where, row
    if pending:
        yield pending[0], {"article": pending[1], "problems": pending[3]}


def read_items(dataset: str, path: Path, limit: int | None = None) -> list[Item]:
    """The items of one split file (or, for RACE, folder) of `dataset` (a key of ROW_READERS, or "race")."""
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    rows = _race_rows(path) if dataset == "race" else _json_rows(path)
    labels = None if dataset == "race" or path.is_dir() else _labels_beside(path)
    items: list[Item] = []
    for k, (where, row) in enumerate(rows):
        if limit is not None and len(items) >= limit:
            break
        if not isinstance(row, dict):
            raise RowError(f"{where}: expected a JSON object, got {type(row).__name__}")
        parsed = generic(row, where)
        if parsed is None:
            if dataset == "race":
                parsed = race_article(row, where)
            else:
                label = None
                if labels is not None:
                    if k >= len(labels):
                        raise RowError(f"{where}: no answer for this row in {path.name.split('.')[0]}-labels.lst")
                    label = labels[k]
                parsed = ROW_READERS[dataset](row, where, label)
        key = json.dumps([row, labels[k] if labels else None], sort_keys=True, ensure_ascii=False)
        items.append(Item(len(items), where, *parsed, row=key))
    if not items:
        raise RowError(f"{path}: no items")
    return items
