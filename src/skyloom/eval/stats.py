"""Small statistics the evaluations need: Pearson/Spearman correlation and seeded bootstrap intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; NaN when fewer than 3 points or either side is constant."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"pearson: {a.size} x values but {b.size} y values")
    if a.size < 3:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as Spearman's rho needs)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    out = np.empty(v.size, dtype=np.float64)
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and v[order[j + 1]] == v[order[i]]:
            j += 1
        out[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho = Pearson's r of the ranks."""
    return pearson(ranks(x), ranks(y))


def bootstrap_ratio(
    numerator: np.ndarray, denominator: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap replicates of Σnumerator / Σdenominator, resampling items with replacement.

    For losses: numerator = NLL per sample, denominator = predicted tokens per sample, so each replicate
    is the token-weighted mean loss of a resampled set.
    """
    n = len(numerator)
    if n == 0:
        raise ValueError("cannot bootstrap an empty set")
    idx = rng.integers(0, n, size=(n_boot, n))
    return numerator[idx].sum(axis=1) / np.maximum(denominator[idx].sum(axis=1), 1)


def interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(replicates, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
