"""SkyMath: alignment of wrong solutions to the reference on hand-made cases, the round's data (RFT dedup,
compare examples, switches), and a round of `skyloom skymath` on a tiny model that resumes after `kill -9`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from skyloom.sft.compare import compare, compare_target, equation_key, skymath_style, split_steps
from tests.test_sft_support import tiny_base  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

REF = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


def test_alignment_finds_the_first_wrong_step():
    # arithmetic slip in step 2
    c = compare(
        "She sold 48/2 = <<48/2=24>>24 in May.\nIn total 48+24 = <<48+24=82>>82.\nSo, the answer is 82.",
        REF,
        Decimal(72),
    )
    assert (c.wrong_step, c.kind) == (2, "arithmetic") and "48+24 is 72, not 82" in c.reason
    assert c.corrected.splitlines() == [
        "She sold 48/2 = <<48/2=24>>24 in May.",
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.",
    ]
    # wrong operation in step 1 (correct arithmetic, a value the reference never computes)
    c = compare(
        "May: 48*2 = <<48*2=96>>96.\nTotal: 48+96 = <<48+96=144>>144.\nSo, the answer is 144.", REF, Decimal(72)
    )
    assert (c.wrong_step, c.kind) == (1, "diverges") and "96" in c.reason and "48/2=24" in c.reason
    assert c.corrected == "\n".join(REF.splitlines()[:2])  # nothing of the model's kept; the reference's steps
    # a right first step then a wrong one, with a text-only step in between that is not blamed
    c = compare(
        "May: 48/2 = <<48/2=24>>24.\nNow add them up.\nTotal: 24+24 = <<24+24=48>>48.\n#### 48", REF, Decimal(72)
    )
    assert (c.wrong_step, c.kind) == (3, "diverges")
    # all steps right, wrong final answer
    c = compare("May: 48/2 = <<48/2=24>>24.\nTotal: 48+24 = <<48+24=72>>72.\nSo, the answer is 70.", REF, Decimal(72))
    assert (c.wrong_step, c.kind) == (3, "final") and "70" in c.reason
    # stops early
    c = compare("May: 48/2 = <<48/2=24>>24.\nI am not sure.", REF, Decimal(72))
    assert (c.wrong_step, c.kind) == (2, "incomplete") and "48+24=72" in c.reason
    assert c.corrected.splitlines()[-1].startswith("Natalia sold 48+24")
    # steps in another order than the reference are fine (values, not positions, are aligned)
    ref3 = "A = <<2*3=6>>6.\nB = <<4*5=20>>20.\nC = <<6+20=26>>26.\n#### 26"
    c = compare("B = <<4*5=20>>20.\nA = <<2*3=6>>6.\nC = <<6+20=27>>27.\n#### 27", ref3, Decimal(26))
    assert (c.wrong_step, c.kind) == (3, "arithmetic")
    # Chinese
    zh_ref = "每天 3*4=<<3*4=12>>12 个。\n一共 12*5=<<12*5=60>>60 个。\n所以答案是 60。"
    c = compare("每天 3*4=<<3*4=12>>12 个。\n一共 12+5=<<12+5=17>>17 个。\n所以答案是 17。", zh_ref, Decimal(60))
    assert (c.wrong_step, c.kind) == (2, "diverges")
    target = compare_target(c, Decimal(60), zh=True)
    assert target.startswith("第 2 步出错") and target.endswith("所以答案是 60。") and "12*5=<<12*5=60>>60" in target


def test_steps_style_and_dedup_key():
    steps, answer = split_steps(REF)
    assert [s.values for s in steps] == [[Decimal(24)], [Decimal(72)]] and answer == "#### 72"
    assert skymath_style(REF, Decimal(72)).endswith("April and May.\nSo, the answer is 72.")
    assert equation_key("a <<48 / 2=24>> b <<48+24=72>>") == equation_key("x<<48/2=24>>y\n<<48+24=72>>")


def test_round_data_kinds_and_switches():
    from skyloom.sft.skymath import MixConfig, build_round_data

    q = [{"question": "Natalia …?", "answer": REF, "gold": Decimal(72)}]
    good = "48/2 = <<48/2=24>>24.\n24+48 = <<24+48=72>>72.\nSo, the answer is 72."
    samples = [
        {"q": 0, "text": good, "correct": True, "annotations_ok": True, "accepted": True},
        {"q": 0, "text": good.replace("48.", "48 clips."), "correct": True, "annotations_ok": True, "accepted": True},
        {"q": 0, "text": REF, "correct": True, "annotations_ok": True, "accepted": True},  # = the reference
        {
            "q": 0,
            "text": "48/2 = <<48/2=25>>25.\n#### 73",
            "correct": False,
            "annotations_ok": False,
            "accepted": False,
        },
        {
            "q": 0,
            "text": "<<48+24=72>>72 wrongly annotated. #### 72",
            "correct": True,
            "annotations_ok": True,
            "accepted": True,
        },
    ]
    data, stats = build_round_data(q, samples, MixConfig(), "skymath")
    assert len(data["reference"]) == 1 and data["reference"][0]["answer"].endswith("So, the answer is 72.")
    assert len(data["own"]) == 2  # duplicate equation sequence and the reference's own sequence dropped
    assert len(data["compare"]) == 1 and data["compare"][0]["wrong_step"] == 1
    assert "Reference solution:" in data["compare"][0]["question"] and stats["accepted"] == 4
    from skyloom.config import build
    from skyloom.sft.skymath import SkyMathConfig

    cfg = build(
        SkyMathConfig,
        {"base": "b", "train_data": "t", "mix": {"compare": 0, "own": 0}, "sft": {"train": {"max_steps": 2}}},
    )
    assert cfg.mix.compare == 0
    with pytest.raises(Exception, match="at least one kind"):
        build(
            SkyMathConfig, {"base": "b", "train_data": "t", "mix": {"compare": 0, "own": 0, "reference": 0}, "sft": {}}
        )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() or proc.poll() is not None:
            return
        time.sleep(0.05)


def test_skymath_round_end_to_end_and_resume_after_kill(tiny_base, shared_data, tmp_path):
    test_file = tmp_path / "test.jsonl"
    with open(shared_data / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        test_file.write_text("".join(line for _, line in zip(range(4), f)), encoding="utf-8")
    config = {
        "base": str(tiny_base),
        "train_data": str(shared_data / "gsm8k" / "train.jsonl"),
        "train_limit": 8,
        "rounds": 1,
        "sample": {"k": 2, "max_new_tokens": 24, "temperature": 1.0},
        "eval": {"sets": {"gsm8k": {"path": str(test_file)}}, "max_new_tokens": 16},
        "sft": {
            "data": {"seq_len": 256},
            "train": {"max_steps": 20, "global_batch_tokens": 512, "micro_batch_size": 2, "device": "cpu", "lr": 1e-3},
            "checkpoint": {"every": 2, "keep_last": 2},
        },
    }
    cfg_file = tmp_path / "skymath.yaml"
    cfg_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "skyloom", "skymath", str(cfg_file), "--out", str(run)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(run / "round_01" / "sft" / "checkpoints" / "step_00000002", proc, 240)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    samples_mtime = (run / "round_01" / "samples.jsonl").stat().st_mtime_ns
    assert not (run / "rounds.jsonl").read_text().count('"round": 1')

    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (run / "round_01" / "samples.jsonl").stat().st_mtime_ns == samples_mtime  # not re-sampled
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["sft_steps"] == 20
    assert rounds[1]["data"]["samples"] == 16 and rounds[1]["data"]["examples"]["reference"] == 8
    assert 0.0 <= rounds[1]["eval"]["gsm8k"]["acc"] <= 1.0 and rounds[1]["eval"]["gsm8k"]["n"] == 4
    sft_metrics = [json.loads(line) for line in (run / "round_01" / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in sft_metrics if m["kind"] == "train"] == list(range(1, 21))  # each step once
    assert any(m.get("event") == "resume" for m in sft_metrics)
    bench = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(b["kind"], b["round"], b["task"]) for b in bench] == [("bench", 0, "gsm8k"), ("bench", 1, "gsm8k")]
    assert bench[1]["step"] == 20
