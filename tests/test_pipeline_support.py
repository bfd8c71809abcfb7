"""Helpers shared by the pipeline tests (no tests here): small real inputs from ../shared/data."""

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
    """(sha, raw html bytes, gold text) for n pages, every 7th page starting at offset (a spread of sites)."""
    gt = json.loads((shared / "extraction" / "ground-truth.json").read_text(encoding="utf-8"))
    files = sorted((shared / "extraction" / "html").glob("*.html.gz"))[offset::7][:n]
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
    """A small but real quality model (a few seconds): WikiText + CMRC vs web pages + FewCLUE text."""
    from skyloom.config import build
    from skyloom.data.pipeline.quality import QualityTrainConfig, train_quality

    cfg = build(QualityTrainConfig, {
        "output": str(out), "bits": 18, "max_docs_per_input": 400, "epochs": 5, "chunk_chars": 1200,
        "positives": [
            {"path": str(shared / "wikitext2" / "test.txt"), "format": "text", "doc_separator": "^ = [^=].* = $",
             "preprocess": "wikitext", "source": "wikitext"},
            {"path": str(shared / "cmrc2018" / "cmrc2018_trial.json"), "format": "json",
             "text_key": "context_text", "source": "cmrc"},
        ],
        "negatives": [
            {"path": str(shared / "extraction" / "html"), "glob": "[0-7]*.html.gz", "format": "html",
             "source": "web"},
            {"path": str(shared / "fewclue_zh" / "chid" / "unlabeled.json"), "format": "jsonl",
             "text_key": "content", "source": "chid"},
            {"path": str(shared / "fewclue_zh" / "eprstmt" / "unlabeled.json"), "format": "jsonl",
             "text_key": "sentence", "source": "eprstmt"},
        ],
    })
    return train_quality(cfg, progress=False)
