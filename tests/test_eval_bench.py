"""`eval bench`: the three MMLU-format CSV dialects, the prompts, scoring by log-likelihood (a model rigged to
prefer one option picks it), GSM8K answer extraction, and the command on the real benchmark files."""

from __future__ import annotations

import csv
import json
from decimal import Decimal

import pytest

from skyloom.cli import main
from skyloom.eval.backends import SkyloomLM, load_lm
from skyloom.eval.bench import parse_task
from skyloom.eval.gsm8k import build_prompt as gsm8k_prompt
from skyloom.eval.gsm8k import extract_answer, gold_answer, read_problems
from skyloom.eval.multiple_choice import (
    TEMPLATES,
    build_prompt,
    default_eval_split,
    evaluate_multiple_choice,
    read_questions,
    subject_files,
)
from tests.conftest import SHARED_DATA, full_data_only
from tests.test_eval_fixtures import tiny_checkpoint, tiny_model, tokenizer, train_tiny


def _count(folder) -> int:
    return sum(len(read_questions(p, s)) for s, p in subject_files(folder).items())


def _csv_rows(folder) -> int:
    """Data rows of every CSV in the folder, counted by the csv module itself (header excluded)."""
    return sum(
        len(list(csv.reader(p.read_text(encoding="utf-8").splitlines(keepends=True)))) - 1 for p in folder.glob("*.csv")
    )


@full_data_only
def test_ceval_and_cmmlu_record_counts_match_the_manifests():
    # record counts from the MANIFESTs: C-Eval dev 260 / val 1,346 (52 subjects); CMMLU dev 335 / test 11,582 (67)
    assert len(subject_files(SHARED_DATA / "ceval" / "val")) == 52
    assert _count(SHARED_DATA / "ceval" / "dev") == 260
    assert _count(SHARED_DATA / "ceval" / "val") == 1346
    assert len(subject_files(SHARED_DATA / "cmmlu" / "test")) == 67
    assert _count(SHARED_DATA / "cmmlu" / "dev") == 335
    assert _count(SHARED_DATA / "cmmlu" / "test") == 11582


def test_ceval_and_cmmlu_files_read_completely():
    for folder in ("ceval/dev", "ceval/val", "cmmlu/dev", "cmmlu/test"):  # every row is a question, none lost
        assert _count(SHARED_DATA / folder) == _csv_rows(SHARED_DATA / folder) > 0, folder
    assert default_eval_split(SHARED_DATA / "ceval") == "val"
    assert default_eval_split(SHARED_DATA / "cmmlu") == "test"
    q = read_questions(SHARED_DATA / "ceval" / "val" / "computer_network_val.csv", "computer_network")[0]
    assert q.question.startswith("使用位填充方法，以01111110为位首flag") and q.options == ("1", "2", "3", "4")
    assert q.answer == "C"  # the example on the C-Eval dataset card


def _write_mmlu(root, subject="high_school_math", n_dev=5, n_test=4, answer=None):
    """A benchmark in the original MMLU layout: headerless CSVs named <subject>_<split>.csv."""
    for split, n in (("dev", n_dev), ("test", n_test), ("val", 2)):
        (root / split).mkdir(parents=True, exist_ok=True)
        with open(root / split / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            for i in range(n):
                w.writerow(
                    [
                        f"What is {i} + {i}?\nShow your work, please",
                        str(2 * i),
                        str(2 * i + 1),
                        f"{i},000",
                        "none of the above",
                        answer or "ABCD"[i % 4],
                    ]
                )
    return root


def test_headerless_mmlu_files_with_quoted_commas_and_newlines(tmp_path):
    root = _write_mmlu(tmp_path / "mmlu")
    assert default_eval_split(root) == "test"
    [q0, q1, *_] = read_questions(root / "test" / "high_school_math_test.csv", "high_school_math")
    assert q1.question == "What is 1 + 1?\nShow your work, please" and q1.options[2] == "1,000" and q1.answer == "B"
    context, conts = build_prompt(q1, [q0], TEMPLATES["mmlu"], "letter")
    assert context == (
        "The following are multiple choice questions (with answers) about high school math.\n\n"
        "What is 0 + 0?\nShow your work, please\nA. 0\nB. 1\nC. 0,000\nD. none of the above\nAnswer: A\n\n"
        "What is 1 + 1?\nShow your work, please\nA. 2\nB. 3\nC. 1,000\nD. none of the above\nAnswer:"
    )
    assert conts == [" A", " B", " C", " D"]


def test_chinese_prompts_follow_the_authors_templates():
    dev = read_questions(SHARED_DATA / "cmmlu" / "dev" / "agronomy.csv", "agronomy")
    test = read_questions(SHARED_DATA / "cmmlu" / "test" / "agronomy.csv", "agronomy")
    context, conts = build_prompt(test[0], dev[:1], TEMPLATES["cmmlu"], "letter")
    assert context.startswith(
        "以下是关于农学的单项选择题，请直接给出正确答案的选项。\n\n题目：肉牛屠宰后，胴体的哪个部位肉质较好\n"
        "A. 胸\nB. 腹\nC. 大腿\nD. 小腿\n答案：C\n\n题目："
    )
    assert context.endswith("\n答案：") and conts == ["A", "B", "C", "D"]
    cloze, options = build_prompt(test[0], dev[:1], TEMPLATES["cmmlu"], "text")
    assert "\nA. " not in cloze and "答案：大腿\n\n" in cloze and options == list(test[0].options)
    ceval = read_questions(SHARED_DATA / "ceval" / "val" / "logic_val.csv", "logic")[0]
    assert build_prompt(ceval, [], TEMPLATES["ceval"], "letter")[0].startswith(
        "以下是中国关于逻辑学考试的单项选择题，请选出其中的正确答案。\n\n"
    )


def _rigged_benchmark(root, prefer="C", n=12):
    """Real C-Eval questions with the options rotated so that the right one always sits at `prefer`."""
    src = read_questions(SHARED_DATA / "ceval" / "val" / "high_school_biology_val.csv", "high_school_biology")[:n]
    for split in ("dev", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        with open(root / split / f"high_school_biology_{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
            for i, q in enumerate(src):
                right = q.options["ABCD".index(q.answer)]
                others = [o for j, o in enumerate(q.options) if "ABCD"[j] != q.answer]
                options = others[: "ABCD".index(prefer)] + [right] + others["ABCD".index(prefer) :]
                w.writerow([i, q.question, *options, prefer])
    return root


def test_scoring_picks_the_option_a_rigged_model_prefers(tmp_path):
    root = _rigged_benchmark(tmp_path / "rigged")
    # rig: teach a tiny model that "答案：" is followed by "C" (on other questions than the scored ones)
    dev = read_questions(SHARED_DATA / "ceval" / "dev" / "high_school_biology_dev.csv", "high_school_biology")
    texts = [build_prompt(q, [], TEMPLATES["ceval"], "letter")[0] + "C\n\n" for q in dev * 4]
    rigged = SkyloomLM(
        train_tiny(tiny_model(seed=4, dim=64, ffn_dim=176), texts, steps=25, keep="tail"), tokenizer(), progress=False
    )
    result, records = evaluate_multiple_choice(rigged, "ceval", root, shots=0)
    assert result["overall"]["acc"] == 1.0 and result["overall"]["n"] == 12
    assert all(r["prediction"] == "C" and r["correct"] for r in records)
    assert all(max(r["loglikelihoods"]) == r["loglikelihoods"][2] for r in records)
    untrained = load_lm(tiny_checkpoint(), progress=False)
    baseline, _ = evaluate_multiple_choice(untrained, "ceval", root, shots=0)
    assert baseline["overall"]["acc"] < 0.75


def test_acc_norm_divides_by_continuation_length(tmp_path):
    lm = load_lm(tiny_checkpoint(), progress=False)
    result, records = evaluate_multiple_choice(
        lm, "cmmlu", SHARED_DATA / "cmmlu", shots=1, fmt="text", limit=3, subjects=["agronomy", "arts"]
    )
    for r in records:
        normed = [ll / len(c) for ll, c in zip(r["loglikelihoods"], r["continuations"])]
        assert r["prediction_norm"] == "ABCD"[normed.index(max(normed))]
        assert r["prediction"] == "ABCD"[r["loglikelihoods"].index(max(r["loglikelihoods"]))]
    subjects = result["subjects"]
    assert set(subjects) == {"agronomy", "arts"} and result["overall"]["n"] == 6
    assert result["overall"]["acc"] == pytest.approx((subjects["agronomy"]["acc"] + subjects["arts"]["acc"]) / 2)


@pytest.mark.parametrize(
    "completion,expected",
    [
        (
            " Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n#### 72",
            "72",
        ),
        (" She eats 3 and bakes 4, so 16 - 3 - 4 = 9 eggs remain. 9 * $2 = $18.\n#### 18", "18"),
        (" The total is 1,234 + 16 = $1,250.00\n#### $1,250", "1250"),
        (" 5 friends each pay $3.50, so the answer is 17.5.", "17.5"),
        (" They need 120 - 36 = 84 more pages, half of 84 is 42 pages.", "42"),
        (" The temperature dropped to -4 degrees.", "-4"),
        (" 因此答案是 56。", "56"),
        (" He earned $10. Then he spent half.", "10"),
        (" I don't know.", None),
    ],
)
def test_gsm8k_answer_extraction_on_model_style_outputs(completion, expected):
    got = extract_answer(completion)
    assert (None if got is None else got) == (None if expected is None else Decimal(expected))


@full_data_only
def test_gsm8k_test_split_is_complete():
    assert len(read_problems(SHARED_DATA / "gsm8k" / "test.jsonl")) == 1319


def test_gsm8k_gold_answers_and_prompt():
    problems = read_problems(SHARED_DATA / "gsm8k" / "test.jsonl")
    lines = (SHARED_DATA / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(problems) == len([line for line in lines if line.strip()])  # every record read
    assert all(gold_answer(p["answer"], p["where"]) is not None for p in problems)
    shots = read_problems(SHARED_DATA / "gsm8k" / "train.jsonl")[:8]
    prompt = gsm8k_prompt(problems[0]["question"], shots)
    assert prompt.count("Question: ") == 9 and prompt.count("\n#### ") == 8
    assert "<<" not in prompt and prompt.endswith("\nAnswer:")
    assert prompt.startswith("Question: Natalia sold clips to 48 of her friends in April")
    with pytest.raises(ValueError, match="no '#### N' line"):
        gold_answer("no marker", "x:1")


def test_task_names_and_paths():
    assert parse_task("ceval").path.name == "ceval"
    assert str(parse_task("mmlu:/data/mmlu").path) == "/data/mmlu"
    with pytest.raises(ValueError, match="did you mean 'cmmlu'"):
        parse_task("cmmu")
    with pytest.raises(ValueError, match="needs a path"):
        parse_task("mmlu")


def test_bad_answer_letter_is_named_by_file_and_line(tmp_path):
    root = _write_mmlu(tmp_path / "bad", answer="E")
    with pytest.raises(ValueError, match=r"high_school_math_test.csv:1: answer 'E'"):
        read_questions(root / "test" / "high_school_math_test.csv", "high_school_math")


def test_bench_command_on_the_real_benchmarks(tmp_path, capsys):
    out, samples = tmp_path / "bench.json", tmp_path / "samples"
    args = [
        "eval",
        "bench",
        "--model",
        str(tiny_checkpoint()),
        "--task",
        "ceval",
        "--task",
        "cmmlu",
        "--task",
        "gsm8k",
        "--limit",
        "1",
        "--shots",
        "1",
        "--max-new-tokens",
        "16",
        "--no-progress",
        "--overall-only",
        "--log-samples",
        str(samples),
        "--output",
        str(out),
    ]
    assert main(args) == 0
    first = json.loads(out.read_text())
    assert set(first["tasks"]) == {"ceval", "cmmlu", "gsm8k"}
    n_ceval = len(subject_files(SHARED_DATA / "ceval" / "val"))  # one question per subject (52 in the full set)
    n_cmmlu = len(subject_files(SHARED_DATA / "cmmlu" / "test"))
    assert first["tasks"]["ceval"]["overall"]["n"] == n_ceval and len(first["tasks"]["ceval"]["subjects"]) == n_ceval
    assert first["tasks"]["cmmlu"]["split"] == "test" and first["tasks"]["cmmlu"]["overall"]["n"] == n_cmmlu
    assert first["tasks"]["gsm8k"]["overall"]["n"] == 1
    for r in first["tasks"].values():
        assert set(r["overall"]) >= {"acc", "n"} and len(r["prompt_sha256"]) == 64
    lines = (samples / "ceval.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == n_ceval and json.loads(lines[0])["context"].endswith("答案：")
    capsys.readouterr()
    # the same prompts again (a different model): identical hashes; different shots: different hashes
    again = ["eval", "bench", "--task", "ceval", "--limit", "1", "--no-progress", "--output", str(out)]
    assert main(again + ["--model", str(tiny_checkpoint(1)), "--shots", "1"]) == 0
    assert json.loads(out.read_text())["tasks"]["ceval"]["prompt_sha256"] == first["tasks"]["ceval"]["prompt_sha256"]
    assert main(again + ["--model", str(tiny_checkpoint()), "--shots", "0"]) == 0
    assert json.loads(out.read_text())["tasks"]["ceval"]["prompt_sha256"] != first["tasks"]["ceval"]["prompt_sha256"]
