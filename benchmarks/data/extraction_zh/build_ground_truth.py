"""Rebuild ground-truth.json from the stored pages and the hand-made marks in marks.json.

    .venv/bin/python benchmarks/data/extraction_zh/build_ground_truth.py

Each page's main text was marked by reading the page: ``keep`` names the element that holds the article, ``drop``
the parts inside it that are not article text (the page title, tables of contents, language bars, related-links
boxes, text hidden from readers). This script only applies those marks, so the ground truth can be audited and
regenerated; it never looks at any extractor's output.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from lxml import etree

HERE = Path(__file__).resolve().parent
_BLOCKS = {
    "p", "div", "pre", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "ul", "ol", "dl",
    "blockquote", "br", "hr", "section", "td", "th",
}  # fmt: skip


def _text(el) -> str:
    """Visible text with a line break around each block element (so words of adjacent blocks never merge)."""
    out: list[str] = []

    def walk(node) -> None:
        block = node.tag in _BLOCKS
        if block:
            out.append("\n")
        if node.text:
            out.append(node.text)
        for child in node:
            walk(child)
        if block:
            out.append("\n")
        if node.tail:
            out.append(node.tail)

    walk(el)
    lines = (" ".join(line.split()) for line in "".join(out).split("\n"))
    return "\n".join(line for line in lines if line)


def main() -> None:
    marks = json.loads((HERE / "marks.json").read_text(encoding="utf-8"))
    parser = etree.HTMLParser(remove_comments=True, no_network=True)
    truth = {}
    for name, mark in marks["pages"].items():
        raw = gzip.decompress((HERE / "html" / f"{name}.html.gz").read_bytes())
        root = etree.fromstring(raw, parser)
        etree.strip_elements(root, "script", "style", "noscript", with_tail=False)
        (keep,) = root.xpath(mark["keep"])
        for path in marks["families"][mark["family"]]["drop"] + mark.get("drop", []):
            for el in keep.xpath(path):
                tail, parent = el.tail, el.getparent()
                prev = el.getprevious()
                if tail and prev is not None:
                    prev.tail = (prev.tail or "") + tail
                elif tail:
                    parent.text = (parent.text or "") + tail
                parent.remove(el)
        truth[name] = {"source": mark["source"], "articleBody": _text(keep)}
    (HERE / "ground-truth.json").write_text(json.dumps(truth, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{len(truth)} pages → {HERE / 'ground-truth.json'}")


if __name__ == "__main__":
    main()
