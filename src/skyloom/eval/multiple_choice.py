"""Multiple-choice benchmarks in the MMLU file format (MMLU, C-Eval, CMMLU) scored by log-likelihood.

Data layout: a benchmark directory with one folder per split (`dev/` for few-shot exemplars, `test/` or
`val/` to score), one CSV per subject. Three real-world variants are read:

    MMLU   dev/<subject>_dev.csv, test/<subject>_test.csv   no header: question,A,B,C,D,answer
    C-Eval dev/<subject>_dev.csv, val/<subject>_val.csv     header id,question,A,B,C,D,answer[,explanation]
    CMMLU  dev/<subject>.csv,     test/<subject>.csv        header ,Question,A,B,C,D,Answer

Prompt (report §4.2: 5-shot; the authors' scripts, derived from Qwen's, use these headers): a subject
header once, then K exemplars from the subject's dev file in file order, each ending with its answer,
then the question. `letter` format lists the options and scores the answer letters as continuations
(" A" … in English after "Answer:", "A" … after "答案："); `text` format (cloze) shows no options and
scores each option's text. Prediction = the option with the highest log-likelihood (acc); acc_norm
divides each log-likelihood by the continuation's length in characters first (lm-evaluation-harness's
acc_norm). Overall = mean over subjects (as the authors' scripts average) and over all questions (micro).

Shots: a subject whose dev file holds fewer than K exemplars is scored with all it has, and the result
says so — `shots` per subject and overall (the fewest used), `shots_requested`, and a line in `warnings`.
A warning rather than an error because the prompt is still well-formed and the number is still a true
K'-shot score; refusing would stop a 50-subject run for one short dev file. What must not happen is a
result labelled K-shot that is not, so the numbers always carry the shots actually used.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skyloom.eval.lm import LanguageModel
from skyloom.eval.tasks import Task, TaskOptions

LETTERS = ("A", "B", "C", "D")
FORMATS = ("letter", "text")

# Subject names used in the prompt headers (C-Eval and CMMLU: the official Chinese names).
CEVAL_SUBJECTS = {
    "accountant": "注册会计师",
    "advanced_mathematics": "高等数学",
    "art_studies": "艺术学",
    "basic_medicine": "基础医学",
    "business_administration": "工商管理",
    "chinese_language_and_literature": "中国语言文学",
    "civil_servant": "公务员",
    "clinical_medicine": "临床医学",
    "college_chemistry": "大学化学",
    "college_economics": "大学经济学",
    "college_physics": "大学物理",
    "college_programming": "大学编程",
    "computer_architecture": "计算机组成",
    "computer_network": "计算机网络",
    "discrete_mathematics": "离散数学",
    "education_science": "教育学",
    "electrical_engineer": "注册电气工程师",
    "environmental_impact_assessment_engineer": "环境影响评价工程师",
    "fire_engineer": "注册消防工程师",
    "high_school_biology": "高中生物",
    "high_school_chemistry": "高中化学",
    "high_school_chinese": "高中语文",
    "high_school_geography": "高中地理",
    "high_school_history": "高中历史",
    "high_school_mathematics": "高中数学",
    "high_school_physics": "高中物理",
    "high_school_politics": "高中政治",
    "ideological_and_moral_cultivation": "思想道德修养与法律基础",
    "law": "法学",
    "legal_professional": "法律职业资格",
    "logic": "逻辑学",
    "mao_zedong_thought": "毛泽东思想和中国特色社会主义理论体系概论",
    "marxism": "马克思主义基本原理",
    "metrology_engineer": "注册计量师",
    "middle_school_biology": "初中生物",
    "middle_school_chemistry": "初中化学",
    "middle_school_geography": "初中地理",
    "middle_school_history": "初中历史",
    "middle_school_mathematics": "初中数学",
    "middle_school_physics": "初中物理",
    "middle_school_politics": "初中政治",
    "modern_chinese_history": "近代史纲要",
    "operating_system": "操作系统",
    "physician": "医师资格",
    "plant_protection": "植物保护",
    "probability_and_statistics": "概率统计",
    "professional_tour_guide": "导游资格",
    "sports_science": "体育学",
    "tax_accountant": "税务师",
    "teacher_qualification": "教师资格",
    "urban_and_rural_planner": "注册城乡规划师",
    "veterinary_medicine": "兽医学",
}
CMMLU_SUBJECTS = {
    "agronomy": "农学",
    "anatomy": "解剖学",
    "ancient_chinese": "古汉语",
    "arts": "艺术学",
    "astronomy": "天文学",
    "business_ethics": "商业伦理",
    "chinese_civil_service_exam": "中国公务员考试",
    "chinese_driving_rule": "中国驾驶规则",
    "chinese_food_culture": "中国饮食文化",
    "chinese_foreign_policy": "中国外交政策",
    "chinese_history": "中国历史",
    "chinese_literature": "中国文学",
    "chinese_teacher_qualification": "中国教师资格",
    "clinical_knowledge": "临床知识",
    "college_actuarial_science": "大学精算学",
    "college_education": "大学教育学",
    "college_engineering_hydrology": "大学工程水文学",
    "college_law": "大学法律",
    "college_mathematics": "大学数学",
    "college_medical_statistics": "大学医学统计",
    "college_medicine": "大学医学",
    "computer_science": "计算机科学",
    "computer_security": "计算机安全",
    "conceptual_physics": "概念物理学",
    "construction_project_management": "建设工程管理",
    "economics": "经济学",
    "education": "教育学",
    "electrical_engineering": "电气工程",
    "elementary_chinese": "小学语文",
    "elementary_commonsense": "小学常识",
    "elementary_information_and_technology": "小学信息技术",
    "elementary_mathematics": "初等数学",
    "ethnology": "民族学",
    "food_science": "食品科学",
    "genetics": "遗传学",
    "global_facts": "全球事实",
    "high_school_biology": "高中生物",
    "high_school_chemistry": "高中化学",
    "high_school_geography": "高中地理",
    "high_school_mathematics": "高中数学",
    "high_school_physics": "高中物理学",
    "high_school_politics": "高中政治",
    "human_sexuality": "人类性行为",
    "international_law": "国际法学",
    "journalism": "新闻学",
    "jurisprudence": "法理学",
    "legal_and_moral_basis": "法律与道德基础",
    "logical": "逻辑学",
    "machine_learning": "机器学习",
    "management": "管理学",
    "marketing": "市场营销",
    "marxist_theory": "马克思主义理论",
    "modern_chinese": "现代汉语",
    "nutrition": "营养学",
    "philosophy": "哲学",
    "professional_accounting": "专业会计",
    "professional_law": "专业法学",
    "professional_medicine": "专业医学",
    "professional_psychology": "专业心理学",
    "public_relations": "公共关系",
    "security_study": "安全研究",
    "sociology": "社会学",
    "sports_science": "体育学",
    "traditional_chinese_medicine": "中医中药",
    "virology": "病毒学",
    "world_history": "世界历史",
    "world_religions": "世界宗教",
}


@dataclass(frozen=True)
class Question:
    subject: str
    index: int  # position in its file
    question: str
    options: tuple[str, str, str, str]
    answer: str  # A-D
    where: str  # file:line, for error messages and sample logs


@dataclass(frozen=True)
class Template:
    """How one benchmark family words its prompts."""

    header: str  # with {subject}
    question_prefix: str
    answer_cue: str  # ends the question; the answer follows it
    letter_space: str  # between the cue and the letter/text (" " in English)
    names: dict[str, str] = field(default_factory=dict)

    def subject_name(self, subject: str) -> str:
        return self.names.get(subject, subject.replace("_", " "))


TEMPLATES = {
    "mmlu": Template(
        "The following are multiple choice questions (with answers) about {subject}.\n\n", "", "Answer:", " "
    ),
    "ceval": Template(
        "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n", "", "答案：", "", CEVAL_SUBJECTS
    ),
    "cmmlu": Template(
        "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n", "题目：", "答案：", "", CMMLU_SUBJECTS
    ),
}


def _norm(cell: str) -> str:
    return cell.strip().lower()


def read_questions(path: Path, subject: str) -> list[Question]:
    """Questions of one CSV (with or without a header row); errors name file:line."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return []
    header = [_norm(c) for c in rows[0]]
    columns: dict[str, int]
    if "question" in header and all(x.lower() in header for x in LETTERS) and "answer" in header:
        columns = {name: header.index(name.lower()) for name in ("question", *LETTERS, "answer")}
        body, first_line = rows[1:], 2
    else:
        if len(rows[0]) < 6:
            raise ValueError(
                f"{path}:1: expected a header with question,A,B,C,D,answer or six columns "
                f"(question,A,B,C,D,answer), got {len(rows[0])} columns"
            )
        columns = {"question": 0, "A": 1, "B": 2, "C": 3, "D": 4, "answer": 5}
        body, first_line = rows, 1
    out = []
    for i, row in enumerate(body):
        where = f"{path}:{first_line + i}"
        if not any(c.strip() for c in row):
            continue
        if len(row) <= max(columns.values()):
            raise ValueError(f"{where}: {len(row)} columns, expected at least {max(columns.values()) + 1}")
        answer = row[columns["answer"]].strip().upper()
        if answer not in LETTERS:
            raise ValueError(f"{where}: answer {row[columns['answer']]!r} is not one of A, B, C, D")
        options = tuple(row[columns[x]].strip() for x in LETTERS)
        out.append(Question(subject, len(out), row[columns["question"]].strip(), options, answer, where))  # type: ignore[arg-type]
    return out


def subject_files(split_dir: Path) -> dict[str, Path]:
    """subject → CSV file of one split folder (`<subject>_<split>.csv` or `<subject>.csv`)."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"no split folder {split_dir}")
    suffix = f"_{split_dir.name}"
    files = {}
    for p in sorted(split_dir.glob("*.csv")):
        subject = p.stem[: -len(suffix)] if p.stem.endswith(suffix) else p.stem
        files[subject] = p
    if not files:
        raise FileNotFoundError(f"{split_dir}: no CSV files")
    return files


def default_eval_split(root: Path) -> str:
    """`test` when present with answers, else `val` (C-Eval's test answers are withheld)."""
    for split in ("test", "val"):
        if (root / split).is_dir():
            files = subject_files(root / split)
            with open(next(iter(files.values())), encoding="utf-8-sig", newline="") as f:
                first = next(csv.reader(f), [])
            has_header_answer = "answer" in [_norm(c) for c in first]
            if has_header_answer or (len(first) >= 6 and first[5].strip().upper() in LETTERS):
                return split
    raise FileNotFoundError(f"{root}: no test/ or val/ folder with answers")


def format_question(q: Question, template: Template, fmt: str, with_answer: bool) -> str:
    text = template.question_prefix + q.question
    if fmt == "letter":
        text += "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, q.options))
    text += "\n" + template.answer_cue
    if with_answer:
        answer = q.answer if fmt == "letter" else q.options[LETTERS.index(q.answer)]
        text += template.letter_space + answer + "\n\n"
    return text


def build_prompt(q: Question, shots: Sequence[Question], template: Template, fmt: str) -> tuple[str, list[str]]:
    """(context, the four continuations) for one question."""
    context = template.header.format(subject=template.subject_name(q.subject))
    context += "".join(format_question(s, template, fmt, with_answer=True) for s in shots)
    context += format_question(q, template, fmt, with_answer=False)
    options = list(LETTERS) if fmt == "letter" else list(q.options)
    return context, [template.letter_space + o for o in options]


def split_pair(context_ids: list[int], whole_ids: list[int], encode_continuation) -> list[int]:
    """Continuation tokens as they fall in the tokenisation of context + continuation (lm-eval's rule); when the
    boundary merges into one token, the continuation is encoded alone instead."""
    n = len(context_ids)
    if len(whole_ids) > n and whole_ids[:n] == context_ids:
        return whole_ids[n:]
    return encode_continuation()


def requests_sha256(records: Sequence[dict[str, Any]]) -> str:
    """A digest of the exact prompts: sha256 over canonical JSON lines of (id, context, continuations)."""
    digest = hashlib.sha256()
    for r in records:
        line = json.dumps(
            {"id": r["id"], "context": r["context"], "continuations": r["continuations"]},
            ensure_ascii=False,
            sort_keys=True,
        )
        digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()


def load_benchmark(
    root: Path, split: str | None, shots: int, limit: int | None, subjects: Sequence[str] | None
) -> tuple[dict[str, list[Question]], dict[str, list[Question]], str]:
    """(questions to score per subject, few-shot exemplars per subject, split scored)."""
    if not root.is_dir():
        raise FileNotFoundError(f"no benchmark directory {root}")
    split = split or default_eval_split(root)
    files = subject_files(root / split)
    if subjects:
        unknown = sorted(set(subjects) - set(files))
        if unknown:
            raise ValueError(f"{root / split}: unknown subject(s) {', '.join(unknown)}; known: {', '.join(files)}")
        files = {s: files[s] for s in subjects}
    dev_files = subject_files(root / "dev") if shots > 0 else {}
    questions, exemplars = {}, {}
    for subject, path in files.items():
        qs = read_questions(path, subject)
        questions[subject] = qs[:limit] if limit else qs
        if shots > 0:
            if subject not in dev_files:
                raise FileNotFoundError(f"{root / 'dev'}: no exemplars for subject {subject!r}")
            exemplars[subject] = read_questions(dev_files[subject], subject)[:shots]
        else:
            exemplars[subject] = []
    return questions, exemplars, split


def evaluate_multiple_choice(
    lm: LanguageModel,
    task: str,
    root: Path,
    shots: int = 5,
    fmt: str = "letter",
    split: str | None = None,
    limit: int | None = None,
    subjects: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score one benchmark; returns (results JSON, per-question records with prompts and predictions)."""
    from skyloom.eval.tasks import TaskOptions

    options = TaskOptions(shots=shots, fmt=fmt, split=split, limit=limit, subjects=subjects)
    return MultipleChoiceTask(task, None).evaluate(lm, root, options)


@dataclass
class _Benchmark:
    root: Path
    split: str
    questions: list[Question]  # every subject's, in order
    exemplars: dict[str, list[Question]]
    template: Template
    truncated: int = 0  # prompts (with an option) longer than the model's context, set when requests are built


class MultipleChoiceTask(Task):
    """MMLU-format benchmarks (MMLU, C-Eval, CMMLU): the option with the highest log-likelihood is the answer."""

    kind = "multiple_choice"
    default_shots = 5

    def __init__(self, name: str, default_path: str | None):
        self.name, self.default_path = name, default_path

    def load(self, path: Path, options: TaskOptions) -> _Benchmark:
        if options.fmt not in FORMATS:
            raise ValueError(f"unknown format {options.fmt!r}; choose {', '.join(FORMATS)}")
        template = TEMPLATES[self.name]
        questions, exemplars, split = load_benchmark(
            path, options.split, options.shots, options.limit, options.subjects
        )
        flat = [q for qs in questions.values() for q in qs]
        if not flat:
            raise ValueError(f"{path / split}: no questions to score")
        return _Benchmark(path, split, flat, exemplars, template)

    def requests(
        self, lm: LanguageModel, data: _Benchmark, options: TaskOptions
    ) -> tuple[list[dict[str, Any]], list[tuple[list[int], list[int]]], int]:
        """(a record per question, (context ids, continuation ids) per option, prompts longer than the model)."""
        contexts = [build_prompt(q, data.exemplars[q.subject], data.template, options.fmt) for q in data.questions]
        context_ids = lm.encode_batch([c for c, _ in contexts])
        whole_ids = lm.encode_batch([context + c for context, conts in contexts for c in conts])
        records: list[dict[str, Any]] = []
        requests: list[tuple[list[int], list[int]]] = []
        truncated = 0
        for k, (q, (context, continuations), ids) in enumerate(zip(data.questions, contexts, context_ids)):
            conts = [
                split_pair(ids, whole_ids[4 * k + j], lambda c=c: lm.encode(c)) for j, c in enumerate(continuations)
            ]
            truncated += int(len(ids) + max(len(c) for c in conts) - 1 > lm.max_length)
            requests += [(ids, c) for c in conts]
            records.append(
                {
                    "id": f"{q.subject}/{q.index}",
                    "subject": q.subject,
                    "where": q.where,
                    "context": context,
                    "continuations": continuations,
                    "answer": q.answer,
                }
            )
        return records, requests, truncated

    def score(self, lm: LanguageModel, data: _Benchmark, requests: Any, options: TaskOptions) -> list[dict[str, Any]]:
        records, pairs, data.truncated = requests
        scores = lm.loglikelihood(pairs, desc=f"{self.name} ({len(records)} questions)")
        for k, r in enumerate(records):
            lls = np.array([s[0] for s in scores[4 * k : 4 * k + 4]])
            lengths = np.array([max(len(c), 1) for c in r["continuations"]], dtype=np.float64)
            gold = LETTERS.index(r["answer"])
            r["loglikelihoods"] = lls.tolist()
            r["prediction"] = LETTERS[int(np.argmax(lls))]
            r["prediction_norm"] = LETTERS[int(np.argmax(lls / lengths))]
            r["correct"] = int(np.argmax(lls)) == gold
            r["correct_norm"] = int(np.argmax(lls / lengths)) == gold
        return records

    def aggregate(self, data: _Benchmark, records: list[dict[str, Any]], options: TaskOptions) -> dict[str, Any]:
        task, shots, exemplars = self.name, options.shots, data.exemplars
        per_subject: dict[str, dict[str, Any]] = {}
        for r in records:
            s = per_subject.setdefault(r["subject"], {"n": 0, "correct": 0, "correct_norm": 0})
            s["n"] += 1
            s["correct"] += r["correct"]
            s["correct_norm"] += r["correct_norm"]
        subjects_out = {}
        for subject, s in per_subject.items():
            subject_records = [r for r in records if r["subject"] == subject]
            subjects_out[subject] = {
                "n": s["n"],
                "acc": s["correct"] / s["n"],
                "acc_norm": s["correct_norm"] / s["n"],
                "shots": len(exemplars[subject]),
                "prompt_sha256": requests_sha256(subject_records),
            }
        short = {name: s["shots"] for name, s in subjects_out.items() if s["shots"] < shots}
        warnings = (
            [
                f"{task}: {len(short)} of {len(subjects_out)} subject(s) have fewer than {shots} dev exemplars "
                f"and were scored with fewer: " + ", ".join(f"{name} ({k})" for name, k in short.items())
            ]
            if short
            else []
        )
        n = len(records)
        overall = {
            "acc": float(np.mean([s["acc"] for s in subjects_out.values()])) if subjects_out else float("nan"),
            "acc_norm": float(np.mean([s["acc_norm"] for s in subjects_out.values()]))
            if subjects_out
            else float("nan"),
            "acc_micro": sum(r["correct"] for r in records) / n if n else float("nan"),
            "acc_norm_micro": sum(r["correct_norm"] for r in records) / n if n else float("nan"),
            "n": n,
            "subjects": len(subjects_out),
        }
        return {
            "task": task,
            "kind": "multiple_choice",
            "path": str(data.root),
            "split": data.split,
            "shots": min(s["shots"] for s in subjects_out.values()),
            "shots_requested": shots,
            "format": options.fmt,
            "limit": options.limit,
            "overall": overall,
            "subjects": subjects_out,
            "prompt_sha256": requests_sha256(records),
            "truncated_prompts": data.truncated,
            "chance": 0.25,
            "warnings": warnings,
        }
