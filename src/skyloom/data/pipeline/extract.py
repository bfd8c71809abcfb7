"""Structural extraction: HTML page → main text, title, URL and date.

Three backends, chosen by measurement (benchmarks/bench_extraction.py):

- ``skyloom`` (default): one lxml parse; the article container is found with readability-style scoring
  (paragraph text and commas flow up to parents, class/id names weigh candidates, link-dense blocks
  count little); navigation, comment sections, captions, share bars, related-links and similar boilerplate
  inside it are pruned by tag and by class/id words; text is written block by block. It aims at
  trafilatura's precision at close to resiliparse's speed.
- ``resiliparse``: ``extract_plain_text(main_content=True)`` with comments, post meta and alt texts off
  (fastest; keeps more boilerplate).
- ``trafilatura``: ``trafilatura.extract(favor_precision=True)`` (most careful; slowest).

Metadata comes from the page head (``og:``/``article:`` meta tags, JSON-LD, ``<time>``, canonical link),
which costs almost nothing once the tree is parsed.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from lxml import etree
from lxml.etree import tostring as _tostring

BACKENDS = ("skyloom", "resiliparse", "trafilatura")


class NotHTML(ValueError):
    """The input does not parse as an HTML page with a body (binary data, JSON, plain text …)."""


@dataclass
class Extracted:
    text: str
    title: str | None = None
    url: str | None = None
    date: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- helpers

# Elements whose whole subtree never holds main text.
_DROP_TAGS = {
    "script",
    "style",
    "noscript",
    "template",
    "svg",
    "math",
    "canvas",
    "iframe",
    "object",
    "embed",
    "video",
    "audio",
    "map",
    "button",
    "select",
    "input",
    "textarea",
    "label",
    "nav",
    "aside",
    "footer",
    "figure",
    "figcaption",
    "picture",
    "img",
    "head",
    "title",
    "meta",
    "link",
    "dialog",
}
_BLOCK_TAGS = {
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "pre",
    "blockquote",
    "table",
    "tr",
    "br",
    "hr",
    "address",
    "center",
    "form",
    "fieldset",
    "details",
    "summary",
    "caption",
    "tbody",
    "thead",
    "tfoot",
}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_PARAGRAPH_TAGS = ("p", "pre", "blockquote", "td")

# Words in class/id names (readability's lists, extended): negative ones mark boilerplate.
# Both are searched in " " + names + " ": a word starts after a separator, never at ^, so the search starts with
# a character set (a fast scan to the separators) instead of trying the alternation at every position.
_NEGATIVE = re.compile(
    r"[-_\s](?:comments?|commentlist|discuss\w*|disqus|respond|reply|replies|sidebar|side-bar|widget|related|"
    r"recirc\w*|recommend\w*|trending|popular|most-?read|more-?stories|read-?more|see-?also|also-?read|"
    r"share|sharing|sharebar|social|newsletter|subscribe|subscription|signup|sign-up|promo\w*|advert\w*|ads?|"
    r"ad-?slot|adwrap|sponsor\w*|outbrain|taboola|breadcrumbs?|pagination|pager|tags?|tag-?list|"
    r"caption|credits?|gallery|slideshow|carousel|modal|popup|pop-up|overlay|cookies?|consent|gdpr|banner|"
    r"masthead|byline|author-?(?:bio|info|box)|bio|footer|nav|navbar|navigation|menu|toolbar|print|rating|"
    r"votes?|skip|hidden|visually-?hidden|sr-only|screen-?reader|disclaimer|copyright|legal|timestamp|dateline|"
    r"meta|post-?meta|entry-?meta|jump|follow|donate|paywall)(?:$|[-_\s\d])"
)  # matched against lower-cased names: case-insensitive matching of this alternation is several times slower
_POSITIVE = re.compile(
    r"[-_\s](?:article|articlebody|article-?body|body|content|entry|entry-?content|hentry|main|page|post|"
    r"post-?body|post-?content|text|blog|story|story-?body|prose|rich-?text)(?:$|[-_\s\d])"
)
_SPLIT_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")

_BLANKS = "\t\r\f\v\u00a0\u200b"  # with the space: what counts as a blank between words
_SPACE_RUN = re.compile("  +")


def _squash(s: str) -> str:
    """Every run of blanks → one space. ``str.replace`` and a literal-prefix regex: on a whole article several
    times faster than one character-class regex (which tests every character, and non-Latin-1 ones slowly)."""
    for c in _BLANKS:
        if c in s:
            s = s.replace(c, " ")
    return _SPACE_RUN.sub(" ", s)


_WIDE_CHAR = re.compile("[\u3040-\uffff]")  # every CJK range below lies in it
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+")

# Whole lines that are page furniture even inside an article body.
_BOILER_LINE = re.compile(
    r"^(?:advertisement|advertisment|sponsored( content)?|related( articles| posts| stories)?|read more|"
    r"see also|share( this( article| story| post)?)?( on \w+)?|share via \w+|print|email|tweet|"
    r"click here( to \w+)?|loading\.*|comments?|\d+ comments?|leave a (reply|comment)|"
    r"(follow|like) us on \w+|subscribe( now| to our newsletter)?|sign up( for \w+)?|"
    r"(image|photo|picture)( credit)?:.*|\(image: [^)]*\)|getty images|back to top|"
    r"(this|our) (web)?site uses cookies.*|we use cookies.*|accept( all)? cookies|"
    r"all rights reserved.*|copyright ©.*|© \d{4}.*|don'?t miss|like this:?|like loading\.*|"
    r"(more|related|recommended|trending|popular|latest|top) (\w+ ){0,2}(stories|articles|posts|reads|videos)|"
    r"(posted|updated|published|last updated)( on)?:? [^.!?]*\d[^.!?]*|by [^.!?,]{2,40}(, [^.!?]{2,30})?|"
    r"更多|相关阅读|相关文章|相关新闻|责任编辑[:：].*|分享到[:：]?.*|点击查看.*|广告|返回顶部)$"  # matched against lower-cased lines
)


def _words_of(attr: str) -> str:
    return _SPLIT_CAMEL.sub("-", attr) if attr != attr.lower() else attr  # no capital: no camelCase to split


def _class_weight(el) -> int:
    names = el.get("class")
    ident = el.get("id")
    if ident:
        names = f"{names} {ident}" if names else ident
    return _names_weight(names) if names else 0


@functools.lru_cache(maxsize=4096)
def _names_weight(names: str) -> int:
    """Weight of a class/id string; cached, as a site repeats the same few names on many elements."""
    names = f" {_words_of(names).lower()} "
    weight = 0
    if _NEGATIVE.search(names):
        weight -= 25
    if _POSITIVE.search(names):
        weight += 25
    return weight


def _text_len(s: str) -> int:
    """Characters that carry text; a CJK character counts as much as ~2 Latin characters of a word."""
    if s.isascii() or not _WIDE_CHAR.search(s):  # O(1); a one-range scan is several times cheaper than the runs'
        return len(s)
    return len(s) + sum(map(len, _CJK_RUN.findall(s)))  # runs, not characters: one match per run


class _Measure:
    """Text and link-text lengths of elements, computed on demand and cached.

    Only paragraphs, their (grand)parents and the chosen container's blocks are ever asked about, so measuring
    them lazily with libxml2's text serialiser is cheaper than one Python-level pass over every element.
    The caches key on the element objects themselves, which keeps lxml's proxies (and so their identity) alive.
    """

    def __init__(self, body):
        self.text: dict[Any, int] = {}
        self.link: dict[Any, int] = {}

    def length(self, el) -> int:
        n = self.text.get(el)
        if n is None:
            n = self.text[el] = len(_tc(el))
        return n

    def links(self, el) -> int:
        """Text length inside the element's links (0 without links: cheap, no text is serialised)."""
        n = self.link.get(el)
        if n is None:
            n = 0
            text = self.text
            for a in el.iter("a"):
                k = text.get(a)
                if k is None:
                    k = text[a] = len(_tc(a))
                n += k
            self.link[el] = n
        return n

    def density(self, el) -> float:
        n = self.length(el)
        if not n:
            return 0.0
        return min(1.0, self.links(el) / n)


# --------------------------------------------------------------------------------------------- parsing


def decode_html(raw: bytes | str) -> str:
    """Page bytes → text: UTF-8 when the bytes are valid UTF-8 (a statistical detector once read a mostly-ASCII
    UTF-8 page as cp1252), else resiliparse's detected encoding."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")  # most pages; detecting the encoding costs more than parsing them
    except UnicodeDecodeError:
        pass
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    return bytes_to_str(raw, detect_encoding(raw))


_SNIFFED_TAGS = r"<\s*(?:!doctype\s+html|html|head|body|div|p|article|title|meta|span|table|br)"
_HTML_SNIFF = re.compile(_SNIFFED_TAGS + r"\b", re.I)
# on bytes: ASCII blanks only, and no letter, digit or UTF-8 byte after the tag, so a match here is one in the text
_HTML_SNIFF_BYTES = re.compile(_SNIFFED_TAGS.encode() + rb"(?![\w\x80-\xff])", re.I)
_SNIFF_CHARS = 65536
_NUL_CHARS = 4096


def parse_html(raw: bytes | str):
    """lxml tree of a page; NotHTML when the input has no HTML structure at all.

    The page goes to libxml2 as UTF-8 bytes with the encoding fixed (bytes checked by decoding them, a str
    encoded): handing lxml a str costs a fifth more, as it converts Python's internal UCS-2/UCS-4 text itself."""
    if isinstance(raw, bytes):
        root = _parse_utf8(raw)
        if root is not None:
            return root
    utf8 = None
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
            utf8 = raw
        except UnicodeDecodeError:
            text = decode_html(raw)
    else:
        text = raw
        try:
            utf8 = raw.encode("utf-8")  # cheaper than lxml's own conversion of a str
        except UnicodeEncodeError:  # lone surrogates: lxml gets the str
            pass
    if "\x00" in text[:_NUL_CHARS] or not _HTML_SNIFF.search(text[:_SNIFF_CHARS]):
        raise NotHTML("no HTML tags found")
    try:
        if utf8 is not None:
            root = etree.fromstring(utf8, _parser(utf8=True))
        else:
            # Encoding declarations inside a str confuse lxml; strip the XML prolog.
            text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)
            # plain etree elements (no lxml.html element classes): a third faster on big pages
            root = etree.fromstring(text, _parser())
    except (etree.ParserError, etree.XMLSyntaxError, ValueError) as err:
        raise NotHTML(f"unparseable HTML: {err}") from err
    if root is None or root.find("body") is None:
        raise NotHTML("no <body>")
    return root


_INVALID_ENCODING = etree.ErrorTypes.ERR_INVALID_ENCODING
_MAX_REPORTED_ERRORS = 100  # libxml2 stops reporting errors after this many (XML_MAX_ERRORS)


def _parse_utf8(raw: bytes):
    """The tree of a page whose bytes are plainly UTF-8 HTML, parsed without decoding them in Python first (the
    decode cost a sixth of the parse); None when unsure, for ``_parse``'s checks and decoding.

    libxml2 checks the UTF-8 as it parses and logs invalid bytes; past its error cap a log that might have lost
    that entry is settled by decoding. The sniff and NUL checks on bytes agree with those on the decoded text
    (a UTF-8 character is at least one byte) whenever they pass; otherwise the text decides."""
    if raw.find(b"\x00", 0, 4 * _NUL_CHARS) >= 0:
        return None
    sniff = _HTML_SNIFF_BYTES.search(raw, 0, _SNIFF_CHARS)
    if sniff is None or sniff.end() >= _SNIFF_CHARS:
        return None
    parser = _parser(utf8=True)
    try:
        root = etree.fromstring(raw, parser)
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return None
    if root is None or root.find("body") is None:
        return None
    log = parser.error_log
    if len(log) >= _MAX_REPORTED_ERRORS:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
    elif any(e.type == _INVALID_ENCODING for e in log):
        return None
    return root


_THREAD = threading.local()


def _parser(utf8: bool = False):
    """This thread's parser: ``_parse_utf8`` reads its error log after the parse, which another thread's parse
    with a shared parser would replace."""
    parsers = getattr(_THREAD, "parsers", None)
    if parsers is None:
        parsers = _THREAD.parsers = {}
    if utf8 not in parsers:
        parsers[utf8] = etree.HTMLParser(
            remove_comments=True,
            remove_pis=True,
            no_network=True,
            recover=True,
            default_doctype=False,
            collect_ids=False,  # no hash table of id attributes (nothing looks elements up by id): 5-7% of the parse
            encoding="utf-8" if utf8 else None,
        )
    return parsers[utf8]


def _tc(el) -> str:
    """text_content() for plain etree elements: libxml2's text serialiser, several times faster than itertext;
    a leaf's text is read directly (most links and many paragraphs are leaves; tostring's call costs more)."""
    if not len(el):
        return el.text or ""
    return _tostring(el, method="text", encoding="unicode", with_tail=False)


# --------------------------------------------------------------------------------------------- metadata

_DATE_KEYS = (
    "article:published_time",
    "og:published_time",
    "datepublished",
    "date",
    "dc.date",
    "dc.date.issued",
    "dcterms.date",
    "pubdate",
    "publishdate",
    "publish-date",
    "sailthru.date",
    "parsely-pub-date",
    "article.published",
    "published_time",
    "og:updated_time",
    "article:modified_time",
    "datemodified",
)
_TITLE_KEYS = ("og:title", "twitter:title", "dc.title", "headline")


def _clean(s: str | None) -> str | None:
    if not s:
        return None
    s = _squash(s).strip()
    return s or None


_LD_KEYS = ("datePublished", "dateCreated", "headline", "\\u")  # what JSON-LD is read for (or keys in \u escapes)


def extract_metadata(root, url: str | None = None) -> dict[str, str | None]:
    """Title, canonical URL and publication date from meta tags, JSON-LD and <time> elements."""
    metas: dict[str, str] = {}
    canonical = None
    for el in root.iter("meta", "link"):  # one walk for both
        if el.tag == "meta":
            val = el.get("content")
            if not val:
                continue
            key = (el.get("property") or el.get("name") or el.get("itemprop") or "").strip().lower()
            if key and key not in metas:
                metas[key] = val
        elif canonical is None and (el.get("rel") or "").lower() == "canonical":
            href = el.get("href", "")
            if href.startswith("http"):
                canonical = href.strip()
    title = next((_clean(metas[k]) for k in _TITLE_KEYS if metas.get(k)), None)
    date = next((_clean(metas[k]) for k in _DATE_KEYS if metas.get(k)), None)
    if date is None or title is None:
        for script in root.iter("script"):
            if (script.get("type") or "").lower() != "application/ld+json" or not script.text:
                continue
            if not any(k in script.text for k in _LD_KEYS):  # nothing to read in it
                continue
            try:
                data = json.loads(script.text)
            except ValueError:
                continue
            for obj in data if isinstance(data, list) else [data]:
                if isinstance(obj, dict) and "@graph" in obj and isinstance(obj["@graph"], list):
                    candidates = obj["@graph"]
                else:
                    candidates = [obj]
                for c in candidates:
                    if not isinstance(c, dict):
                        continue
                    date = date or _clean(str(c.get("datePublished") or c.get("dateCreated") or "") or None)
                    title = title or _clean(str(c.get("headline") or "") or None)
    if date is None:
        for t in root.iter("time"):
            date = _clean(t.get("datetime")) or _clean(_tc(t))
            if date:
                break
    if title is None:
        h1 = next(root.iter("h1"), None)
        t = root.find(".//title")
        title = _clean(_tc(h1) if h1 is not None else None) or _clean(_tc(t) if t is not None else None)
    page_url = url or canonical or _clean(metas.get("og:url"))
    return {"title": title, "date": date, "url": page_url}


# --------------------------------------------------------------------------------------------- main text


# Paragraph candidates in document order; a div counts only when it directly holds text (old <br>-separated
# pages), which the XPath engine checks in C instead of Python looking at every div's children. The axis is
# spelled descendant:: — ".//x" is descendant-or-self::node()/child::x, which libxml2 evaluates 2-3x slower.
_paragraph_candidates = etree.XPath(
    " | ".join(f"descendant::{t}" for t in _PARAGRAPH_TAGS) + " | descendant::div[text()[normalize-space()]]"
)


def _paragraphs(body, m: _Measure):
    """(element, worth) for every prose paragraph: long enough, not a list of links."""
    out = []
    for p in _paragraph_candidates(body):
        if p.tag == "div":
            text = ((p.text or "") + "".join([c.tail for c in p if c.tail])).strip()
            n = _text_len(text)
            ld = 0.0
        else:
            raw = _tc(p)
            m.text[p] = len(raw)
            text = raw.strip()
            n = _text_len(text)
            ld = m.density(p) if n >= 25 else 1.0  # the density (a walk over the links) only for long ones
        if n < 25 or ld > 0.5:
            continue
        commas = text.count(",") if text.isascii() else text.count(",") + text.count("，") + text.count("、")
        worth = (1 + commas + min(3, n // 100)) * (1 - ld)
        out.append((p, worth))
    return out


_TAG_BONUS = {"div": 5, "article": 10, "main": 5, "section": 3, "td": 3, "blockquote": 3, "pre": 3}


def _choose_container(body, m: _Measure):
    """Readability's top candidate, widened to the ancestor that holds the article's other parts.

    Paragraph worth flows to parent (full) and grandparent (half) for the readability score; it also flows
    to every ancestor as "mass". Paragraphs inside boilerplate-named regions (comments, sidebars …) that are
    not the bulk of the page count for no mass, so widening never swallows a comment section.
    """
    paragraphs = _paragraphs(body, m)
    if not paragraphs:
        return [body]
    # Keys are the elements themselves (a dict holding them keeps lxml's proxies, hence identities, alive).
    scores: dict[Any, float] = {}
    worth_by_parent: dict[Any, float] = {}
    for p, worth in paragraphs:
        parent = p.getparent()
        worth_by_parent[parent] = worth_by_parent.get(parent, 0.0) + worth
        levels = (parent,) if parent is body else (parent, parent.getparent())
        for level, anc in enumerate(levels):
            if anc is None:
                continue
            if anc not in scores:
                scores[anc] = float(_class_weight(anc)) + _TAG_BONUS.get(anc.tag, 0)
            scores[anc] += worth / (1 + level)
    # every distinct parent's ancestor chain up to body, walked once however many paragraphs it holds
    raw_mass: dict[Any, float] = {}
    chains = []
    for parent, worth in worth_by_parent.items():
        chain = []
        anc = parent
        while anc is not None:
            chain.append(anc)
            raw_mass[anc] = raw_mass.get(anc, 0.0) + worth
            if anc is body:
                break
            anc = anc.getparent()
        chains.append((chain, worth))
    total = raw_mass.get(body, 0.0) or 1.0
    boiler: dict[Any, bool] = {}
    mass: dict[Any, float] = {}
    for chain, worth in chains:
        # teaser cards (paragraphs inside list items) and boilerplate regions are not article mass
        if any(a.tag == "li" for a in chain[:4]):
            continue
        for a in chain:
            if a not in boiler:
                boiler[a] = _class_weight(a) < 0 and raw_mass.get(a, 0.0) < 0.5 * total
            if boiler[a]:
                break
        else:
            for a in chain:
                mass[a] = mass.get(a, 0.0) + worth

    # best score × (1 − link density); candidates by descending raw score, so the density (the costly part) is
    # measured only while a candidate could still win (a non-negative raw score never grows by the factor)
    top, best_score = None, float("-inf")
    for el, s in sorted(scores.items(), key=lambda kv: -kv[1]):
        if best_score >= 0 and s <= best_score:
            break
        s = s * (1 - m.density(el))
        if s > best_score:
            top, best_score = el, s
    # widen: climb while the parent holds clearly more clean article mass than the current node
    # (ancestors that add nothing are passed through; one that adds a little side content stops the climb)
    cur, anc = top, top.getparent()
    while anc is not None:
        m_cur, m_anc = mass.get(cur, 0.0), mass.get(anc, 0.0)
        if m_anc >= 1.35 * m_cur and m_anc > 0:
            if m.density(anc) > 0.35:
                break
            cur = anc
        elif m_anc > 1.05 * m_cur:
            break
        if anc is body:
            break
        anc = anc.getparent()
    if cur is not top:
        return [cur]
    parent = top.getparent()
    if parent is None:
        return [top]
    # readability's sibling step: prose paragraphs next to the top candidate (a lead paragraph kept apart from
    # the body, as a <p> or as a div that holds its text directly) belong to the article
    prose = {p for p, _ in paragraphs}
    chosen = []
    for sib in parent:
        if sib is top:
            chosen.append(sib)
        elif sib in prose and sib.tag in ("p", "div"):
            if m.length(sib) > 80 and m.density(sib) < 0.25:
                chosen.append(sib)
    return chosen


_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden")
# descendants that the attribute rules of _prune look at (compiled once: compiling costs more than evaluating)
_ATTRIBUTED = etree.XPath("descendant::*[@class or @id or @hidden or @aria-hidden or @style]")


def _prune(container, container_len: int, m: _Measure) -> None:
    """Remove boilerplate subtrees inside the chosen article container (never the container itself).

    Each rule asks lxml for its candidates (tag and attribute filters run in C), so Python only looks at
    elements that might go."""
    doomed = {}
    for el in container.iter(*_DROP_TAGS, "h1", "form"):
        if el is not container and (el.tag != "form" or len(el) < 40):
            doomed[el] = None
    for el in _ATTRIBUTED(container):
        if el in doomed:
            continue
        if el.get("hidden") is not None or el.get("aria-hidden") == "true":
            doomed[el] = None
            continue
        style = el.get("style")
        if style and _HIDDEN_STYLE.search(style):
            doomed[el] = None
        # a wrapper holding most of the article is never boilerplate, whatever its name
        elif _class_weight(el) < 0 and m.length(el) < 0.3 * container_len:
            doomed[el] = None
    for el in container.iter("ul", "ol", "table", "div"):
        if el is container or el in doomed or not m.links(el):  # no links: density 0 (most are; no text measured)
            continue
        n = m.length(el)
        if n and n < 0.3 * container_len and m.density(el) > 0.6:
            doomed[el] = None  # lists of links: menus, related stories, tag clouds
    for el in container.iter("p", "li", "h2", "h3", "h4", "h5", "h6"):
        # a short block that is nothing but a link is a teaser ("Related: …", "[VIDEO] …"), not prose
        if el is container or el in doomed or not m.links(el):
            continue
        if m.length(el) < 300 and m.density(el) > 0.8:
            doomed[el] = None
    for el in doomed:
        parent = el.getparent()
        if parent is None:
            continue
        # keep the tail text (it belongs to the parent), blanks too: they keep the neighbouring words apart
        if el.tail:
            prev = el.getprevious()
            if prev is not None:
                prev.tail = (prev.tail or "") + el.tail
            else:
                parent.text = (parent.text or "") + el.tail
        parent.remove(el)


# Block boundaries and <pre> lines are marked with two Unicode noncharacters, so that libxml2's text serialiser
# writes a whole container in one call; a container whose own text holds one is serialised by the walk instead.
_MARK = "\ufdd0"
_PRE_LINE = "\ufdd1"


class _MarksInText(Exception):
    """The container's own text holds a mark (the tree now holds marks too: the page is parsed again)."""


def _serialize(elements) -> str:
    """Block-aware text: a new line at each block element; inline text joined with spaces collapsed.

    Marks each block's start and end in the (already pruned, soon discarded) tree and serialises it with libxml2:
    several times cheaper than a Python walk over every node, with the walk's text (``_serialize_walk``).
    Raises _MarksInText when the text holds more marks than were put in."""
    lines: list[str] = []
    for el in elements:
        pre_lines = 0
        if el.tag in _DROP_TAGS:
            text, marks = el.tail or "", 0
        else:
            pres: list[Any] = []
            for pre in el.iter("pre"):  # the outermost ones: a nested <pre> is part of its parent's lines
                if not any(anc in pres for anc in pre.iterancestors("pre")):
                    pres.append(pre)
            for pre in pres:
                kept = [x.rstrip() for x in _tc(pre).split("\n") if x.strip()]
                del pre[:]
                pre.text = "".join([_MARK + _PRE_LINE + x for x in kept])
                pre_lines += len(kept)
            blocks = 0
            for block in el.iter(*_BLOCK_TAGS):
                block.text = _MARK + (block.text or "")
                block.tail = _MARK + (block.tail or "")
                blocks += 1
            text = _tostring(el, method="text", encoding="unicode", with_tail=True)
            marks = 2 * blocks + pre_lines
        if text.count(_MARK) != marks or (_PRE_LINE in text if not pre_lines else text.count(_PRE_LINE) != pre_lines):
            raise _MarksInText
        text = text.replace("\n", " ")
        if not pre_lines:  # blank runs never span a mark, so one substitution over the whole text does every line's
            lines += filter(None, [part.strip() for part in _squash(text).split(_MARK)])
            continue
        for part in text.split(_MARK):
            if part.startswith(_PRE_LINE):
                lines.append(part[1:])
            else:
                line = _squash(part).strip()
                if line:
                    lines.append(line)
    return "\n".join(lines)


def _serialize_walk(elements) -> str:
    """``_serialize`` as a walk over every node, for pages whose text holds the marks."""
    lines: list[str] = []
    buf: list[str] = []

    def flush():
        if buf:
            line = _squash("".join(buf)).strip()
            if line:
                lines.append(line)
            buf.clear()

    def walk(el):
        tag = el.tag if isinstance(el.tag, str) else ""
        if tag in _DROP_TAGS:
            if el.tail:
                buf.append(el.tail.replace("\n", " "))
            return
        block = tag in _BLOCK_TAGS
        if block:
            flush()
        if tag == "pre":
            flush()
            lines.extend(x.rstrip() for x in _tc(el).split("\n") if x.strip())
        else:
            if el.text:
                buf.append(el.text.replace("\n", " "))
            for child in el:
                walk(child)
        if block:
            flush()
        if el.tail:
            buf.append(el.tail.replace("\n", " "))

    for el in elements:
        walk(el)
        flush()
    return "\n".join(lines)


def _drop_boilerplate_lines(text: str, title: str | None) -> str:
    out = []
    title_norm = _squash(title).strip().lower() if title else None
    # lower-casing never shortens a string: a long line longer than the title is kept without lower-casing it
    longest_title = len(title_norm) if title_norm else -1
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            continue
        if len(s) >= 120 and len(s) > longest_title:
            out.append(s)
            continue
        low = s.lower()
        if len(s) < 120 and _BOILER_LINE.match(low):
            continue
        if title_norm and low == title_norm:
            continue
        out.append(s)
    return "\n".join(out)


def _main_text_skyloom(root, title: str | None, walk: bool = False) -> str:
    body = root.find("body")
    m = _Measure(body)
    chosen = _choose_container(body, m)
    total = sum(m.length(c) for c in chosen)
    for c in chosen:
        _prune(c, total, m)
    text = _drop_boilerplate_lines((_serialize_walk if walk else _serialize)(chosen), title)
    return text


def _skyloom_text(raw: bytes | str, root, title: str | None) -> str:
    etree.strip_elements(root, "script", "style", "noscript", "template", with_tail=False)
    try:
        return _main_text_skyloom(root, title)
    except _MarksInText:
        root = parse_html(raw)
        etree.strip_elements(root, "script", "style", "noscript", "template", with_tail=False)
        return _main_text_skyloom(root, title, walk=True)


def _resiliparse_text(raw: bytes | str) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse_from_bytes(raw) if isinstance(raw, bytes) else HTMLTree.parse(raw)
    return extract_plain_text(
        tree, main_content=True, comments=False, post_meta=False, alt_texts=False, list_bullets=False
    )


def _trafilatura_text(html: str) -> str:
    import trafilatura

    return trafilatura.extract(html, favor_precision=True, include_comments=False) or ""


def extract_html(
    raw: bytes | str, backend: str = "skyloom", url: str | None = None, min_chars_fallback: int = 200
) -> Extracted:
    """Main text and metadata of one page. Raises NotHTML for inputs that are not HTML pages."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown extraction backend {backend!r}; choose one of {BACKENDS}")
    root = parse_html(raw)
    meta = extract_metadata(root, url)
    if backend == "skyloom":
        text = _skyloom_text(raw, root, meta["title"])
        if len(text) < min_chars_fallback and _text_len(text) < min_chars_fallback:  # _text_len ≥ len
            # container choice failed (e.g. a page of short items): fall back to the whole-page extractor
            alt = _drop_boilerplate_lines(_resiliparse_text(raw), meta["title"])
            if _text_len(alt) > _text_len(text):
                text = alt
    elif backend == "resiliparse":
        text = _resiliparse_text(raw)
    else:
        text = _trafilatura_text(decode_html(raw))
    return Extracted(text=text.strip(), title=meta["title"], url=meta["url"], date=meta["date"])


# --------------------------------------------------------------------------------------------- pipeline step

from skyloom.data.pipeline.base import SkyFilter  # noqa: E402


@dataclass
class ExtractConfig:
    """``extract`` step: HTML documents (from ``html``/``warc`` inputs, or ``content_type: html``) → main text."""

    backend: str = "skyloom"
    min_chars: int = 1  # a page whose main text is shorter is dropped as ``no_main_text``
    include_title: bool = False  # prepend the title to the text (it is always kept in metadata)
    fallback_chars: int = 200  # skyloom backend: below this, fall back to whole-page extraction

    def validate(self) -> None:
        from skyloom.config import ConfigError

        if self.backend not in BACKENDS:
            raise ConfigError("backend", f"must be one of {list(BACKENDS)}, got {self.backend!r}")


class HtmlExtractor(SkyFilter):
    """Replaces an HTML document's text with its main text; title/url/date go to metadata.

    Documents that are not HTML pages (``content_type`` unset, from text inputs) pass untouched. A page that
    is not HTML at all is dropped as ``malformed:not_html`` (and listed with its file and line)."""

    name = "🛢 Extract"
    default_reason = "no_main_text"

    def __init__(self, cfg: ExtractConfig):
        super().__init__()
        self.cfg = cfg

    def filter(self, doc) -> bool | tuple[bool, str]:
        md = doc.metadata
        if md.get("content_type") != "html":
            return True
        try:
            ex = extract_html(
                doc.text, backend=self.cfg.backend, url=md.get("url"), min_chars_fallback=self.cfg.fallback_chars
            )
        except NotHTML as err:
            self.stat_update("not_html")
            md["malformed_detail"] = str(err)
            return False, "malformed:not_html"
        md.pop("content_type", None)
        for key in ("title", "url", "date"):
            val = getattr(ex, key)
            if val and not md.get(key):
                md[key] = val
        text = ex.text
        if self.cfg.include_title and ex.title and not text.startswith(ex.title):
            text = f"{ex.title}\n\n{text}"
        doc.text = text
        if len(text.strip()) < self.cfg.min_chars:
            return False, "no_main_text"
        return True
