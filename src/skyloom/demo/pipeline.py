"""The demo's SkyPile pipeline description: starter corpus (or the user's files) → Main / STEM + funnel."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pipeline_spec(
    inputs: list[dict[str, Any]],
    benchmarks: list[dict[str, Any]],
    out_dir: Path,
    no_heuristics: list[str],
    workers: int = 2,
) -> dict[str, Any]:
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


def corpus_inputs(
    corpus: Path, manifest: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Pipeline inputs, decontamination benchmarks and heuristic-exempt sources for a demo corpus directory."""
    inputs = []
    for name in manifest["domains"]:
        item: dict[str, Any] = {
            "name": name,
            "path": str(corpus / "raw" / f"{name}.jsonl"),
            "format": "jsonl",
            "shard": "records",
        }
        if name == "code":
            item["kind"] = "code"
        inputs.append(item)
    # nothing held out — validation documents, Table-6 sets, the leakage test and reference sets — may be trained on
    held = [(f"{name}_heldout", corpus / "heldout" / f"{name}.jsonl") for name in manifest["domains"]]
    held += [(f"table6_{name}", Path(path)) for name, path in (manifest.get("table6") or {}).items()]
    held += [(f"leakage_{k}", Path(manifest["leakage"][k])) for k in ("test", "ref") if manifest.get("leakage")]
    benchmarks = [
        {"name": name, "path": str(path), "fields": ["text"]}
        for name, path in held
        if path.is_file() and path.stat().st_size > 0
    ]
    # worked solutions and source code are not web prose; the Gopher/C4 rules would reject them
    exempt = sorted({"code", *manifest.get("stem_domains", [])} & set(manifest["domains"]))
    return inputs, benchmarks, exempt
