"""Benchmark-leakage detection by language-model loss — the report's Table 8 (§5.2).

Three sets from one distribution: the benchmark's train split, its test split, and a reference set
written independently (for GSM8K: the authors' GPT-4-written `mock_gsm8k_test_public.jsonl`). Each sample
is the question and the answer concatenated (question + " " + answer, as the authors' `pt_train.jsonl`),
or a record's `text`. L = token-weighted mean next-token loss over a set's samples, scored with the same
window convention as `eval ppl` (default: the authors' `eval_loss.py` convention — the script their
released loss sets are run with). A model that never saw any of the three sets gives L_train ≈ L_test ≈
L_ref.

    Δ1 = L_test − L_ref    clearly negative: the test split is easier than fresh look-alikes → leaked
    Δ2 = L_test − L_train  clearly positive: the train split is easier than the test split → trained on

Uncertainty: each set is resampled (seeded bootstrap over samples) and the percentile interval of every
L and Δ is reported. Verdict thresholds (`THRESHOLDS`): a flag needs the point estimate beyond the
threshold *and* the interval excluding 0. With 0.15 nats they single out exactly the models the report
names from its Table 8 — Δ2: ChatGLM3-6B 0.21, Qwen-7B 0.43, Baichuan2-13B 0.37, Qwen-14B 0.61,
Aquila2-34B 0.39 (not InternLM-7B/20B at 0.09/0.11, nor the ±0.04 of the rest); Δ1: Aquila2-34B −0.51
(the "one particular anomaly"), not Qwen-14B's −0.11.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from skyloom.eval.lm import LanguageModel
from skyloom.eval.perplexity import WindowConvention, score_documents
from skyloom.eval.stats import bootstrap_ratio, interval
from skyloom.eval.textdata import Documents

THRESHOLDS = {"delta1_leaked_below": -0.15, "delta2_seen_above": 0.15}

VERDICT_CLEAN = "no sign of training on the train split"
VERDICT_SEEN = "train split likely seen"
VERDICT_LEAKED = "test split likely leaked"


def verdict(
    delta1: float,
    delta2: float,
    delta1_ci: Sequence[float],
    delta2_ci: Sequence[float],
    thresholds: dict[str, float] = THRESHOLDS,
) -> str:
    """Plain-language reading of Δ1/Δ2 (see the module docstring for the rule)."""
    findings = []
    if delta1 < thresholds["delta1_leaked_below"] and delta1_ci[1] < 0:
        findings.append(VERDICT_LEAKED)
    if delta2 > thresholds["delta2_seen_above"] and delta2_ci[0] > 0:
        findings.append(VERDICT_SEEN)
    return "; ".join(findings) if findings else VERDICT_CLEAN


def leakage(
    lm: LanguageModel,
    train: Documents,
    test: Documents,
    ref: Documents,
    convention: WindowConvention | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    thresholds: dict[str, float] = THRESHOLDS,
) -> dict[str, Any]:
    """Table-8 numbers for one model; JSON-ready (keys L_train, L_test, L_ref, delta1, delta2, verdict …)."""
    convention = convention or WindowConvention("report", min(4096, lm.max_length))
    # score_documents refuses a set with no scorable token or a non-finite loss, naming it: no verdict from NaN
    scores = {
        name: score_documents(lm, docs, convention, desc=f"leakage {name}", name=name)
        for name, docs in (("train", train), ("test", test), ("ref", ref))
    }
    rng = np.random.default_rng(seed)
    boot = {name: bootstrap_ratio(s.nll, s.tokens.astype(np.float64), n_boot, rng) for name, s in scores.items()}
    L = {name: s.loss for name, s in scores.items()}
    d1, d2 = L["test"] - L["ref"], L["test"] - L["train"]
    d1_boot, d2_boot = boot["test"] - boot["ref"], boot["test"] - boot["train"]
    ci = {f"L_{name}": interval(b, confidence) for name, b in boot.items()}
    ci["delta1"], ci["delta2"] = interval(d1_boot, confidence), interval(d2_boot, confidence)
    numbers = [*L.values(), d1, d2, *(x for pair in ci.values() for x in pair)]
    if not all(np.isfinite(numbers)):
        raise ValueError(f"leakage of {lm.name}: a non-finite loss or interval ({L}); no verdict")
    return {
        "L_train": L["train"],
        "L_test": L["test"],
        "L_ref": L["ref"],
        "delta1": d1,
        "delta2": d2,
        "verdict": verdict(d1, d2, ci["delta1"], ci["delta2"], thresholds),
        "ci": ci,
        "confidence": confidence,
        "bootstrap": {"replicates": n_boot, "seed": seed, "unit": "sample"},
        "thresholds": thresholds,
        "samples": {name: int(len(s.tokens)) for name, s in scores.items()},
        "tokens": {name: int(s.tokens.sum()) for name, s in scores.items()},
        "files": {"train": str(train.source), "test": str(test.source), "ref": str(ref.source)},
        "convention": convention.describe(),
        "model": lm.describe(),
    }


def format_table8(rows: dict[str, dict[str, Any]]) -> str:
    """Markdown in the report's Table-8 column order, with the intervals and the verdict."""
    lines = ["| Model | L_test | L_train | L_ref | Δ1 | Δ2 | verdict |", "|---|---|---|---|---|---|---|"]
    for model, r in rows.items():
        c = r["ci"]
        lines.append(
            f"| {model} | {r['L_test']:.2f} | {r['L_train']:.2f} | {r['L_ref']:.2f} | "
            f"{r['delta1']:.2f} [{c['delta1'][0]:.2f}, {c['delta1'][1]:.2f}] | "
            f"{r['delta2']:.2f} [{c['delta2'][0]:.2f}, {c['delta2'][1]:.2f}] | {r['verdict']} |"
        )
    return "\n".join(lines)
