"""Math grading and annotation checking on real GSM8K, and zero-shot chat-template evaluation through `eval bench`."""

from __future__ import annotations

import functools
import json
from decimal import Decimal
from pathlib import Path

import pytest

from skyloom.eval.math import annotations, check_annotation, evaluate_expression, gold_value, grade
from tests.conftest import full_data_only


@functools.cache
def _grade_gsm8k_train(path: Path) -> tuple[int, int, list]:
    """(solutions, annotations, failures) over every record of GSM8K train's reference solutions."""
    n_solutions = n_annotations = 0
    failures = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            record = json.loads(line)
            gold = gold_value(record, f"train.jsonl:{number}")
            g = grade(record["answer"], gold)
            if not g.correct:
                failures.append((number, record["answer"][-80:]))
            failures += [(number, a) for a in g.annotations if not a.ok]
            n_solutions += 1
            n_annotations += len(g.annotations)
    return n_solutions, n_annotations, failures


def test_every_gsm8k_train_reference_grades_correct(shared_data):
    path = shared_data / "gsm8k" / "train.jsonl"
    n_solutions, n_annotations, failures = _grade_gsm8k_train(path)
    assert not failures, failures[:5]
    assert n_solutions == len(path.read_text(encoding="utf-8").splitlines()) and n_annotations > n_solutions


@full_data_only
def test_gsm8k_train_has_7473_solutions_with_23716_annotations(shared_data):
    n_solutions, n_annotations, _ = _grade_gsm8k_train(shared_data / "gsm8k" / "train.jsonl")
    assert n_solutions == 7473 and n_annotations == 23716


def test_extraction_rules_and_annotation_failures():
    assert grade("So, the answer is 18.", Decimal(18)).correct
    assert grade("x\n#### 1,234", Decimal(1234)).correct
    assert grade("所以答案是：42 个。", Decimal(42)).correct
    assert grade("we get 3 then 7", Decimal(7)).correct  # last-number fallback
    assert not grade("no number here", Decimal(7)).correct
    assert grade("the answer is $5.50", Decimal("5.5")).correct
    wrong = grade("He pays 3*4 = <<3*4=13>>13. So, the answer is 13.", Decimal(13))
    assert wrong.correct and not wrong.annotations_ok and not wrong.accepted
    assert check_annotation("10/3=3.33").ok and not check_annotation("10/3=3.4").ok  # rounding to the digits written
    assert check_annotation("20%*50=10").ok and check_annotation("1,200*2=2,400").ok and check_annotation("7%3=1").ok
    assert not check_annotation("__import__('os')=0").ok and not check_annotation("5/0=1").ok
    assert not check_annotation("2**1000000=1").ok
    assert evaluate_expression("(3+4)*2") == 14.0
    assert [a.value for a in annotations("a <<2+3=5>> b <<5*2=10>>")] == [5.0, 10.0]
    assert gold_value({"question": "q", "answer": "先算 3+4=7，答案是 7"}, "x") == Decimal(7)
    assert gold_value({"question": "q", "final": "12"}, "x") == Decimal(12)
    with pytest.raises(ValueError, match="x: the reference answer has no"):
        gold_value({"question": "q", "answer": "7"}, "x")


def test_zero_shot_chat_eval_through_bench(tmp_path):
    """A fake model that answers from a lookup: the prompt is in the chat template, generation stops at [SEP],
    extraction and per-subject grouping work, and `eval bench` dispatches `math-zh` here."""
    from skyloom.eval.bench import parse_task, run_task
    from skyloom.eval.lm import LanguageModel

    answers = {
        "3 加 4 等于几？": "3+4=<<3+4=7>>7。答案是 7。[SEP]",
        "2 乘 5 等于几？": "2*5=<<2*5=11>>11。答案是 11[SEP]",
    }
    data = tmp_path / "zh.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"question": q, "answer": f"答案是 {v}", "steps": s}, ensure_ascii=False)
            for q, v, s in (("3 加 4 等于几？", 7, 1), ("2 乘 5 等于几？", 10, 2))
        ),
        encoding="utf-8",
    )
    vocab = {"[USER]": 1000, "[SEP]": 1001, "[BOT]": 1002}

    class Fake(LanguageModel):
        name, max_length, backend = "fake", 512, "fake"
        device = None

        class tokenizer:  # noqa: N801 - mimics TextTokenizer.tokenizer.token_to_id
            tokenizer = type("T", (), {"token_to_id": staticmethod(vocab.get)})

        def encode(self, text):
            return [ord(c) for c in text]

        def decode(self, ids):
            inv = {v: k for k, v in vocab.items()}
            return "".join(inv.get(i, chr(i)) for i in ids)

        eos_id = property(lambda self: 3)
        bos_id = property(lambda self: None)

        def generate(self, prompts, max_new_tokens=256, stop=(), sampling=None, desc=""):
            out = []
            for p in prompts:
                assert p[:2] == [3, 1000] and p[-2:] == [1001, 1002]
                text = answers[self.decode(p[2:-2])]
                assert "[SEP]" in stop
                out.append(text.split("[SEP]")[0])
            return out

        _logits = _start = _step = None

    result, records = run_task(Fake(), parse_task(f"math-zh:{data}"))
    assert result["template"] == "skywork" and result["overall"]["acc"] == 0.5
    assert [r["correct"] for r in records] == [True, False] and records[1]["annotations_ok"] is False
