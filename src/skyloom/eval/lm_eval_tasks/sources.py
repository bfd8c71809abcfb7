"""The documents behind skyloom's lm-eval tasks, read and rendered with skyloom's own code (no hub, no copies).

The task YAMLs name these functions (`!function skyloom.eval.lm_eval_tasks.sources.…`): each task's
`custom_dataset` reads local files with the same readers `skyloom eval bench` / `eval ppl` use, and the prompt
functions call the same formatting code, so lm-eval builds byte-identical prompts from the same files.

Where files are read from, first match wins (`--metadata KEY=VALUE` reaches the functions as keyword arguments;
lm-eval merges `--model_args` into them too):

    KEY (--metadata)   environment            default                           what
    ceval_dir          SKYLOOM_CEVAL_DIR      $SKYLOOM_SHARED_DATA/ceval        dev/ + val/ (or test/) CSVs
    cmmlu_dir          SKYLOOM_CMMLU_DIR      $SKYLOOM_SHARED_DATA/cmmlu        dev/ + test/ CSVs
    mmlu_dir           SKYLOOM_MMLU_DIR       $SKYLOOM_SHARED_DATA/mmlu         dev/ + test/ CSVs
    gsm8k_dir          SKYLOOM_GSM8K_DIR      $SKYLOOM_SHARED_DATA/gsm8k        test.jsonl + train.jsonl
    table6_dir         SKYLOOM_TABLE6_DIR     $SKYLOOM_SHARED_DATA/skywork      zh_tech.jsonl … zh_general.jsonl
    ppl_file           SKYLOOM_PPL_FILE       (required by skyloom_ppl_file)    .jsonl / .json / .txt
    ppl_field          SKYLOOM_PPL_FIELD      text (else question + answer)     the JSONL text field
    split              SKYLOOM_MC_SPLIT       test when it has answers, else val   multiple choice: split scored

`data_dir` (metadata) replaces $SKYLOOM_SHARED_DATA (default ../shared/data) for every default path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval.api.samplers import ContextSampler

from skyloom.eval.gsm8k import CALC_ANNOTATION, build_prompt, extract_answer, gold_answer, read_problems, resolve_files
from skyloom.eval.multiple_choice import (
    LETTERS,
    TEMPLATES,
    Question,
    default_eval_split,
    format_question,
    read_questions,
    subject_files,
)
from skyloom.eval.textdata import read_texts, shared_data_dir

if TYPE_CHECKING:
    from datasets import DatasetDict

log = logging.getLogger(__name__)

DEFAULTS = {
    "ceval_dir": "ceval",
    "cmmlu_dir": "cmmlu",
    "mmlu_dir": "mmlu",
    "gsm8k_dir": "gsm8k",
    "table6_dir": "skywork",
}


def setting(options: dict[str, Any], key: str, env: str) -> str | None:
    """A value from lm-eval's metadata, else the environment; None when neither sets it."""
    value = options.get(key)
    if value in (None, ""):
        value = os.environ.get(env) or None
    return None if value is None else str(value)


def data_path(options: dict[str, Any], key: str) -> Path:
    """Where one task's files are: metadata `key`, else $SKYLOOM_<KEY>, else the shared data folder's copy."""
    chosen = setting(options, key, f"SKYLOOM_{key.upper()}")
    if chosen:
        return Path(chosen).expanduser()
    root = options.get("data_dir") or shared_data_dir()
    return Path(str(root)).expanduser() / DEFAULTS[key]


def _dataset_dict(splits: dict[str, list[dict[str, Any]]]) -> DatasetDict:
    import datasets

    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def _missing(what: str, path: Path, key: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what}: no {path}; point lm-eval at your copy with --metadata {key}=DIR (or SKYLOOM_{key.upper()}=DIR)"
    )


# ---- multiple choice: C-Eval, CMMLU, MMLU ----------------------------------------------------------------------


def _question_rows(benchmark: str, questions: Sequence[Question]) -> list[dict[str, Any]]:
    template = TEMPLATES[benchmark]
    return [
        {
            "benchmark": benchmark,
            "subject": q.subject,
            "index": q.index,
            "question": q.question,
            **dict(zip(LETTERS, q.options)),
            "answer": q.answer,
            "label": LETTERS.index(q.answer),
            "header": template.header.format(subject=template.subject_name(q.subject)),
            "where": q.where,
        }
        for q in questions
    ]


def multiple_choice_dataset(benchmark: str, subject: str, **options: Any) -> DatasetDict:
    """One subject of an MMLU-format benchmark: `eval` (the scored split, as `eval bench` picks it) and `dev`
    (the few-shot exemplars, in file order)."""
    key = f"{benchmark}_dir"
    root = data_path(options, key)
    if not root.is_dir():
        raise _missing(f"skyloom_{benchmark}", root, key)
    split = setting(options, "split", "SKYLOOM_MC_SPLIT") or default_eval_split(root)
    files = subject_files(root / split)
    if subject not in files:
        raise FileNotFoundError(f"skyloom_{benchmark}_{subject}: no CSV for subject {subject!r} in {root / split}")
    dev = subject_files(root / "dev") if (root / "dev").is_dir() else {}
    exemplars = read_questions(dev[subject], subject) if subject in dev else []
    questions = read_questions(files[subject], subject)
    if not questions:
        raise ValueError(f"{files[subject]}: no questions to score")
    return _dataset_dict({"eval": _question_rows(benchmark, questions), "dev": _question_rows(benchmark, exemplars)})


def ceval_dataset(subject: str, **options: Any) -> DatasetDict:
    return multiple_choice_dataset("ceval", subject, **options)


def cmmlu_dataset(subject: str, **options: Any) -> DatasetDict:
    return multiple_choice_dataset("cmmlu", subject, **options)


def mmlu_dataset(subject: str, **options: Any) -> DatasetDict:
    return multiple_choice_dataset("mmlu", subject, **options)


def question_text(doc: dict[str, Any]) -> str:
    """The question with its options and the answer cue — `multiple_choice.format_question`, letter format."""
    q = Question(
        doc["subject"], doc["index"], doc["question"], tuple(doc[x] for x in LETTERS), doc["answer"], doc["where"]
    )  # type: ignore[arg-type]
    return format_question(q, TEMPLATES[doc["benchmark"]], "letter", with_answer=False)


class FileOrderSampler(ContextSampler):
    """The first K exemplars of the dev file in file order, as `eval bench` takes them; a dev file with fewer gives
    fewer (a warning, as in skyloom) where lm-eval's `first_n` would stop the run."""

    def sample(self, n: int, eval_doc: Any = None, df: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
        pool = list(self.fewshot_docs())
        if len(pool) < n:
            where = pool[0].get("subject", "") if pool else "a task"
            log.warning(
                "%s: %d few-shot exemplar(s), fewer than the %d asked for; using %d", where, len(pool), n, len(pool)
            )
        return pool[:n]


# ---- GSM8K -----------------------------------------------------------------------------------------------------


def gsm8k_dataset(**options: Any) -> DatasetDict:
    """GSM8K `test` (scored) and `train` (exemplars, first K in file order), from `gsm8k_dir` (a folder with
    test.jsonl + train.jsonl, or a test file beside train.jsonl)."""
    path = data_path(options, "gsm8k_dir")
    if not path.exists():
        raise _missing("skyloom_gsm8k", path, "gsm8k_dir")
    test, train = resolve_files(path)
    return _dataset_dict({"test": read_problems(test), "train": read_problems(train)})


def gsm8k_question(doc: dict[str, Any]) -> str:
    """ "Question: …\\nAnswer:" — `gsm8k.build_prompt` without exemplars."""
    return build_prompt(doc["question"], [])


def gsm8k_solution(doc: dict[str, Any]) -> str:
    """An exemplar's worked solution, calculator annotations removed (as `gsm8k.format_exemplar` writes it)."""
    return CALC_ANNOTATION.sub("", doc["answer"]).strip()


def gsm8k_process_results(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """exact_match: skyloom's answer extraction (`####`, "answer is", else the last number) compared as values."""
    predicted = extract_answer(results[0])
    return {"exact_match": float(predicted is not None and predicted == gold_answer(doc["answer"], doc["where"]))}


# ---- rolling perplexity: Table 6 and any file ------------------------------------------------------------------


def _text_rows(path: Path, field: str | None) -> list[dict[str, str]]:
    return [{"text": t} for t in read_texts(path, field)]


def table6_dataset(domain: str, **options: Any) -> DatasetDict:
    """One of Table 6's Chinese domain sets (`zh_tech` …), read as `skyloom eval ppl` reads it (field `text`)."""
    folder = data_path(options, "table6_dir")
    path = folder / f"{domain}.jsonl"
    if not path.is_file():
        raise _missing(f"skyloom_table6 ({domain})", path, "table6_dir")
    return _dataset_dict({"test": _text_rows(path, None)})


def ppl_file_dataset(**options: Any) -> DatasetDict:
    """Any evaluation file `eval ppl --data` reads (.jsonl / .json / .txt), from `ppl_file` (and `ppl_field`)."""
    chosen = setting(options, "ppl_file", "SKYLOOM_PPL_FILE")
    if not chosen:
        raise ValueError("skyloom_ppl_file: which file? pass --metadata ppl_file=PATH (or SKYLOOM_PPL_FILE=PATH)")
    return _dataset_dict(
        {"test": _text_rows(Path(chosen).expanduser(), setting(options, "ppl_field", "SKYLOOM_PPL_FIELD"))}
    )
