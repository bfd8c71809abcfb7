"""The unigram baseline the demo's losses are read against: a model that only learned token frequencies.

The entropy of a domain's token frequencies, H = −Σ p(t) ln p(t) (nats/token, counted over the domain's
training and held-out text), is what the best context-free model of that domain scores on average; a held-out
loss well *below* it is learning that uses context. Tokens are those the scorer sees: every document encoded
by the model's tokenizer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any


def unigram_entropy(token_lists: Iterable[Sequence[int]]) -> tuple[float, int]:
    """(entropy in nats/token, number of tokens) of the pooled token frequencies."""
    counts: Counter[int] = Counter()
    for ids in token_lists:
        counts.update(ids)
    n = sum(counts.values())
    if n == 0:
        return float("nan"), 0
    return -sum(c / n * math.log(c / n) for c in counts.values()), n


def domain_entropies(
    encode_batch: Callable[[list[str]], list[list[int]]], sets: dict[str, list[str]]
) -> dict[str, dict[str, float]]:
    """{domain: {"entropy": nats/token, "tokens": n}} for every set of texts."""
    out = {}
    for name, texts in sets.items():
        h, n = unigram_entropy(encode_batch(list(texts)))
        out[name] = {"entropy": h, "tokens": n}
    return out


def format_unigram(rows_ppl: dict[str, Any], unigram: dict[str, Any]) -> str:
    """Markdown: per domain its unigram entropy and each model's held-out loss (ln of the Table-6 perplexity)."""
    models = list(rows_ppl)
    lines = ["| domain | unigram entropy | " + " | ".join(f"{m} loss" for m in models) + " | H − last loss |"]
    lines.append("|---|---:|" + "---:|" * len(models) + "---:|")
    for domain, u in unigram.items():
        losses = [rows_ppl[m]["domains"][domain]["loss"] for m in models]
        lines.append(
            f"| {domain} | {u['entropy']:.2f} | "
            + " | ".join(f"{x:.2f}" for x in losses)
            + f" | {u['entropy'] - losses[-1]:.2f} |"
        )
    return "\n".join(lines) + "\n"
