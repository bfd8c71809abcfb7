"""Distribution filtering (report §3.1): find text blocks whose meaning recurs far beyond the corpus norm.

Three stages:

1. ``SemanticEmbed`` (every task, after the hand-over writer): each document is cut into blocks (its lines —
   after extraction one line is one paragraph); blocks of at least ``min_block_chars`` are embedded.
   Embedding, computed offline: text units (words / CJK characters) and their bigrams, hashed with a sign
   into ``dim`` coordinates (a count-sketch — a sparse Johnson–Lindenstrauss projection of the 2^64-dim
   bag-of-n-grams vector), log-scaled and L2-normalised, so cosine similarity approximates the n-gram
   cosine of the two blocks. No model download, nothing to train, the same vector in every process.
   Why not a neural encoder: none ships inside a PyPI wheel; and what this step targets — boilerplate,
   spam templates, lightly rewritten copies — is lexical recurrence, which n-gram cosine measures well.
2. ``SemanticCluster`` (one task): spherical k-means splits all block vectors into partitions (each block
   joins its two nearest centroids, so near neighbours split by a boundary still meet); inside a partition
   every pair with cosine ≥ ``similarity`` is linked (connected components), as in NeMo-Curator's semantic
   dedup. A group's *recurrence* is the number of distinct documents it spans. The corpus norm is the
   median recurrence over all blocks (1 when most text is unique); groups at ``max(min_docs,
   norm_factor × norm)`` documents or more are flagged.
   Writes per-task removal lists and ``reports/semantic_clusters.{json,md}`` (biggest flagged groups with
   examples).
Documents whose ``kind`` is in ``skip_kinds`` (default: code) are left alone.

3. ``SemanticFilter`` (every task, next stage): removes flagged blocks, except the first ``keep_per_group``
   occurrences of each group; a document left with less than ``min_keep_fraction`` of its characters is
   dropped as ``semantic_recurrent``.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger

from skyloom.data.pipeline.base import SkyFilter, atomic_write_json
from skyloom.data.pipeline.text import unit_hashes, units

if TYPE_CHECKING:
    from skyloom.data.pipeline.builder import GlobalContext, GlobalStages


@dataclass
class SemanticConfig:
    """``semantic_filter`` step."""

    dim: int = 256
    min_block_chars: int = 30
    similarity: float = 0.9  # cosine at which two blocks count as the same text block
    min_docs: int = 5  # a group must span at least this many documents to be flagged …
    norm_factor: float = 5.0  # … and at least norm_factor × the corpus' median recurrence
    keep_per_group: int = 1  # occurrences of a flagged group that stay (the first ones)
    min_keep_fraction: float = 0.5  # documents left with less of their text are dropped
    partition_size: int = 2000  # k-means partitions hold about this many blocks
    kmeans_iters: int = 10
    report_top: int = 20
    seed: int = 0
    # documents of these kinds are neither embedded nor changed: shared import lines and licence headers recur
    # in code by nature, and removing them would break the files (the code step judges code)
    skip_kinds: list[str] = field(default_factory=lambda: ["code"])

    def validate(self) -> None:
        from skyloom.config import ConfigError

        if not 0 < self.similarity <= 1:
            raise ConfigError("similarity", "must be within (0, 1]")
        if self.dim < 16:
            raise ConfigError("dim", "must be ≥ 16")
        if not 0 <= self.min_keep_fraction <= 1:
            raise ConfigError("min_keep_fraction", "must be within [0, 1]")


def blocks_of(text: str) -> list[str]:
    """The blocks of a document: its lines (same split in the embed and filter stages)."""
    return text.split("\n")


def embed(text: str, dim: int) -> np.ndarray:
    """Count-sketch embedding of unit 1- and 2-grams; L2-normalised float32 [dim]."""
    us = units(text)
    v = np.zeros(dim, dtype=np.float32)
    if not us:
        return v
    h = unit_hashes(us)
    if len(h) > 1:
        with np.errstate(over="ignore"):
            h = np.concatenate([h, (h[:-1] * np.uint64(0x9E3779B97F4A7C15)) ^ (h[1:] + np.uint64(0x632BE59BD9B4E019))])
    idx = (h % np.uint64(dim)).astype(np.int64)
    sign = np.where((h >> np.uint64(63)) & np.uint64(1), -1.0, 1.0).astype(np.float32)
    np.add.at(v, idx, sign)
    v = np.sign(v) * np.log1p(np.abs(v))
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


class SemanticEmbed(PipelineStep):
    """Stage 1: ``<work>/<rank>.npz`` (vectors, doc/block index, lengths) + ``<rank>.blocks.jsonl`` excerpts."""

    type = "🧭 - SEMANTIC"
    name = "🧭 Block embeddings"

    def __init__(self, output_folder: str, cfg: SemanticConfig):
        super().__init__()
        self.output_folder = output_folder
        self.cfg = cfg

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        os.makedirs(self.output_folder, exist_ok=True)
        vecs, doc_idx, block_idx, lengths = [], [], [], []
        excerpts = open(os.path.join(self.output_folder, f"{rank:05d}.blocks.jsonl.tmp"), "w", encoding="utf-8")
        with self.track_time(), excerpts:
            for di, doc in enumerate(data):
                self.stat_update("documents")
                if doc.metadata.get("kind") in self.cfg.skip_kinds:
                    self.stat_update("skipped_kind")
                    continue
                src, lang = doc.metadata.get("source"), doc.metadata.get("language")
                for bi, block in enumerate(blocks_of(doc.text)):
                    b = block.strip()
                    if len(b) < self.cfg.min_block_chars:
                        continue
                    vecs.append(embed(b, self.cfg.dim).astype(np.float16))
                    doc_idx.append(di)
                    block_idx.append(bi)
                    lengths.append(len(block))
                    excerpts.write(
                        json.dumps({"id": doc.id, "source": src, "language": lang, "text": b[:240]}, ensure_ascii=False)
                        + "\n"
                    )
                    self.stat_update("blocks")
        arr = np.stack(vecs) if vecs else np.zeros((0, self.cfg.dim), np.float16)
        tmp = os.path.join(self.output_folder, f"{rank:05d}.tmp.npz")
        np.savez(
            tmp,
            vectors=arr,
            doc=np.array(doc_idx, np.int64),
            block=np.array(block_idx, np.int32),
            length=np.array(lengths, np.int64),
        )
        os.replace(tmp, os.path.join(self.output_folder, f"{rank:05d}.npz"))
        os.replace(excerpts.name, os.path.join(self.output_folder, f"{rank:05d}.blocks.jsonl"))


# ------------------------------------------------------------------------------------------------ stage 2


def _kmeans(x: np.ndarray, k: int, iters: int, seed: int) -> np.ndarray:
    """Spherical k-means centroids (unit vectors) of unit rows x."""
    rng = np.random.default_rng(seed)
    sample = x if len(x) <= 100_000 else x[rng.choice(len(x), 100_000, replace=False)]
    cent = sample[rng.choice(len(sample), k, replace=False)].copy()
    for _ in range(iters):
        assign = np.argmax(sample @ cent.T, axis=1)
        for j in range(k):
            members = sample[assign == j]
            if len(members):
                c = members.sum(0)
                n = np.linalg.norm(c)
                cent[j] = c / n if n > 0 else cent[j]
            else:
                cent[j] = sample[rng.integers(len(sample))]
    return cent


def group_blocks(x: np.ndarray, similarity: float, partition_size: int, iters: int, seed: int) -> np.ndarray:
    """Group label per row: connected components of the graph "cosine ≥ similarity".

    Identical vectors (verbatim boilerplate) are collapsed first, so a block repeated 100,000 times costs one
    row, not 10^10 pairs.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(x)
    if n < 2:
        return np.arange(n)
    uniq, inv = np.unique(x.astype(np.float16), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    u = uniq.astype(np.float32)
    m = len(u)
    k = max(1, int(np.ceil(m / partition_size)))
    if k == 1:
        parts = [np.arange(m)]
    else:
        cent = _kmeans(u, k, iters, seed)
        top2 = np.argsort(-(u @ cent.T), axis=1)[:, :2]
        parts = [np.flatnonzero((top2 == j).any(axis=1)) for j in range(k)]
    rows, cols = [], []
    for members in parts:
        if len(members) < 2:
            continue
        um = u[members]
        for start in range(0, len(members), 1024):
            ii, jj = np.nonzero(um[start : start + 1024] @ um.T >= similarity)
            keep = ii + start < jj
            rows.append(members[ii[keep] + start])
            cols.append(members[jj[keep]])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    return labels[inv]


class SemanticCluster(PipelineStep):
    """Stage 2 (one task): groups, flags over-recurring ones, writes removal lists and the report."""

    type = "🧭 - SEMANTIC"
    name = "🧭 Recurrence clusters"

    def __init__(self, input_folder: str, output_folder: str, report_dir: str, cfg: SemanticConfig):
        super().__init__()
        self.input_folder = input_folder
        self.output_folder = output_folder
        self.report_dir = report_dir
        self.cfg = cfg

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        files = sorted(f for f in os.listdir(self.input_folder) if f.endswith(".npz"))
        vecs, ranks, docs, blocks, lengths = [], [], [], [], []
        for f in files:
            r = int(f.split(".")[0])
            with np.load(os.path.join(self.input_folder, f), allow_pickle=False) as z:
                vecs.append(z["vectors"].astype(np.float32))
                docs.append(z["doc"])
                blocks.append(z["block"])
                lengths.append(z["length"])
                ranks.append(np.full(len(z["doc"]), r, np.int64))
        x = np.concatenate(vecs) if vecs else np.zeros((0, self.cfg.dim), np.float32)
        rank_of = np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
        doc_of = np.concatenate(docs) if docs else np.zeros(0, np.int64)
        block_of = np.concatenate(blocks) if blocks else np.zeros(0, np.int32)
        len_of = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        with self.track_time():
            group = group_blocks(x, self.cfg.similarity, self.cfg.partition_size, self.cfg.kmeans_iters, self.cfg.seed)
        # recurrence = distinct documents per group; (rank, doc) identifies a document
        members: dict[int, list[int]] = defaultdict(list)
        for i, g in enumerate(group.tolist()):
            members[g].append(i)
        recurrence = {g: len({(int(rank_of[i]), int(doc_of[i])) for i in m}) for g, m in members.items()}
        recurring = [r for r in recurrence.values() if r >= 2]
        # the corpus norm: how often a typical block recurs (median over blocks — 1 in a healthy corpus)
        per_block = np.array([recurrence[g] for g in group.tolist()]) if len(group) else np.ones(1)
        norm = float(np.median(per_block))
        threshold = max(self.cfg.min_docs, self.cfg.norm_factor * norm)
        flagged = sorted((g for g, r in recurrence.items() if r >= threshold), key=lambda g: -recurrence[g])
        removals: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        removed_blocks = removed_chars = 0
        for g in flagged:
            ordered = sorted(members[g], key=lambda i: (rank_of[i], doc_of[i], block_of[i]))
            kept_docs: list[tuple[int, int]] = []
            for i in ordered:
                key = (int(rank_of[i]), int(doc_of[i]))
                if len(kept_docs) < self.cfg.keep_per_group and key not in kept_docs:
                    kept_docs.append(key)
                if key in kept_docs:
                    continue
                removals[key[0]][key[1]].append(int(block_of[i]))
                removed_blocks += 1
                removed_chars += int(len_of[i])
        os.makedirs(self.output_folder, exist_ok=True)
        task_ranks = sorted(set(rank_of.tolist()) | {int(f.split(".")[0]) for f in files})
        for r in task_ranks:
            atomic_write_json(
                os.path.join(self.output_folder, f"{r:05d}.json"),
                {str(d): sorted(b) for d, b in removals.get(r, {}).items()},
            )
        summary = {
            "blocks": int(len(x)),
            "groups": len(members),
            "recurring_groups": len(recurring),
            "norm_recurrence": norm,
            "threshold_docs": threshold,
            "flagged_groups": len(flagged),
            "removed_blocks": removed_blocks,
            "removed_chars": removed_chars,
            "config": self.cfg.__dict__,
        }
        self.stat_update("flagged_groups", value=len(flagged))
        self.stat_update("removed_blocks", value=removed_blocks)
        self._report(summary, flagged[: self.cfg.report_top], members, recurrence, rank_of)
        logger.info(f"semantic: {summary}")

    def _report(self, summary, top, members, recurrence, rank_of) -> None:
        # excerpts of the blocks we report on
        wanted: dict[int, set[int]] = defaultdict(set)
        starts: dict[int, int] = {}
        offset = 0
        for r in sorted(set(rank_of.tolist())):
            starts[r] = offset
            offset += int((rank_of == r).sum())
        for g in top:
            for i in members[g][:50]:
                r = int(rank_of[i])
                wanted[r].add(i - starts[r])
        rows: dict[int, dict[str, Any]] = {}
        for r, local in wanted.items():
            path = os.path.join(self.input_folder, f"{r:05d}.blocks.jsonl")
            with open(path, encoding="utf-8") as f:
                for j, line in enumerate(f):
                    if j in local:
                        rows[starts[r] + j] = json.loads(line)
        groups = []
        for g in top:
            ex = [rows[i] for i in members[g][:50] if i in rows]
            texts = Counter(e["text"] for e in ex)
            groups.append(
                {
                    "documents": recurrence[g],
                    "blocks": len(members[g]),
                    "sources": dict(Counter(e.get("source") for e in ex)),
                    "languages": dict(Counter(e.get("language") for e in ex)),
                    "examples": [t for t, _ in texts.most_common(3)],
                    "example_ids": [e["id"] for e in ex[:5]],
                }
            )
        os.makedirs(self.report_dir, exist_ok=True)
        atomic_write_json(
            os.path.join(self.report_dir, "semantic_clusters.json"), {"summary": summary, "top_groups": groups}
        )
        lines = [
            "# Distribution filter: most over-recurring text blocks",
            "",
            f"{summary['blocks']:,} blocks in {summary['groups']:,} groups; "
            f"{summary['recurring_groups']:,} recur (span ≥ 2 documents); corpus norm (median block recurrence) "
            f"{summary['norm_recurrence']:g} documents; flagged at ≥ {summary['threshold_docs']:g} documents: "
            f"{summary['flagged_groups']:,} groups, {summary['removed_blocks']:,} blocks / "
            f"{summary['removed_chars']:,} characters removed.",
            "",
        ]
        for n, grp in enumerate(groups, 1):
            lines.append(f"## {n}. {grp['documents']} documents, {grp['blocks']} blocks — sources {grp['sources']}")
            for t in grp["examples"]:
                lines.append(f"- `{t[:200]}`")
            lines.append("")
        with open(os.path.join(self.report_dir, "semantic_clusters.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines))


# ------------------------------------------------------------------------------------------------ stage 3


class SemanticFilter(SkyFilter):
    """Stage 3: drop flagged blocks; drop documents left mostly empty (``semantic_recurrent``)."""

    name = "🧭 Distribution filter"
    default_reason = "semantic_recurrent"

    def __init__(self, decisions_folder: str, cfg: SemanticConfig):
        super().__init__()
        self.decisions_folder = decisions_folder
        self.cfg = cfg
        self._removals: dict[str, list[int]] = {}
        self._idx = -1

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = os.path.join(self.decisions_folder, f"{rank:05d}.json")
        with open(path, encoding="utf-8") as f:
            self._removals = json.load(f)
        self._idx = -1

        def counted():
            for doc in data:
                self._idx += 1
                yield doc

        yield from super().run(counted(), rank, world_size)

    def filter(self, doc) -> bool | tuple[bool, str]:
        drop = self._removals.get(str(self._idx))
        if not drop:
            return True
        blocks = blocks_of(doc.text)
        total = sum(len(b) for b in blocks) or 1
        gone = set(drop)
        kept = [b for i, b in enumerate(blocks) if i not in gone]
        kept_chars = sum(len(b) for b in kept)
        doc.metadata["semantic_removed_blocks"] = len(gone)
        if kept_chars / total < self.cfg.min_keep_fraction:
            return False, "semantic_recurrent"
        doc.text = "\n".join(kept)
        return True


def semantic_stages(cfg: SemanticConfig, ctx: GlobalContext) -> GlobalStages:
    """``semantic_filter``: block embeddings → one task clusters them (and writes the report) → filter."""
    from skyloom.data.pipeline.builder import GlobalStages

    embeddings, decisions = os.path.join(ctx.work_dir, "embeddings"), os.path.join(ctx.work_dir, "decisions")
    return GlobalStages(
        SemanticEmbed(embeddings, cfg),
        [("cluster", [SemanticCluster(embeddings, decisions, os.path.join(ctx.output_dir, "reports"), cfg)], 1)],
        SemanticFilter(decisions, cfg),
    )
