"""CCNet-style quality step: how much does a page look like a Wikipedia reference?

Features: 1- and 2-grams of text units (words for Latin script, characters for CJK — so Chinese bigrams are
word-like), hashed into 2^bits buckets with a sign bit (the hashing trick), log-scaled counts, L2-normalised.
Model: logistic regression trained with AdaGrad mini-batches and L2 penalty, in numpy (no sklearn, no
pickle). Positives: encyclopedic text (e.g. WikiText, CMRC 2018 passages); negatives: general web text.

Buckets: like CCNet's head/middle/tail (cc_net ``cutoff.csv``: per-language perplexity percentiles 30/60),
cutoffs are per-language score percentiles of held-out *web* (negative) text: by default the top 30 % of web
scores is ``head``, the next 30 % ``middle``, the rest ``tail``. The pipeline keeps the configured buckets.

The model file is one safetensors file: ``weight`` [2^bits] float32, ``bias`` [1], and in its metadata the
feature settings, cutoffs and the training report (JSON).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skyloom.data.pipeline.base import SkyFilter
from skyloom.data.pipeline.text import cjk_fraction, unit_hashes, units

BUCKETS = ("head", "middle", "tail")


# ----------------------------------------------------------------------------------------------- features


def _unit_hashes(text: str, max_chars: int) -> np.ndarray:
    """64-bit hashes (xxh64: stable across processes) of unit 1-grams and 2-grams."""
    us = units(text[:max_chars])
    if not us:
        return np.zeros(0, dtype=np.uint64)
    h = unit_hashes(us)
    if len(h) > 1:
        with np.errstate(over="ignore"):
            bi = (h[:-1] * np.uint64(0x9E3779B97F4A7C15)) ^ (h[1:] + np.uint64(0x632BE59BD9B4E019))
        h = np.concatenate([h, bi])
    return h


def featurize(text: str, bits: int, max_chars: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    """Sparse feature vector (indices, values): signed hashed counts, log1p-scaled, L2-normalised."""
    h = _unit_hashes(text, max_chars)
    if h.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    idx = (h & np.uint64((1 << bits) - 1)).astype(np.int64)
    sign = np.where((h >> np.uint64(63)) & np.uint64(1), -1.0, 1.0).astype(np.float32)
    uniq, inv = np.unique(idx, return_inverse=True)
    vals = np.zeros(len(uniq), dtype=np.float32)
    np.add.at(vals, inv, sign)
    vals = np.sign(vals) * np.log1p(np.abs(vals))
    norm = float(np.sqrt((vals * vals).sum()))
    if norm > 0:
        vals /= norm
    keep = vals != 0
    return uniq[keep], vals[keep]


def _to_csr(rows: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r[0]) for r in rows])
    indices = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int64)
    values = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.float32)
    return indptr, indices, values


# ----------------------------------------------------------------------------------------------- model


@dataclass
class QualityModel:
    weight: np.ndarray
    bias: float
    bits: int
    cutoffs: dict[str, list[float]] = field(default_factory=dict)  # language → [head_min, middle_min]
    report: dict[str, Any] = field(default_factory=dict)
    max_chars: int = 20_000

    def score(self, text: str) -> float:
        idx, vals = featurize(text, self.bits, self.max_chars)
        z = float(self.weight[idx] @ vals) + self.bias if idx.size else self.bias
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def bucket(self, score: float, language: str) -> str:
        cut = self.cutoffs.get(language) or self.cutoffs.get("default")
        if not cut:
            raise ValueError(f"quality model has no cutoffs for language {language!r} and no default")
        if score >= cut[0]:
            return "head"
        if score >= cut[1]:
            return "middle"
        return "tail"

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "skyloom-quality-v1",
            "bits": str(self.bits),
            "max_chars": str(self.max_chars),
            "cutoffs": json.dumps(self.cutoffs),
            "report": json.dumps(self.report, ensure_ascii=False),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(
            {"weight": self.weight.astype(np.float32), "bias": np.array([self.bias], np.float32)},
            str(tmp),
            metadata=meta,
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> QualityModel:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"quality model not found: {path} (train one with `skyloom data train-quality`)")
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "skyloom-quality-v1":
                raise ValueError(f"{path}: not a skyloom quality model (metadata format={meta.get('format')!r})")
            weight = f.get_tensor("weight")
            bias = float(f.get_tensor("bias")[0])
        return cls(
            weight=weight,
            bias=bias,
            bits=int(meta["bits"]),
            cutoffs=json.loads(meta["cutoffs"]),
            report=json.loads(meta.get("report", "{}")),
            max_chars=int(meta.get("max_chars", 20_000)),
        )


def _predict(w: np.ndarray, b: float, indptr, indices, values) -> np.ndarray:
    contrib = w[indices] * values
    z = np.add.reduceat(contrib, indptr[:-1]) if len(contrib) else np.zeros(len(indptr) - 1)
    # reduceat gives the element at the start index for empty rows; fix those
    empty = indptr[1:] == indptr[:-1]
    z[empty] = 0.0
    return 1.0 / (1.0 + np.exp(-np.clip(z + b, -50, 50)))


def train_logistic(
    rows: list[tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    bits: int,
    epochs: int = 8,
    lr: float = 0.5,
    l2: float = 1e-6,
    batch_size: int = 256,
    seed: int = 0,
    class_weight: bool = True,
) -> tuple[np.ndarray, float]:
    """Logistic regression on sparse rows with AdaGrad mini-batches (balanced class weights by default)."""
    rng = np.random.default_rng(seed)
    dim = 1 << bits
    w = np.zeros(dim, dtype=np.float32)
    g2 = np.full(dim, 1e-8, dtype=np.float32)
    b, gb2 = 0.0, 1e-8
    y = labels.astype(np.float32)
    pos = max(1.0, float(y.sum()))
    neg = max(1.0, float(len(y) - y.sum()))
    sw = np.where(y > 0, len(y) / (2 * pos), len(y) / (2 * neg)).astype(np.float32) if class_weight else np.ones_like(y)
    for _ in range(epochs):
        order = rng.permutation(len(rows))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            indptr, indices, values = _to_csr([rows[i] for i in batch])
            p = _predict(w, b, indptr, indices, values)
            err = (p - y[batch]) * sw[batch] / len(batch)
            row_err = np.repeat(err, np.diff(indptr))
            grad = np.zeros(dim, dtype=np.float32)
            np.add.at(grad, indices, row_err * values)
            touched = np.unique(indices)
            grad[touched] += l2 * w[touched]
            g2[touched] += grad[touched] ** 2
            w[touched] -= lr * grad[touched] / np.sqrt(g2[touched])
            gb = float(err.sum())
            gb2 += gb * gb
            b -= lr * gb / math.sqrt(gb2)
    return w, b


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    npos = labels.sum()
    nneg = len(labels) - npos
    if npos == 0 or nneg == 0:
        return float("nan")
    return float((ranks[labels == 1].sum() - npos * (npos + 1) / 2) / (npos * nneg))


# ----------------------------------------------------------------------------------------------- training


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Paragraph-aligned chunks of about chunk_chars (so long and short documents weigh alike)."""
    out, buf, n = [], [], 0
    for para in text.split("\n"):
        para = para.strip()
        if not para:
            continue
        buf.append(para)
        n += len(para)
        if n >= chunk_chars:
            out.append("\n".join(buf))
            buf, n = [], 0
    if buf and (n >= chunk_chars // 4 or not out):
        out.append("\n".join(buf))
    return out


def _language_of(text: str) -> str:
    return "zh" if cjk_fraction(text[:2000]) > 0.3 else "en"


@dataclass
class QualityTrainConfig:
    """``skyloom data train-quality`` recipe."""

    output: str
    positives: list[dict[str, Any]] = field(default_factory=list)  # inputs (same keys as pipeline inputs)
    negatives: list[dict[str, Any]] = field(default_factory=list)
    bits: int = 20
    chunk_chars: int = 1500
    max_docs_per_input: int = 5000
    max_chunks_per_doc: int = 4
    epochs: int = 8
    lr: float = 0.5
    l2: float = 1e-6
    heldout_fraction: float = 0.15
    head_fraction: float = 0.3  # of held-out web (negative) text per language
    middle_fraction: float = 0.3
    seed: int = 0

    def validate(self) -> None:
        from skyloom.config import ConfigError

        if not self.positives or not self.negatives:
            raise ConfigError("positives", "both positives and negatives need at least one input")
        if not 8 <= self.bits <= 26:
            raise ConfigError("bits", "must be within [8, 26]")
        if not 0 < self.head_fraction + self.middle_fraction < 1:
            raise ConfigError("head_fraction", "head_fraction + middle_fraction must be within (0, 1)")
        if not 0 < self.heldout_fraction < 0.9:
            raise ConfigError("heldout_fraction", "must be within (0, 0.9)")


def _read_texts(inputs: list[dict[str, Any]], max_docs: int, prefix: str) -> list[tuple[str, str]]:
    """(source label, text) for each document of the inputs, via the pipeline's own readers."""
    import tempfile

    from skyloom.config import build
    from skyloom.data.pipeline.extract import NotHTML, extract_html
    from skyloom.data.pipeline.readers import InputConfig, SourceReader

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, spec in enumerate(inputs):
            cfg = build(InputConfig, spec, prefix=f"{prefix}[{i}]")
            reader = SourceReader(cfg, tmp, tmp)
            n = 0
            for doc in reader.run(None, 0, 1):
                text = doc.text
                if doc.metadata.get("content_type") == "html":
                    try:
                        text = extract_html(text, backend=spec.get("extract_backend", "skyloom")).text
                    except NotHTML:
                        continue
                out.append((cfg.label, text))
                n += 1
                if n >= max_docs:
                    break
    return out


def train_quality(cfg: QualityTrainConfig, progress: bool = True) -> QualityModel:
    """Read, chunk, featurize, fit, evaluate on held-out chunks, set per-language cutoffs, save."""
    from skyloom.progress import iterate

    t0 = time.time()
    rng = np.random.default_rng(cfg.seed)
    samples: list[tuple[str, int, str, str]] = []  # (text, label, language, source)
    for label, inputs, name in ((1, cfg.positives, "positives"), (0, cfg.negatives, "negatives")):
        for source, text in _read_texts(inputs, cfg.max_docs_per_input, name):
            chunks = chunk_text(text, cfg.chunk_chars)
            if len(chunks) > cfg.max_chunks_per_doc:
                pick = rng.choice(len(chunks), cfg.max_chunks_per_doc, replace=False)
                chunks = [chunks[j] for j in sorted(pick)]
            for c in chunks:
                samples.append((c, label, _language_of(c), source))
    if not samples:
        raise ValueError("no training text found in the inputs")
    rows = [featurize(t, cfg.bits) for t, *_ in iterate(samples, "features", enabled=progress)]
    labels = np.array([s[1] for s in samples])
    langs = np.array([s[2] for s in samples])
    heldout = rng.random(len(samples)) < cfg.heldout_fraction
    train_idx = np.flatnonzero(~heldout)
    w, b = train_logistic(
        [rows[i] for i in train_idx],
        labels[train_idx],
        cfg.bits,
        epochs=cfg.epochs,
        lr=cfg.lr,
        l2=cfg.l2,
        seed=cfg.seed,
    )
    model = QualityModel(weight=w, bias=b, bits=cfg.bits)
    scores = np.array([model.score(samples[i][0]) for i in np.flatnonzero(heldout)])
    h_labels, h_langs = labels[heldout], langs[heldout]
    report: dict[str, Any] = {
        "train_chunks": int(len(train_idx)),
        "heldout_chunks": int(heldout.sum()),
        "positives": int(labels.sum()),
        "negatives": int(len(labels) - labels.sum()),
        "heldout_accuracy": float(((scores >= 0.5) == (h_labels == 1)).mean()),
        "heldout_auc": _auc(scores, h_labels),
        "per_language": {},
        "sources": sorted({s[3] for s in samples}),
    }
    cutoffs: dict[str, list[float]] = {}
    head_q = 1.0 - cfg.head_fraction
    mid_q = 1.0 - cfg.head_fraction - cfg.middle_fraction
    for lang in sorted(set(langs.tolist())):
        m = h_langs == lang
        web = scores[m & (h_labels == 0)]
        if len(web) >= 10:
            cutoffs[lang] = [float(np.quantile(web, head_q)), float(np.quantile(web, mid_q))]
        report["per_language"][lang] = {
            "heldout_chunks": int(m.sum()),
            "auc": _auc(scores[m], h_labels[m]),
            "accuracy": float(((scores[m] >= 0.5) == (h_labels[m] == 1)).mean()) if m.any() else float("nan"),
        }
    all_web = scores[h_labels == 0]
    if len(all_web):
        cutoffs["default"] = [float(np.quantile(all_web, head_q)), float(np.quantile(all_web, mid_q))]
    model.cutoffs = cutoffs
    report["cutoffs"] = cutoffs
    report["seconds"] = round(time.time() - t0, 1)
    report["config"] = {k: v for k, v in cfg.__dict__.items() if k not in ("positives", "negatives")}
    model.report = report
    model.save(cfg.output)
    return model


# ----------------------------------------------------------------------------------------------- step


@dataclass
class QualityConfig:
    """``quality`` step: score, bucket, keep the configured buckets."""

    model: str
    keep_buckets: list[str] = field(default_factory=lambda: ["head", "middle"])
    train_config: str | None = None  # a train-quality recipe to run first when `model` does not exist

    def validate(self) -> None:
        from skyloom.config import ConfigError

        bad = [b for b in self.keep_buckets if b not in BUCKETS]
        if bad:
            raise ConfigError("keep_buckets", f"unknown buckets {bad}; buckets are {list(BUCKETS)}")


class QualityClassifier(SkyFilter):
    """Sets ``quality_score`` and ``quality_bucket``; drops documents outside ``keep_buckets``."""

    name = "🏅 Quality"
    default_reason = "quality"

    def __init__(self, cfg: QualityConfig):
        super().__init__()
        self.cfg = cfg
        self._model: QualityModel | None = None

    def setup(self) -> None:
        if self._model is None:
            self._model = QualityModel.load(self.cfg.model)

    def filter(self, doc) -> bool | tuple[bool, str]:
        md = doc.metadata
        if md.get("kind") == "code":
            return True
        score = self._model.score(doc.text)
        bucket = self._model.bucket(score, md.get("language") or "default")
        md["quality_score"] = round(score, 4)
        md["quality_bucket"] = bucket
        self.count(f"bucket:{bucket}")  # every scored document, kept or not: the bucket distribution
        self.count(f"bucket:{bucket}:{md.get('language') or '?'}")
        if bucket not in self.cfg.keep_buckets:
            return False, f"quality_{bucket}"
        return True


def score_texts(model: QualityModel, texts: Iterable[str]) -> list[float]:
    return [model.score(t) for t in texts]
