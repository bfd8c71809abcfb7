"""Interpolated modified Kneser-Ney n-gram language model in numpy (Chen & Goodman 1998, the estimator of KenLM).

Why our own: CCNet's reference model is a KenLM 5-gram, but the ``kenlm`` package needs compiling; counting and
querying sorted hash tables in numpy is a few dozen lines and needs nothing new.

Tokens are strings (words, CJK characters, tokenizer pieces — the caller decides); each is hashed (xxh64), and an
n-gram is a 64-bit rolling hash of its tokens, so no vocabulary is stored. Each line is its own sentence: ``order-1``
``<s>`` before it, ``</s>`` after it (``</s>`` is predicted, ``<s>`` never is). Unlike KenLM, n-grams that start with
``<s>`` get continuation counts below the highest order too (``<s>`` is an ordinary context token here).

For order n (highest N), context h (n-1 tokens) and token w::

    p_n(w | h) = max(c_n(h w) - D_n(c), 0) / S_n(h) + gamma_n(h) * p_{n-1}(w | h')     (h' = h minus its first token)
    gamma_n(h) = (D_n1 N1(h .) + D_n2 N2(h .) + D_n3+ N3+(h .)) / S_n(h),   S_n(h) = sum_w c_n(h w)

with c_N the raw count and, below N, the continuation count c_n(h w) = |{v : c(v h w) > 0}|; a context never
seen at order n passes p_{n-1} through. p_0 is uniform over the vocabulary: the training types (with ``</s>``) plus
one unknown token, so every context's distribution sums to 1 over that vocabulary. Discounts per order come from
the count-of-counts (Y = n1/(n1 + 2 n2), D_k = k - (k+1) Y n_{k+1}/n_k); when one falls outside (0, k] — tiny
corpora — that order uses KenLM's ``--discount_fallback`` (0.5, 1, 1.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from skyloom.data.pipeline.text import unit_hashes

BOS = "<s>"
EOS = "</s>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
_MIX = np.uint64(0x100000001B3)  # rolling-hash multiplier (FNV prime)


@dataclass
class OrderTable:
    """One order's sorted tables: n-gram key → interpolation weight alpha, context key → back-off gamma."""

    keys: np.ndarray  # uint64, sorted
    alpha: np.ndarray  # float64: max(c - D, 0) / S(h)
    ctx_keys: np.ndarray  # uint64, sorted
    gamma: np.ndarray  # float64
    discounts: tuple[float, float, float]


def _sequence(lines: Sequence[Sequence[str]], order: int) -> tuple[np.ndarray, np.ndarray]:
    """Token hashes of all lines, each as <s>*(order-1) tokens </s>; and the positions that are predicted."""
    toks: list[str] = []
    predicted: list[bool] = []
    pad = [BOS] * (order - 1)
    for line in lines:
        toks += pad
        toks += line
        toks.append(EOS)
        predicted += [False] * len(pad) + [True] * (len(line) + 1)
    seq = unit_hashes(toks) if toks else np.zeros(0, np.uint64)
    return seq, np.flatnonzero(np.array(predicted, dtype=bool))


def _keys_at(seq: np.ndarray, pos: np.ndarray, max_order: int) -> list[np.ndarray]:
    """keys[n-1][i]: key of the n-gram ending at pos[i] (extended leftwards, so order n reuses order n-1)."""
    out = []
    if max_order < 1:
        return out
    k = seq[pos].copy()
    out.append(k)
    with np.errstate(over="ignore"):
        for n in range(2, max_order + 1):
            k = k * _MIX + seq[pos - n + 1]
            out.append(k)
    return out


def _contexts(seq: np.ndarray, pos: np.ndarray, order: int) -> list[np.ndarray]:
    """ctx[n-1][i]: key of the n-1 tokens before pos[i] (order 1: the empty context, key 0)."""
    return [np.zeros(len(pos), np.uint64), *_keys_at(seq, pos - 1, order - 1)]


def estimate_discounts(counts: np.ndarray) -> tuple[float, float, float]:
    """Chen & Goodman's D1, D2, D3+ from the count-of-counts; KenLM's fallback when one leaves (0, k]."""
    n = [int((counts == k).sum()) for k in (1, 2, 3, 4)]
    if n[0] == 0 or n[1] == 0 or n[2] == 0:
        return FALLBACK_DISCOUNTS
    y = n[0] / (n[0] + 2 * n[1])
    d = tuple(k - (k + 1) * y * n[k] / n[k - 1] for k in (1, 2, 3))
    if not all(0 < dk <= k for dk, k in zip(d, (1, 2, 3))):
        return FALLBACK_DISCOUNTS
    return d  # type: ignore[return-value]


def _table(keys_all: np.ndarray, ctx_all: np.ndarray, hi_keys: np.ndarray | None) -> OrderTable:
    """Counts (raw when hi_keys is None, else continuation counts from the distinct higher-order n-grams)."""
    if hi_keys is None:
        keys, first, counts = np.unique(keys_all, return_index=True, return_counts=True)
    else:
        _, first_hi = np.unique(hi_keys, return_index=True)
        keys, idx, counts = np.unique(keys_all[first_hi], return_index=True, return_counts=True)
        first = first_hi[idx]
    ctx = ctx_all[first]
    d = estimate_discounts(counts)
    disc = np.asarray(d, dtype=np.float64)[np.minimum(counts, 3) - 1]
    ctx_keys, inv = np.unique(ctx, return_inverse=True)
    total = np.bincount(inv, weights=counts.astype(np.float64))
    mass = np.bincount(inv, weights=disc)
    return OrderTable(keys, (counts - disc) / total[inv], ctx_keys, mass / total, d)


@dataclass
class KneserNeyLM:
    order: int
    vocab_size: int  # training types including </s>, plus one unknown token
    tables: list[OrderTable]

    @classmethod
    def train(cls, lines: Sequence[Sequence[str]], order: int = 5) -> KneserNeyLM:
        """Count and smooth the n-grams of ``lines`` (each a list of tokens)."""
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        seq, pos = _sequence(lines, order)
        if len(pos) == 0:
            raise ValueError("no training text")
        keys = _keys_at(seq, pos, order)
        ctx = _contexts(seq, pos, order)
        tables = [_table(keys[n], ctx[n], keys[n + 1] if n + 1 < order else None) for n in range(order)]
        return cls(order, len(tables[0].keys) + 1, tables)

    def token_logprobs(self, lines: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Natural-log probability of every predicted token (each line's tokens and its </s>), and the line
        index of each."""
        seq, pos = _sequence(lines, self.order)
        keys = _keys_at(seq, pos, self.order)
        ctx = _contexts(seq, pos, self.order)
        p = np.full(len(pos), 1.0 / self.vocab_size)
        for n, t in enumerate(self.tables):
            ci = np.minimum(np.searchsorted(t.ctx_keys, ctx[n]), len(t.ctx_keys) - 1)
            seen_ctx = t.ctx_keys[ci] == ctx[n]
            ki = np.minimum(np.searchsorted(t.keys, keys[n]), len(t.keys) - 1)
            alpha = np.where(t.keys[ki] == keys[n], t.alpha[ki], 0.0)
            p = np.where(seen_ctx, alpha + t.gamma[ci] * p, p)
        line_of = np.repeat(np.arange(len(lines)), [len(line) + 1 for line in lines])
        return np.log(p), line_of

    def prob(self, token: str, context: Sequence[str]) -> float:
        """p(token | context); a context shorter than order-1 is taken as a line start (padded with <s>)."""
        ctx = list(context)[-(self.order - 1) :] if self.order > 1 else []
        ctx = [BOS] * (self.order - 1 - len(ctx)) + ctx
        seq = unit_hashes([*ctx, token])
        pos = np.array([len(seq) - 1])
        keys = _keys_at(seq, pos, self.order)
        cks = _contexts(seq, pos, self.order)
        p = 1.0 / self.vocab_size
        for n, t in enumerate(self.tables):
            ci = min(int(np.searchsorted(t.ctx_keys, cks[n][0])), len(t.ctx_keys) - 1)
            if t.ctx_keys[ci] != cks[n][0]:
                continue
            ki = min(int(np.searchsorted(t.keys, keys[n][0])), len(t.keys) - 1)
            alpha = float(t.alpha[ki]) if t.keys[ki] == keys[n][0] else 0.0
            p = alpha + float(t.gamma[ci]) * p
        return p

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        out = {}
        for n, t in enumerate(self.tables, start=1):
            out[f"{prefix}.{n}.keys"] = t.keys
            out[f"{prefix}.{n}.alpha"] = t.alpha
            out[f"{prefix}.{n}.ctx_keys"] = t.ctx_keys
            out[f"{prefix}.{n}.gamma"] = t.gamma
        return out

    @classmethod
    def from_tensors(cls, get, prefix: str, order: int, vocab_size: int, discounts: list[list[float]]) -> KneserNeyLM:
        tables = []
        for n in range(1, order + 1):
            t = OrderTable(
                get(f"{prefix}.{n}.keys"),
                get(f"{prefix}.{n}.alpha"),
                get(f"{prefix}.{n}.ctx_keys"),
                get(f"{prefix}.{n}.gamma"),
                tuple(discounts[n - 1]),  # type: ignore[arg-type]
            )
            if t.keys.dtype != np.uint64 or len(t.keys) != len(t.alpha) or len(t.ctx_keys) != len(t.gamma):
                raise ValueError(f"order {n} tables are inconsistent")
            tables.append(t)
        return cls(order, vocab_size, tables)
