"""The demo's SkyPile pipeline description: starter corpus (or the user's files) → Main / STEM + funnel."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pipeline_spec(inputs: list[dict[str, Any]], benchmarks: list[dict[str, Any]], out_dir: Path,
                  no_heuristics: list[str], workers: int = 2) -> dict[str, Any]:
    """A pipeline YAML tree: language id, web-text heuristics, exact + near dedup, decontamination, STEM split.

    The CCNet quality step is left out: it needs a trained quality model (`skyloom data train-quality`) and
    reference text the demo does not have."""
    steps: list[dict[str, Any]] = [
        {"type": "langid", "languages": ["en", "zh"], "min_score": 0.5},
        {"type": "heuristics", "skip_sources": sorted(no_heuristics)},
        {"type": "exact_dedup"},
        {"type": "minhash_dedup", "n_grams": 5, "num_buckets": 14, "hashes_per_bucket": 8},
    ]
    if benchmarks:
        steps.append({"type": "decontaminate", "mode": "drop", "n": 13, "benchmarks": benchmarks})
    steps.append({"type": "stem_split", "threshold": 3.0})
    return {
        "name": "skyloom-demo",
        "output_dir": str(out_dir),
        "executor": {"type": "local", "tasks": workers, "workers": workers},
        "keep_rejects": False,
        "compression": "none",
        "inputs": inputs,
        "steps": steps,
    }


def starter_inputs(corpus: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Pipeline inputs, decontamination benchmarks and heuristic-exempt sources for the starter corpus."""
    inputs = []
    for name in ("zh_news", "zh_reviews", "en_docs", "code", "stem"):
        item: dict[str, Any] = {"name": name, "path": str(corpus / "raw" / f"{name}.jsonl"), "format": "jsonl",
                                "shard": "records"}
        if name == "code":
            item["kind"] = "code"
        inputs.append(item)
    benchmarks = [{"name": f"{name}_heldout", "path": str(corpus / "heldout" / f"{name}.jsonl"), "fields": ["text"]}
                  for name in ("zh_news", "zh_reviews", "en_docs", "stem")]
    # worked solutions and source code are not web prose; the Gopher/C4 rules would reject them
    return inputs, benchmarks, ["code", "stem"]
