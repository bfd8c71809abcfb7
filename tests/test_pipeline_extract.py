"""Structural extraction on real pages with hand-checked main text."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from datatrove.data import Document

from skyloom.data.pipeline.extract import ExtractConfig, HtmlExtractor, NotHTML, extract_html
from tests.test_pipeline_support import extraction_pages


def _prf(pred: str, gold: str) -> tuple[float, float, float]:
    p, g = Counter(re.findall(r"\w+", pred.lower())), Counter(re.findall(r"\w+", gold.lower()))
    tp = sum((p & g).values())
    prec, rec = tp / max(1, sum(p.values())), tp / max(1, sum(g.values()))
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


@pytest.fixture(scope="module")
def pages(shared_data):
    return extraction_pages(shared_data, 12)


def test_main_text_matches_gold(pages):
    """Bag-of-words P/R/F1 against the gold article bodies (macro over the first 12 pages by name: random sites)."""
    scores = [_prf(extract_html(raw).text, gold) for _, raw, gold in pages]
    precision = sum(s[0] for s in scores) / len(scores)
    recall = sum(s[1] for s in scores) / len(scores)
    f1 = sum(s[2] for s in scores) / len(scores)
    assert precision > 0.9 and recall > 0.9 and f1 > 0.9, (precision, recall, f1)


def test_skyloom_backend_is_more_precise_than_plain_resiliparse(pages):
    ours = [_prf(extract_html(raw).text, gold)[0] for _, raw, gold in pages]
    plain = [_prf(extract_html(raw, backend="resiliparse").text, gold)[0] for _, raw, gold in pages]
    assert sum(ours) > sum(plain)


def test_navigation_and_boilerplate_are_dropped():
    html = """<html><head><title>Site | Lobster facts</title>
    <meta property="og:title" content="Lobster facts"><meta property="article:published_time" content="2019-11-18">
    <link rel="canonical" href="https://example.org/lobster"></head><body>
    <nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li><li><a href="/about">About us</a></li></ul></nav>
    <div class="sidebar"><p>Contact us: call 555-0100 or write to info@example.org for advertising, please.</p></div>
    <article><h1>Lobster facts</h1>
      <p>Homarus gammarus, known as the European lobster, is a species of clawed lobster from the eastern Atlantic.</p>
      <p>It may grow to a length of 60 cm, and bears a conspicuous pair of claws, which are blue in life.</p>
      <div class="share-buttons"><a href="#">Share on Facebook</a> <a href="#">Tweet</a></div>
      <p>Mating occurs in the summer, producing eggs which are carried by the females for up to a year.</p>
    </article>
    <footer><p>Copyright 2019 Example Media, all rights reserved. Terms of use and privacy policy apply.</p></footer>
    </body></html>"""
    ex = extract_html(html)
    assert "European lobster" in ex.text and "Mating occurs" in ex.text and "60 cm" in ex.text
    for junk in ("Home", "About us", "Contact us", "Share on Facebook", "Copyright", "Terms of use"):
        assert junk not in ex.text
    assert ex.title == "Lobster facts"
    assert ex.url == "https://example.org/lobster"
    assert ex.date == "2019-11-18"
    assert "Lobster facts" not in ex.text  # the title lives in metadata, not as a dangling line


@pytest.mark.parametrize(
    "raw",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(200)),
        '{"text": "a JSON record, not a page"}',
        "just a plain sentence without markup",
    ],
)
def test_not_html_is_reported(raw):
    with pytest.raises(NotHTML):
        extract_html(raw)
    step = HtmlExtractor(ExtractConfig())
    doc = Document(
        text=raw.decode("latin-1") if isinstance(raw, bytes) else raw,
        id="x",
        metadata={"content_type": "html", "file": "f.html", "line": 1},
    )
    assert list(step.run([doc])) == []
    assert doc.metadata["filter_reason"] == "malformed:not_html"


def test_extractor_keeps_metadata_and_passes_plain_text(pages):
    sha, raw, _ = pages[0]
    html_doc = Document(text=raw.decode("utf-8", "replace"), id=sha, metadata={"content_type": "html"})
    text_doc = Document(text="already plain text, not a page", id="t", metadata={})
    out = list(HtmlExtractor(ExtractConfig()).run([html_doc, text_doc]))
    assert [d.id for d in out] == [sha, "t"]
    assert out[0].metadata.get("title") and "content_type" not in out[0].metadata
    assert "<" not in out[0].text[:200]
    assert out[1].text == "already plain text, not a page"


def _warc_record(uri: str, date: str, content_type: str, body: bytes) -> bytes:
    http = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Record-ID: <urn:uuid:{abs(hash(uri)):032x}>\r\n"
        f"WARC-Target-URI: {uri}\r\nWARC-Date: {date}\r\nContent-Type: application/http; msgtype=response\r\n"
        f"Content-Length: {len(http)}\r\n\r\n"
    ).encode()
    return head + http + b"\r\n\r\n"


def test_warc_responses_are_read_and_extracted(pages, tmp_path):
    """WARC input: HTML responses become documents with the WARC URL and date; other content types are
    skipped; a truncated archive keeps what was read and is reported, not raised."""
    import json
    from pathlib import Path

    from skyloom.config import build
    from skyloom.data.pipeline.readers import InputConfig, SourceReader

    (_sha1, raw1, gold1), (_sha2, raw2, _) = pages[0], pages[1]
    data = (
        _warc_record("https://news.example/a", "2021-03-04T05:06:07Z", "text/html; charset=utf-8", raw1)
        + _warc_record("https://news.example/logo.png", "2021-03-04T05:06:08Z", "image/png", b"\x89PNG" + bytes(64))
        + _warc_record("https://news.example/b", "2021-03-04T05:06:09Z", "text/html", raw2)
    )
    (tmp_path / "crawl.warc").write_bytes(data)
    (tmp_path / "cut.warc").write_bytes(data[: len(data) - 500])  # the last record is cut short
    reader = SourceReader(
        build(InputConfig, {"path": str(tmp_path), "format": "warc", "source": "cc"}),
        str(tmp_path / "funnel"),
        str(tmp_path / "malformed"),
    )
    docs = list(reader.run(None, 0, 1))
    urls = [d.metadata["url"] for d in docs]
    assert sorted(urls) == ["https://news.example/a"] * 2 + ["https://news.example/b"]  # b only from crawl.warc
    (bad,) = json.loads(next((tmp_path / "malformed").glob("*.json")).read_text())
    assert (Path(bad["file"]).name, bad["line"], bad["reason"]) == ("cut.warc", 3, "truncated_record")
    assert not any(u.endswith(".png") for u in urls)
    full = [d for d in docs if d.metadata["file"].endswith("crawl.warc")]
    assert [d.metadata["date"] for d in full] == ["2021-03-04T05:06:07Z", "2021-03-04T05:06:09Z"]
    out = list(HtmlExtractor(ExtractConfig()).run(full))
    assert len(out) == 2 and out[0].metadata["url"] == "https://news.example/a" and out[0].metadata.get("title")
    assert _prf(out[0].text, gold1)[2] > 0.8


_PROSE = (
    "<p>The council approved the new budget on Monday, after a debate that lasted well into the night, "
    "and the mayor said the vote was a turning point for the city.</p>"
    "<p>Spending on schools rises by four percent, while road repairs, parks and libraries keep last year's "
    "money, according to the finance office, which published the figures.</p>"
    "<p>Opposition members said the plan relies on optimistic tax forecasts, and they asked for a review in "
    "the spring, when the first quarterly numbers are known.</p>"
)


def test_link_only_teasers_and_byline_lines_inside_the_article_are_dropped():
    """Teasers inside the article body (a paragraph or list item that is just a link) and byline / date-stamp /
    'Like this:' lines are page furniture; prose paragraphs that contain links stay."""
    html = f"""<html><body><div class="content">
    <p>By Jane Roe, City Desk</p><p>Updated: 18 Nov 2019 9:38 pm</p>
    {_PROSE}
    <p><a href="/x">Mayor faces fresh questions over stadium deal [VIDEO]</a></p>
    <ul><li><a href="/y">Budget 2020: what changes for your council tax bill</a></li></ul>
    <p>The <a href="/budget">full budget</a> is available at the town hall, and residents may comment until the
    end of the month.</p>
    <p>Like this:</p><p>Like Loading...</p><p>Don't miss</p>
    </div></body></html>"""
    text = extract_html(html).text
    assert "turning point" in text and "optimistic tax forecasts" in text and "full budget is available" in text
    for junk in ("stadium deal", "council tax bill", "Jane Roe", "9:38", "Like", "Don't miss"):
        assert junk not in text, junk


def test_utf8_bytes_win_over_a_wrong_encoding_guess(monkeypatch):
    """Bytes that decode as UTF-8 are UTF-8, whatever the statistical detector guesses (it once read a
    1 MB, mostly-ASCII page as cp1252 and wrote 'â€”' for every dash)."""
    import resiliparse.parse.encoding as enc

    monkeypatch.setattr(enc, "detect_encoding", lambda raw, *a, **k: "cp1252")
    html = f"<html><body><div>{_PROSE}<p>Dubai — the carrier’s order, worth $15bn, was signed.</p></div></body></html>"
    text = extract_html(html.encode("utf-8")).text
    assert "Dubai — the carrier’s order" in text and "â€" not in text


def test_non_utf8_chinese_page_is_decoded():
    body = "<p>这是一篇关于城市预算的新闻报道，市议会在周一批准了新的预算，学校经费增加百分之四。</p>" * 4
    html = f'<html><head><meta charset="gbk"></head><body><div>{body}</div></body></html>'
    assert "市议会在周一批准了新的预算" in extract_html(html.encode("gbk")).text


def test_chinese_pages_keep_their_main_text():
    """Real Chinese pages in the repository (benchmarks/data/extraction_zh, hand-marked): F1 over characters."""
    import gzip
    import json
    from pathlib import Path

    data = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "extraction_zh"
    truth = json.loads((data / "ground-truth.json").read_text(encoding="utf-8"))
    tokens = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
    f1s = []
    for name in ("debian-faq-kernel", "lilypond-bug-reports", "libreoffice-collab"):
        raw = gzip.decompress((data / "html" / f"{name}.html.gz").read_bytes())
        p = Counter(tokens.findall(extract_html(raw).text.lower()))
        g = Counter(tokens.findall(truth[name]["articleBody"].lower()))
        tp = sum((p & g).values())
        f1s.append(2 * tp / (sum(p.values()) + sum(g.values())))
    assert min(f1s) > 0.95, f1s


def test_lead_paragraph_beside_the_article_body_is_kept():
    """A lead paragraph kept apart from the body container (a div holding its text directly, as some news sites
    write it) is a prose sibling of the chosen container and belongs to the article."""
    body = "".join(f"<p>{s}</p>" for s in re.findall(r"<p>(.*?)</p>", _PROSE) * 2)
    html = f"""<html><body><div class="outer"><div class="wrap">
    <div class="lede"><cite>(Wire)</cite> Lead: the city council met late on Monday, and it passed the budget for
    next year, with most members voting in favour after a long debate.</div>
    <div class="rest">{body}</div></div>
    <div class="box"><p>Sponsored: a partner's offer of the week, with fine print and terms applying.</p></div>
    </div></body></html>"""
    text = extract_html(html).text
    assert text.startswith("(Wire) Lead: the city council") and "optimistic tax forecasts" in text
    assert "Sponsored" not in text


@pytest.mark.parametrize("tail", ["", "\udcff"])
def test_str_pages_keep_their_characters_whatever_they_declare(tail):
    """A str page goes to libxml2 as UTF-8 whatever its meta charset or XML prolog says; one that cannot be
    encoded (a lone surrogate from a lossy decode) is parsed as a str."""
    body = "<p>Café society met, and the señor spoke of crème brûlée, served late, with coffee and cake.</p>" * 4
    html = (
        '<?xml version="1.0" encoding="iso-8859-1"?><html><head><meta charset="iso-8859-1"></head>'
        f"<body><div>{body}{tail}</div></body></html>"
    )
    assert extract_html(html).text.startswith("Café society met, and the señor spoke of crème brûlée")
