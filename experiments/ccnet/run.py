"""CCNet-style perplexity buckets on the shared data: do they order known-good text above known-bad text?

The `ccnet` pipeline step's model (skyloom/data/pipeline/ccnet.py: a modified Kneser-Ney n-gram LM per language,
30/60 perplexity percentiles) is trained here exactly as a user would, through `train_ccnet` with pipeline inputs:

- reference text (the LM): WikiText-2 valid+test articles (en), CMRC 2018 dev+trial passages (zh — Chinese
  Wikipedia), 80 % of the documents; the other 20 % are held out as known-good text;
- cut-off sample (the percentiles): a web-like sample neither class comes from — the extraction benchmark's pages,
  all visible text (en); FewCLUE ChID passages, CSL abstracts and EPRSTMT reviews (zh).

Classes scored (documents; perplexity of each, then AUC of good vs bad with score = -perplexity):
  good: held-out Wikipedia (en, zh); the extraction benchmark's hand-checked main text (en, real web articles);
        the six Skywork-13B Table-6 domain sets (zh: tech, movie, government, game, finance, general).
  bad:  boilerplate — each extraction page's visible lines that are not in its main text (en; navigation,
        footers, link lists); shuffled — the held-out Wikipedia documents with the words of every line shuffled
        (en: whitespace words, zh: jieba words); spam — generated keyword stuffing (a line of 12 words drawn from
        a 20-word spam vocabulary, repeated 6 times).

Usage: .venv/bin/python experiments/ccnet/run.py [--order 5] [--results experiments/ccnet/results/results.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SKYLOOM_SHARED_DATA") or REPO.parent / "shared" / "data")
DOMAINS = ("tech", "movie", "government", "game", "finance", "general")
SPAM_EN = (
    "free cheap best price buy now click here discount offer win casino bonus deal online shop sale viagra "
    "loan credit fast"
).split()
SPAM_ZH = "免费 优惠 点击 下载 注册 领取 红包 特价 包邮 秒杀 彩票 中奖 贷款 代理 加盟 招商 正品 低价 返利 官网".split()


def spam(rng: random.Random, zh: bool) -> str:
    vocab = SPAM_ZH if zh else SPAM_EN
    line = ("" if zh else " ").join(rng.choice(vocab) for _ in range(12))
    return "\n".join([line] * 6)


def shuffle_words(text: str, rng: random.Random, zh: bool) -> str:
    from skyloom.data.pipeline.text import words

    out = []
    for line in text.split("\n"):
        toks = words(line, "zh") if zh else line.split()
        rng.shuffle(toks)
        out.append(("" if zh else " ").join(toks))
    return "\n".join(out)


def read_inputs(spec: dict, limit: int = 100_000) -> list[str]:
    from skyloom.data.pipeline.quality import _read_texts

    return [t for _, t in _read_texts([spec], limit, "experiment")]


def extraction_pages() -> list[tuple[str, str]]:
    """(main text, boilerplate) per extraction page: boilerplate = visible lines not inside the main text."""
    import lxml.html

    from skyloom.data.pipeline.text import normalize

    truth = json.loads((SHARED / "extraction" / "ground-truth.json").read_text(encoding="utf-8"))
    out = []
    for key, item in sorted(truth.items()):
        path = SHARED / "extraction" / "html" / f"{key}.html.gz"
        if not path.is_file():
            continue
        root = lxml.html.fromstring(gzip.decompress(path.read_bytes()))
        for bad in root.xpath("//script|//style|//noscript|//template"):
            bad.drop_tree()
        main = item.get("articleBody") or ""
        body = normalize(main)
        lines = [ln.strip() for ln in root.text_content().split("\n")]
        boiler = [ln for ln in lines if ln and normalize(ln) not in body]
        out.append((main, "\n".join(boiler)))
    return out


def auc(good: list[float], bad: list[float]) -> float:
    """P(a good document has lower perplexity than a bad one), ties half."""
    g, b = np.asarray(good), np.asarray(bad)
    scores = np.concatenate([-g, -b])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for v in np.unique(scores):  # average ranks of ties
        m = scores == v
        ranks[m] = ranks[m].mean()
    return float((ranks[: len(g)].sum() - len(g) * (len(g) + 1) / 2) / (len(g) * len(b)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--order", type=int, default=5, help="n-gram order (CCNet: 5)")
    parser.add_argument("--heldout", type=float, default=0.2, help="share of reference documents held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(REPO / "experiments" / "ccnet" / "results" / "results.json"))
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    os.chdir(REPO)
    from skyloom.config import build
    from skyloom.data.pipeline.ccnet import CCNetTrainConfig, train_ccnet

    t0 = time.time()
    rng = random.Random(args.seed)
    wiki = {
        "en": [
            t
            for f in ("valid.txt", "test.txt")
            for t in read_inputs(
                {
                    "path": str(SHARED / "wikitext2" / f),
                    "format": "text",
                    "doc_separator": "^ = [^=].* = $",
                    "preprocess": "wikitext",
                }
            )
        ],
        "zh": sorted(
            {
                t
                for f in ("cmrc2018_dev.json", "cmrc2018_trial.json")
                for t in read_inputs(
                    {"path": str(SHARED / "cmrc2018" / f), "format": "json", "text_key": "context_text"}
                )
            }
        ),
    }
    pages = extraction_pages()
    sample = {
        "en": [m + "\n" + b for m, b in pages],
        "zh": [
            t
            for f, key in (
                ("chid/unlabeled.json", "content"),
                ("csl/test_public.json", "abst"),
                ("eprstmt/unlabeled.json", "sentence"),
            )
            for t in read_inputs({"path": str(SHARED / "fewclue_zh" / f), "format": "jsonl", "text_key": key}, 1000)
        ],
    }
    classes: dict[str, dict[str, list[str]]] = {"en": {}, "zh": {}}
    split = {}
    for lang, docs in wiki.items():
        docs = list(docs)
        rng.shuffle(docs)
        n_held = int(len(docs) * args.heldout)
        split[lang] = (docs[n_held:], docs[:n_held])
        classes[lang]["good:wikipedia_heldout"] = docs[:n_held]
        classes[lang]["bad:shuffled"] = [shuffle_words(t, rng, lang == "zh") for t in docs[:n_held]]
        classes[lang]["bad:spam"] = [spam(rng, lang == "zh") for _ in range(100)]
    classes["en"]["good:web_main_text"] = [m for m, _ in pages if m.strip()]
    classes["en"]["bad:boilerplate"] = [b for _, b in pages if b.strip()]
    for d in DOMAINS:
        classes["zh"][f"good:skywork_{d}"] = read_inputs(
            {"path": str(SHARED / "skywork" / f"zh_{d}.jsonl"), "format": "jsonl", "text_key": "text"}
        )

    with tempfile.TemporaryDirectory() as tmp:

        def jsonl(name: str, texts: list[str]) -> dict:
            path = Path(tmp) / f"{name}.jsonl"
            path.write_text(
                "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
            )
            return {"path": str(path), "format": "jsonl"}

        languages = {
            lang: {
                "reference": [jsonl(f"{lang}_ref", split[lang][0])],
                "sample": [jsonl(f"{lang}_sample", sample[lang])],
            }
            for lang in ("en", "zh")
        }
        cfg = build(
            CCNetTrainConfig,
            {"output": str(Path(tmp) / "ccnet.safetensors"), "languages": languages, "order": args.order},
        )
        t_train = time.time()
        model = train_ccnet(cfg)
        train_seconds = time.time() - t_train
        size_mb = os.path.getsize(cfg.output) / 1e6

    results: dict = {
        "settings": {
            "order": args.order,
            "heldout": args.heldout,
            "seed": args.seed,
            "percentiles": [cfg.head_percentile, cfg.middle_percentile],
            "tokens": "skyloom text units (words for Latin script, characters for CJK), lower case, digits → 0",
            "reference": {"en": "WikiText-2 valid+test articles", "zh": "CMRC 2018 dev+trial passages"},
            "cutoff_sample": {
                "en": "extraction benchmark pages, all visible text",
                "zh": "FewCLUE ChID passages, CSL abstracts, EPRSTMT reviews (1,000 each)",
            },
            "command": " ".join(["python experiments/ccnet/run.py", *sys.argv[1:]]),
        },
        "model": {"train_seconds": round(train_seconds, 1), "file_mb": round(size_mb, 1), "languages": {}},
        "languages": {},
    }
    for lang in ("en", "zh"):
        lm = model.languages[lang]
        results["model"]["languages"][lang] = {**lm.report, "cutoffs": [round(c, 2) for c in lm.cutoffs]}
        per_class = {}
        ppl = {}
        for name, docs in classes[lang].items():
            vals = [model.perplexity(t, lang) for t in docs]
            vals = [v for v in vals if math.isfinite(v)]
            ppl[name] = vals
            buckets = [lm.bucket(v) for v in vals]
            per_class[name] = {
                "docs": len(vals),
                "median_perplexity": round(float(np.median(vals)), 1),
                **{f"share_{b}": round(buckets.count(b) / len(vals), 3) for b in ("head", "middle", "tail")},
            }
        good = [v for k, vs in ppl.items() if k.startswith("good:") for v in vs]
        bad = [v for k, vs in ppl.items() if k.startswith("bad:") for v in vs]
        aucs = {"all_good_vs_all_bad": round(auc(good, bad), 3)}
        for k, vs in ppl.items():
            if k.startswith("bad:"):
                aucs[f"all_good_vs_{k[4:]}"] = round(auc(good, vs), 3)
            else:
                aucs[f"{k[5:]}_vs_all_bad"] = round(auc(vs, bad), 3)
        pairs = {
            f"{g[5:]}_vs_{b[4:]}": round(auc(ppl[g], ppl[b]), 3)
            for g in ppl
            if g.startswith("good:")
            for b in ppl
            if b.startswith("bad:")
        }
        # each held-out Wikipedia document against its own shuffled copy (same words, order destroyed)
        held = [model.perplexity(t, lang) for t in classes[lang]["good:wikipedia_heldout"]]
        shuf = [model.perplexity(t, lang) for t in classes[lang]["bad:shuffled"]]
        paired = float(np.mean([s > h for h, s in zip(held, shuf)]))
        results["languages"][lang] = {
            "classes": per_class,
            "auc": aucs,
            "auc_pairs": pairs,
            "shuffled_copy_higher_perplexity": round(paired, 3),
        }
    results["seconds"] = round(time.time() - t0, 1)
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for lang, r in results["languages"].items():
        print(f"{lang}: AUC {r['auc']}\n  pairs {r['auc_pairs']}\n  paired {r['shuffled_copy_higher_perplexity']}")
        for name, c in r["classes"].items():
            print(f"  {name:28s} {c}")
    print(f"wrote {out} in {results['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
