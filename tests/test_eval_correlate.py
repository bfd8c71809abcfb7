"""`eval correlate`: a real (tiny) training run whose validation loss falls while a benchmark score rises."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from skyloom.cli import main
from skyloom.eval import correlate as correlate_module
from skyloom.eval.backends import SkyloomLM, load_lm
from skyloom.eval.multiple_choice import TEMPLATES, build_prompt, read_questions
from skyloom.eval.perplexity import WindowConvention, domain_result, score_documents
from skyloom.eval.stats import pearson, ranks, spearman
from skyloom.eval.textdata import read_documents
from tests.conftest import SHARED_DATA
from tests.test_eval_bench import _rigged_benchmark
from tests.test_eval_fixtures import save_checkpoint, tiny_model, tokenizer, train_tiny, workdir

STEPS = (0, 4, 8, 12, 24)
SEQ = 64


def _rig_texts(subject: str) -> list[str]:
    """C-Eval dev questions of `subject` followed by the answer letter C (the rig)."""
    qs = read_questions(SHARED_DATA / "ceval" / "dev" / f"{subject}_dev.csv", subject)
    return [build_prompt(q, [], TEMPLATES["ceval"], "letter")[0] + "C\n\n" for q in qs]


@pytest.fixture(scope="module")
def run_dir():
    """RUN_DIR with checkpoints/step_XXXXXXXX/ and metrics.jsonl as the training engine writes them."""
    run = workdir("correlate-run")
    train_texts = _rig_texts("high_school_biology") * 4
    val_file = run / "val_rig.jsonl"
    val_file.write_text(
        "".join(
            json.dumps({"text": t}, ensure_ascii=False) + "\n"
            for t in _rig_texts("middle_school_biology") + _rig_texts("college_chemistry")
        ),
        encoding="utf-8",
    )
    model = tiny_model(seed=5, dim=64, ffn_dim=176)
    lines = []
    done = 0
    for step in STEPS:
        if step > done:  # at lr 5e-3 the validation loss falls all the way (at 1e-2 it turned back up after step 8)
            train_tiny(model, train_texts, steps=step - done, lr=5e-3, keep="tail", seed=step)
            done = step
        ckpt = save_checkpoint(model, run / "checkpoints" / f"step_{step:08d}")
        lm = SkyloomLM(model, tokenizer(), progress=False)
        val = domain_result(score_documents(lm, read_documents(val_file), WindowConvention("packed", SEQ)))
        lines.append({"kind": "train", "step": step, "tokens": step * 1024, "loss": 1.0, "lr": 1e-2})
        lines.append(
            {
                "kind": "val",
                "step": step,
                "tokens": step * 1024,
                "set": "rig",
                "loss": val["loss"],
                "ppl": val["ppl"],
                "eval_tokens": val["tokens"],
            }
        )
        assert ckpt.is_dir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"kind": "tr', encoding="utf-8")
    _rigged_benchmark(run.parent / "rigged-bench")
    return run


def test_correlate_finds_loss_and_score_moving_together(run_dir, capsys):
    bench = run_dir.parent / "rigged-bench"
    args = ["eval", "correlate", str(run_dir), "--task", f"ceval:{bench}", "--shots", "0", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    result = json.loads((run_dir / "eval" / "correlation.json").read_text())
    assert result["steps"] == list(STEPS)
    losses = [result["val_loss"]["rig"][str(s)] for s in STEPS]
    scores = [result["scores"]["ceval"][str(s)] for s in STEPS]
    # training worked on both measures: the loss fell far more than it varies from document to document at the start
    untrained = load_lm(run_dir / "checkpoints" / f"step_{STEPS[0]:08d}", progress=False)
    first = score_documents(untrained, read_documents(run_dir / "val_rig.jsonl"), WindowConvention("packed", SEQ))
    noise = float(np.std(first.nll / first.tokens))
    assert first.loss == pytest.approx(losses[0], abs=1e-6) and noise > 0
    assert losses[-1] < losses[0] - 10 * noise and scores[-1] > scores[0], (losses, noise, scores)
    [row] = result["correlations"]
    assert row["set"] == "rig" and row["task"] == "ceval" and row["n"] == len(STEPS)
    assert row["pearson"] == pytest.approx(pearson(losses, scores))
    assert row["spearman"] == pytest.approx(spearman(losses, scores))
    assert row["pearson"] < -0.5
    assert (run_dir / "eval" / "correlation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| rig | ceval | 5 |" in printed
    recorded = json.loads((run_dir / "eval" / "step_00000024" / "bench-ceval.json").read_text())
    assert recorded["result"]["overall"]["acc"] == scores[-1]


def test_recorded_scores_are_reused_and_losses_can_be_recomputed(run_dir, monkeypatch, capsys):
    bench = run_dir.parent / "rigged-bench"
    args = ["eval", "correlate", str(run_dir), "--task", f"ceval:{bench}", "--shots", "0", "--no-progress"]
    assert main(args) == 0  # make sure scores are recorded (test order independent)
    from skyloom.eval import bench as bench_module

    def refuse(*a, **k):
        raise AssertionError("a recorded score was evaluated again")

    monkeypatch.setattr(bench_module, "run_task", refuse)
    out = run_dir / "eval" / "recomputed.json"
    val_file = run_dir / "val_rig.jsonl"
    assert (
        main(args + ["--data", f"rig={val_file}", "--window", "packed", "--max-tokens", str(SEQ), "--output", str(out)])
        == 0
    )
    recomputed = json.loads(out.read_text())
    recorded, _ = correlate_module.read_metrics(run_dir)
    for step in STEPS:  # `eval ppl` on the same file reproduces the losses the run recorded
        assert recomputed["val_loss"]["rig"][str(step)] == pytest.approx(recorded["rig"][step], abs=1e-6)
    capsys.readouterr()


def test_statistics_against_hand_computed_values():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert list(ranks([10, 20, 20, 5])) == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 2], [3, 4])) and math.isnan(pearson([1, 1, 1], [1, 2, 3]))


def test_run_without_checkpoints_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", "correlate", str(tmp_path), "--task", "ceval", "--no-progress"]) == 2
    assert "no checkpoints/ folder" in capsys.readouterr().err
