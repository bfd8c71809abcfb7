"""`eval leakage` (Table 8): a tiny model trained on GSM8K train samples is caught, a control is not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skyloom.cli import main
from skyloom.eval.backends import SkyloomLM
from skyloom.eval.leakage import VERDICT_CLEAN, VERDICT_LEAKED, VERDICT_SEEN, leakage, verdict
from skyloom.eval.stats import bootstrap_ratio, interval
from skyloom.eval.textdata import Documents, read_texts
from tests.conftest import SHARED_DATA
from tests.test_eval_fixtures import save_checkpoint, tiny_model, tokenizer, train_tiny, workdir

N = 48
STEPS = 30


@pytest.fixture(scope="module")
def sets():
    train = read_texts(SHARED_DATA / "gsm8k" / "train.jsonl", limit=400)
    return {
        "seen": train[:N],  # what the contaminated model is trained on, and the "train split" we score
        "elsewhere": train[300 : 300 + N],  # in-domain text the control is trained on instead
        "test": read_texts(SHARED_DATA / "gsm8k" / "test.jsonl", limit=N),
        "ref": read_texts(SHARED_DATA / "skywork" / "mock_gsm8k_test_public.jsonl", limit=N),
    }


def _run(model, sets) -> dict:
    lm = SkyloomLM(model, tokenizer(), progress=False)
    return leakage(
        lm,
        Documents("train", texts=sets["seen"]),
        Documents("test", texts=sets["test"]),
        Documents("ref", texts=sets["ref"]),
        n_boot=400,
        seed=0,
    )


def test_samples_are_question_plus_answer_as_the_authors_wrote_them():
    ours = read_texts(SHARED_DATA / "gsm8k" / "train.jsonl", limit=200)
    authors = read_texts(SHARED_DATA / "skywork" / "pt_train.jsonl", limit=200)
    assert ours == authors


def test_training_on_the_train_split_shows_in_delta2_and_a_control_does_not(sets):
    small = {"dim": 64, "ffn_dim": 176}
    contaminated = _run(train_tiny(tiny_model(seed=1, **small), sets["seen"], steps=STEPS), sets)
    control = _run(train_tiny(tiny_model(seed=1, **small), sets["elsewhere"], steps=STEPS), sets)
    # both models learned GSM8K-style text equally well (same steps, same domain) ...
    assert abs(contaminated["L_test"] - control["L_test"]) < 0.5
    # ... but only the contaminated one finds *its* training samples much easier than the test split
    assert contaminated["delta2"] > 0.4 and contaminated["ci"]["delta2"][0] > 0.25
    assert VERDICT_SEEN in contaminated["verdict"]
    assert abs(control["delta2"]) < 0.15
    assert control["ci"]["delta2"][0] < 0 < control["ci"]["delta2"][1]
    assert VERDICT_SEEN not in control["verdict"]
    for r in (contaminated, control):
        assert r["delta1"] == pytest.approx(r["L_test"] - r["L_ref"])
        assert r["delta2"] == pytest.approx(r["L_test"] - r["L_train"])
        for key in ("L_train", "L_test", "L_ref", "delta1", "delta2"):
            lo, hi = r["ci"][key]
            assert lo <= r[key] <= hi


def test_verdicts_reproduce_the_reports_reading_of_table8():
    # (Δ1, Δ2) from Table 8; the report names the Δ2 outliers and one Δ1 anomaly (Aquila2-34B)
    table8 = {
        "ChatGLM3-6B": (0.0, 0.21),
        "MOSS-7B": (0.02, -0.01),
        "InternLM-7B": (-0.06, 0.09),
        "Qwen-7B": (-0.03, 0.43),
        "Baichuan2-7B": (0.05, -0.01),
        "LLaMA-13B": (0.05, -0.01),
        "LLaMA2-13B": (0.03, -0.01),
        "Xverse-13B": (0.03, -0.01),
        "Baichuan-13B": (0.04, -0.01),
        "Baichuan2-13B": (-0.03, 0.37),
        "Qwen-14B": (-0.11, 0.61),
        "InternLM-20B": (0.01, 0.11),
        "Aquila2-34B": (-0.51, 0.39),
        "Skywork-13B": (0.01, 0.04),
    }
    flagged_seen = {m for m, (d1, d2) in table8.items() if VERDICT_SEEN in verdict(d1, d2, (d1, d1), (d2, d2))}
    flagged_leak = {m for m, (d1, d2) in table8.items() if VERDICT_LEAKED in verdict(d1, d2, (d1, d1), (d2, d2))}
    assert flagged_seen == {"ChatGLM3-6B", "Baichuan2-13B", "Qwen-7B", "Qwen-14B", "Aquila2-34B"}
    assert flagged_leak == {"Aquila2-34B"}
    assert verdict(0.01, 0.04, (-0.05, 0.07), (-0.02, 0.1)) == VERDICT_CLEAN
    assert verdict(0.0, 0.3, (-0.1, 0.1), (-0.01, 0.6)) == VERDICT_CLEAN  # interval reaches 0: not enough evidence


def test_bootstrap_is_seeded_and_token_weighted():
    nll = np.array([10.0, 30.0, 5.0])
    tokens = np.array([10.0, 10.0, 10.0])
    a = bootstrap_ratio(nll, tokens, 200, np.random.default_rng(7))
    b = bootstrap_ratio(nll, tokens, 200, np.random.default_rng(7))
    assert np.array_equal(a, b)
    assert set(np.round(a * 30, 6)) <= {float(x) for x in np.round(np.arange(15, 91), 6)}
    lo, hi = interval(a, 0.9)
    assert 0.5 <= lo <= 1.5 <= hi <= 3.0


def test_leakage_command_writes_the_table8_keys(tmp_path, capsys):
    ckpt = save_checkpoint(tiny_model(seed=2), workdir("leakage-cli"))
    out = tmp_path / "leak.json"
    assert (
        main(
            [
                "eval",
                "leakage",
                "--model",
                str(ckpt),
                "--limit",
                "30",
                "--n-boot",
                "100",
                "--no-progress",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result) >= {"L_train", "L_test", "L_ref", "delta1", "delta2", "verdict"}
    assert result["samples"] == {"train": 30, "test": 30, "ref": 30}
    assert result["files"]["ref"].endswith("skywork/mock_gsm8k_test_public.jsonl")
    assert result["verdict"] == VERDICT_CLEAN  # an untrained model has seen nothing
    assert "| Model | L_test | L_train | L_ref | Δ1 | Δ2 | verdict |" in capsys.readouterr().out
