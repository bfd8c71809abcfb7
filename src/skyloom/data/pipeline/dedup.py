"""Exact and near-duplicate removal with datatrove's own multi-stage dedup.

- Exact: datatrove ``ExactDedupSignature`` → ``ExactFindDedups`` → ``ExactDedupFilter`` on a normalised
  text hash (NFKC, lower case, whitespace collapsed), so copies that differ only in case/spacing go too.
- Near: datatrove MinHash-LSH (``MinhashDedupSignature`` → ``Buckets`` → ``Cluster`` → ``Filter``). Shingles
  are 5-grams of text units — words for English and other space-separated scripts, characters for Chinese
  (skyloom's script-aware units; datatrove's default would be jieba words for Chinese). With the default
  14 bands × 8 rows, pairs with Jaccard similarity ≥ ~0.75 are caught with high probability
  (P(0.8) = 1-(1-0.8^8)^14 ≈ 0.92).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from datatrove.data import Document
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.utils.hashing import create_hash_func

if TYPE_CHECKING:
    from skyloom.data.pipeline.builder import GlobalContext, GlobalStages

from skyloom.data.pipeline.text import ngram_keys, normalize, unit_hashes, units


def normalized_text(doc: Document) -> bytes:
    """What exact dedup compares (bytes: the installed xxhash refuses str)."""
    return normalize(doc.text).encode("utf-8")


def exact_dedup_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=normalized_text)


@dataclass
class ExactDedupStepConfig:
    """``exact_dedup`` step (no parameters yet: the normalisation is fixed)."""


@dataclass
class MinhashStepConfig:
    """``minhash_dedup`` step."""

    n_grams: int = 5
    num_buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1

    def validate(self) -> None:
        from skyloom.config import ConfigError

        if self.n_grams < 1:
            raise ConfigError("n_grams", "must be ≥ 1")
        for name in ("num_buckets", "hashes_per_bucket"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be ≥ 1, got {getattr(self, name)}")

    def to_datatrove(self) -> MinhashConfig:
        return MinhashConfig(
            n_grams=self.n_grams, num_buckets=self.num_buckets, hashes_per_bucket=self.hashes_per_bucket, seed=self.seed
        )

    @property
    def threshold(self) -> float:
        """Jaccard similarity at which a pair has a 50 % chance of being caught."""
        return (1.0 / self.num_buckets) ** (1.0 / self.hashes_per_bucket)


def shingles(text: str, n: int, hash_func=None) -> np.ndarray:
    """Hashed n-grams of units (words / CJK characters), shape (N, 1) uint64 as datatrove expects.

    (Vectorised: each distinct unit is hashed once, n-gram keys are combined in numpy; ``hash_func`` is
    accepted for datatrove's signature but not needed.)"""
    us = units(text)
    if not us:
        return np.zeros((0, 1), dtype=np.uint64)
    h = unit_hashes(us)
    keys = ngram_keys(h, n) if len(us) >= n else ngram_keys(h, len(us))
    return keys.reshape((-1, 1))


class UnitMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash stage 1 with script-aware shingles (words for English, characters for Chinese)."""

    name = "🎯 MinHash signatures (words / CJK characters)"

    def __init__(self, output_folder: str, config: MinhashConfig):
        # datatrove's __init__ would load a spaCy/jieba word tokenizer we never use: set its fields ourselves
        PipelineStep.__init__(self)
        self.output_folder = get_datafolder(output_folder)
        self.config = config
        self.num_hashes = config.num_buckets * config.hashes_per_bucket
        self._parameters = None
        self._hash_func = create_hash_func(config.hash_config)
        self.language = "units"
        self.word_tokenizer = None
        self.skip_existing_sigs = False

    def get_shingles(self, text: str) -> np.ndarray:
        return shingles(text, self.config.n_grams, self._hash_func)


def exact_dedup_stages(cfg: ExactDedupStepConfig, ctx: GlobalContext) -> GlobalStages:
    """``exact_dedup``: signatures → one task finds the duplicates → the next stage drops them."""
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups

    from skyloom.data.pipeline.builder import GlobalStages

    ecfg = exact_dedup_config()
    sigs, dups = os.path.join(ctx.work_dir, "sigs"), os.path.join(ctx.work_dir, "dups")
    return GlobalStages(
        ExactDedupSignature(sigs, ecfg, finder_workers=1),
        [("find", [ExactFindDedups(sigs, dups, ecfg)], 1)],
        ExactDedupFilter(dups, ecfg),
    )


def minhash_stages(cfg: MinhashStepConfig, ctx: GlobalContext) -> GlobalStages:
    """``minhash_dedup``: signatures → LSH buckets (one task per band) → clusters (one task) → filter."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter

    from skyloom.data.pipeline.builder import GlobalStages

    mcfg = cfg.to_datatrove()
    sigs, buckets, remove = (os.path.join(ctx.work_dir, d) for d in ("sigs", "buckets", "remove"))
    return GlobalStages(
        UnitMinhashSignature(sigs, mcfg),
        [
            ("buckets", [MinhashDedupBuckets(sigs, buckets, config=mcfg)], mcfg.num_buckets),
            ("cluster", [MinhashDedupCluster(buckets, remove, config=mcfg, save_cluster_size=True)], 1),
        ],
        MinhashDedupFilter(remove, load_cluster_sizes=True),
    )
