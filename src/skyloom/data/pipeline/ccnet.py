"""CCNet-style quality buckets: perplexity under a reference n-gram LM trained on Wikipedia-like text.

CCNet (Wenzek et al. 2020, §3.3) scores every paragraph with a 5-gram Kneser-Ney model trained on Wikipedia of
the same language; a document's perplexity is 10^(-sum log10 p / tokens) over its lines, and the per-language
30th/60th percentiles of perplexity cut the corpus into head / middle / tail. The report (SkyPile) says its
quality filtering is CCNet-style; ``quality`` (a classifier) is the other reading, this step is the literal one.

Tokens: skyloom's text units (words for Latin script, characters for CJK, so Chinese needs no segmenter), lower
case, every digit mapped to 0 (CCNet's normalisation). Lines are scored separately (each is a sentence for the LM).
The model file is one safetensors file: per language its n-gram tables (``<lang>.<n>.keys|alpha|ctx_keys|gamma``)
and, in the JSON metadata, order, vocabulary size, discounts, the cut-offs and the training report.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skyloom.config import ConfigError
from skyloom.data.pipeline.base import SkyFilter
from skyloom.data.pipeline.kn_lm import KneserNeyLM
from skyloom.data.pipeline.quality import BUCKETS  # the same head/middle/tail as the classifier
from skyloom.data.pipeline.text import cjk_fraction, units

FORMAT = "skyloom-ccnet-v1"
_DIGIT = re.compile(r"\d")


class CCNetModelError(ConfigError):
    """A CCNet model file is missing, unreadable or not one (the message names the file)."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__("", f"{path}: {message}")


def lm_tokens(line: str) -> list[str]:
    """The LM's tokens of one line: text units, lower case, digits → 0."""
    return units(_DIGIT.sub("0", line))


def doc_lines(text: str, max_chars: int) -> list[list[str]]:
    """Token lists of the non-empty lines of the first ``max_chars`` characters."""
    out = []
    for line in text[:max_chars].split("\n"):
        toks = lm_tokens(line)
        if toks:
            out.append(toks)
    return out


def guess_language(text: str) -> str:
    """zh when CJK characters dominate, else en (used when no language step ran first)."""
    return "zh" if cjk_fraction(text[:2000]) > 0.3 else "en"


@dataclass
class LanguageModel:
    lm: KneserNeyLM
    cutoffs: list[float]  # [head_max, middle_max] perplexity: head ≤ head_max < middle ≤ middle_max < tail
    report: dict[str, Any] = field(default_factory=dict)

    def bucket(self, perplexity: float) -> str:
        if perplexity <= self.cutoffs[0]:
            return "head"
        if perplexity <= self.cutoffs[1]:
            return "middle"
        return "tail"


def perplexity(lm: KneserNeyLM, text: str, max_chars: int = 20_000) -> float:
    """exp of minus the token-weighted mean log-probability over the document's lines (inf: no tokens)."""
    lines = doc_lines(text, max_chars)
    if not lines:
        return math.inf
    logp, _ = lm.token_logprobs(lines)
    return float(math.exp(-float(logp.mean())))


@dataclass
class CCNetModel:
    languages: dict[str, LanguageModel]
    max_chars: int = 20_000

    def perplexity(self, text: str, language: str) -> float:
        return perplexity(self.languages[language].lm, text, self.max_chars)

    def save(self, path: str | os.PathLike) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {}
        for lang, m in self.languages.items():
            tensors.update(m.lm.tensors(lang))
            meta[lang] = {
                "order": m.lm.order,
                "vocab_size": m.lm.vocab_size,
                "discounts": [list(t.discounts) for t in m.lm.tables],
                "cutoffs": m.cutoffs,
                "report": m.report,
            }
        tmp = path.with_name(path.name + ".tmp")
        header = {"format": FORMAT, "max_chars": str(self.max_chars), "languages": json.dumps(meta, ensure_ascii=False)}
        save_file(tensors, str(tmp), metadata=header)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> CCNetModel:
        from safetensors import safe_open

        if not os.path.isfile(path):
            raise CCNetModelError(path, "CCNet model not found (give the step a `train:` recipe to build it)")
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise CCNetModelError(path, f"not a skyloom CCNet model (metadata format={meta.get('format')!r})")
                langs = json.loads(meta["languages"])
                names = set(f.keys())

                def get(name: str) -> np.ndarray:
                    if name not in names:
                        raise CCNetModelError(path, f"tensor {name!r} is missing")
                    return f.get_tensor(name)

                models = {
                    lang: LanguageModel(
                        KneserNeyLM.from_tensors(get, lang, int(m["order"]), int(m["vocab_size"]), m["discounts"]),
                        [float(c) for c in m["cutoffs"]],
                        m.get("report", {}),
                    )
                    for lang, m in langs.items()
                }
                return cls(models, int(meta.get("max_chars", 20_000)))
        except CCNetModelError:
            raise
        except Exception as err:  # safetensors' own errors, bad JSON, missing keys, inconsistent tables
            raise CCNetModelError(path, f"not a readable CCNet model ({type(err).__name__}: {err})") from err


# ----------------------------------------------------------------------------------------------- training


@dataclass
class CCNetLanguageSpec:
    """One language: ``reference`` text the LM learns (Wikipedia-like), ``sample`` text like the corpus the step
    will bucket (the percentiles are taken on it). Both are lists of pipeline inputs."""

    reference: list[dict[str, Any]]
    sample: list[dict[str, Any]]


@dataclass
class CCNetTrainConfig:
    """Train one reference LM per language and its head/middle/tail cut-offs."""

    output: str
    languages: dict[str, dict[str, Any]]  # language → {reference: [inputs], sample: [inputs]}
    order: int = 5
    head_percentile: float = 30.0  # CCNet's cutoff.csv: 30 / 60
    middle_percentile: float = 60.0
    max_docs_per_input: int = 20_000
    max_sample_docs: int = 5_000  # per language
    max_chars: int = 20_000  # per document, when scoring
    seed: int = 0

    def validate(self) -> None:
        if not self.languages:
            raise ConfigError("languages", "name at least one language with reference and sample inputs")
        if not 1 <= self.order <= 8:
            raise ConfigError("order", f"must be within [1, 8], got {self.order}")
        if not 0 < self.head_percentile < self.middle_percentile < 100:
            raise ConfigError("head_percentile", "need 0 < head_percentile < middle_percentile < 100")

    def specs(self) -> dict[str, CCNetLanguageSpec]:
        from skyloom.config import build

        out = {}
        for lang, raw in self.languages.items():
            spec = build(CCNetLanguageSpec, raw, prefix=f"languages.{lang}")
            if not spec.reference or not spec.sample:
                raise ConfigError(f"languages.{lang}", "needs both reference and sample inputs")
            out[lang] = spec
        return out


def cutoffs_from(perplexities: Sequence[float], head_percentile: float, middle_percentile: float) -> list[float]:
    """[head_max, middle_max]: the percentiles of the finite perplexities of a sample."""
    finite = np.asarray([p for p in perplexities if math.isfinite(p)], dtype=np.float64)
    if finite.size == 0:
        raise ValueError("no scorable sample document (every one is empty)")
    return [float(np.percentile(finite, head_percentile)), float(np.percentile(finite, middle_percentile))]


def train_ccnet(cfg: CCNetTrainConfig) -> CCNetModel:
    """Read the references, count and smooth, score the samples, set the cut-offs, save."""
    from skyloom.data.pipeline.quality import _read_texts

    models = {}
    rng = np.random.default_rng(cfg.seed)
    for lang, spec in cfg.specs().items():
        t0 = time.time()
        ref = _read_texts(spec.reference, cfg.max_docs_per_input, f"languages.{lang}.reference")
        lines = [line for _, text in ref for line in doc_lines(text, len(text))]
        if not lines:
            raise ConfigError(f"languages.{lang}.reference", "no text found in the reference inputs")
        lm = KneserNeyLM.train(lines, cfg.order)
        sample = [t for _, t in _read_texts(spec.sample, cfg.max_docs_per_input, f"languages.{lang}.sample")]
        if len(sample) > cfg.max_sample_docs:
            sample = [sample[i] for i in sorted(rng.choice(len(sample), cfg.max_sample_docs, replace=False))]
        ppl = [perplexity(lm, t, cfg.max_chars) for t in sample]
        try:
            cutoffs = cutoffs_from(ppl, cfg.head_percentile, cfg.middle_percentile)
        except ValueError as err:
            raise ConfigError(f"languages.{lang}.sample", str(err)) from err
        finite = [p for p in ppl if math.isfinite(p)]
        report = {
            "reference_docs": len(ref),
            "reference_lines": len(lines),
            "reference_tokens": int(sum(len(x) for x in lines)),
            "ngrams": [len(t.keys) for t in lm.tables],
            "sample_docs": len(sample),
            "sample_perplexity_percentiles": {
                str(q): float(np.percentile(finite, q))
                for q in (10, cfg.head_percentile, 50, cfg.middle_percentile, 90)
            },
            "percentiles": [cfg.head_percentile, cfg.middle_percentile],
            "seconds": round(time.time() - t0, 1),
        }
        models[lang] = LanguageModel(lm, cutoffs, report)
    model = CCNetModel(models, cfg.max_chars)
    model.save(cfg.output)
    return model


# ----------------------------------------------------------------------------------------------- step


@dataclass
class CCNetConfig:
    """``ccnet`` step: perplexity + bucket per document; keep the configured buckets."""

    model: str
    keep_buckets: list[str] = field(default_factory=lambda: list(BUCKETS))
    train: dict[str, Any] | None = None  # a CCNetTrainConfig mapping (output = model) run when `model` is missing
    unknown_language: str = "keep"  # a language the model has no LM for: "keep" (untagged) or "drop"

    def validate(self) -> None:
        bad = [b for b in self.keep_buckets if b not in BUCKETS]
        if bad:
            raise ConfigError("keep_buckets", f"unknown buckets {bad}; buckets are {list(BUCKETS)}")
        if self.unknown_language not in ("keep", "drop"):
            raise ConfigError("unknown_language", f"'keep' or 'drop', got {self.unknown_language!r}")


class CCNetBuckets(SkyFilter):
    """Sets ``ccnet_perplexity`` and ``ccnet_bucket``; drops documents outside ``keep_buckets``."""

    name = "📉 CCNet"
    default_reason = "ccnet"

    def __init__(self, cfg: CCNetConfig):
        super().__init__()
        self.cfg = cfg
        self._model: CCNetModel | None = None

    def setup(self) -> None:
        if self._model is None:
            self._model = CCNetModel.load(self.cfg.model)

    def __getstate__(self) -> dict[str, Any]:  # ship the path to workers, not the tables
        return {**self.__dict__, "_model": None}

    def filter(self, doc) -> bool | tuple[bool, str]:
        md = doc.metadata
        if md.get("kind") == "code":
            return True
        lang = md.get("language") or guess_language(doc.text)
        lm = self._model.languages.get(lang)
        if lm is None:
            self.count(f"no_model:{lang}")
            return True if self.cfg.unknown_language == "keep" else (False, f"ccnet_no_model:{lang}")
        ppl = perplexity(lm.lm, doc.text, self._model.max_chars)
        bucket = lm.bucket(ppl)
        md["ccnet_perplexity"] = round(ppl, 2) if math.isfinite(ppl) else None
        md["ccnet_bucket"] = bucket
        self.count(f"bucket:{bucket}")
        self.count(f"bucket:{bucket}:{lang}")
        if bucket not in self.cfg.keep_buckets:
            return False, f"ccnet_{bucket}"
        return True


def make_ccnet_step(cfg: CCNetConfig) -> CCNetBuckets:
    """The pipeline builder's factory: trains the model first when it is missing and ``train`` is given, and
    opens it once here so a bad file stops the run before any task starts."""
    if not os.path.isfile(cfg.model) and cfg.train is not None:
        from skyloom.config import build

        print(f"[skyloom] CCNet model {cfg.model} missing: training it from the step's `train:`", flush=True)
        train_ccnet(build(CCNetTrainConfig, {**cfg.train, "output": cfg.model}, prefix="train"))
    CCNetModel.load(cfg.model)
    return CCNetBuckets(cfg)
