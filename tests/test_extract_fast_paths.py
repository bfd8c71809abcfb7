"""The extractor's fast paths give exactly the text of the plain ones (tiny synthetic pages, no shared data)."""

from __future__ import annotations

import pytest

from skyloom.data.pipeline import extract as ex

_ARTICLE = (
    "<html><head><title>T</title></head><body><nav><a href='/'>Home</a></nav>"
    "<div id='story'><h2>A  heading\twith\u00a0blanks</h2>"
    "<p>First paragraph, with <b>bold</b> and <a href='/x'>a link</a>, long enough to count as prose here.</p>"
    "lead text after a block<br>after a break\u200b<hr>"
    "<div><p>Nested\n   paragraph, one more, and another one for the scoring to see it.</p> tail of p</div>"
    "<pre>  code line 1\n\n\tindented   line  \n<span>inline <pre>nested pre</pre> span</span>\n</pre> after pre"
    "<ul><li>one, two</li><li>three</li></ul><blockquote>Quoted, said someone, at length.</blockquote>"
    "<table><tr><td>cell a</td><td>cell b</td></tr></table></div> tail of the story"
    "<footer>Footer</footer></body></html>"
)


@pytest.mark.parametrize("marks", ["", "\ufdd0", "\ufdd1", "\ufdd0\ufdd1"])
def test_serializer_writes_the_walks_text(marks):
    """Marks + libxml2's serialiser == the node-by-node walk; marks already in the text fall back to the walk."""
    page = _ARTICLE.replace("cell a", f"cell{marks} a")
    body = ex.parse_html(page).find("body")
    expected = ex._serialize_walk(list(body))
    try:
        fast = ex._serialize(list(ex.parse_html(page).find("body")))
    except ex._MarksInText:
        assert marks, "the marks check fired on a page without marks"
        return
    assert not marks, "a page whose text holds a mark was not sent to the walk"
    assert fast == expected
    assert "  code line 1\n\tindented   line\ninline nested pre span" in fast


def test_page_holding_the_marks_keeps_them():
    page = _ARTICLE.replace("First paragraph", "First \ufdd0 paragraph \ufdd1")
    text = ex.extract_html(page.encode(), min_chars_fallback=0).text
    assert "First \ufdd0 paragraph \ufdd1" in text
    assert "Nested paragraph, one more" in text


def test_invalid_utf8_is_decoded_even_past_libxml2s_error_cap():
    """libxml2 stops logging errors after 100, so the invalid-byte entry the UTF-8 fast path relies on can be lost."""
    raw = ("<html><body>" + "</x>" * 150 + "<p>Un café, s'il vous plaît, et l'addition.</p></body></html>").encode(
        "cp1252"
    )
    text = ex.extract_html(raw, min_chars_fallback=0).text
    assert "\ufffd" not in text
    assert text == ex.extract_html(ex.decode_html(raw), min_chars_fallback=0).text


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x01binary" + b"<html><body><p>x</p></body></html>",
        "\ufeff<html><body><p>UTF-16 page, with a byte order mark.</p></body></html>".encode("utf-16"),
        b"<html><body><p>ok</p></body></html>",
        b"{}" + b" " * 70000 + b"<html><body><p>late tag</p></body></html>",
    ],
)
def test_bytes_fast_path_agrees_with_the_decoded_text(raw):
    """Bytes and their decoded text are accepted or refused alike (NUL bytes, UTF-16, a first tag past the sniff)."""

    def outcome(page):
        try:
            return ex.extract_html(page, min_chars_fallback=0).text
        except ex.NotHTML:
            return "NotHTML"

    assert outcome(raw) == outcome(ex.decode_html(raw))


@pytest.mark.parametrize(
    ("names", "weight"),
    [
        ("sidebar", -25),
        ("Comments", -25),
        ("readMore", -25),  # camelCase split
        ("x ad2", -25),  # a digit ends a word
        ("ad-slot", -25),
        ("adsense", 0),  # no word boundary after "ads"
        ("mainContent", 25),
        ("post-body related-links", 0),
        ("entry-content\n", 25),
        ("\u00a0nav\u00a0", -25),  # any Unicode blank separates words
    ],
)
def test_class_names_weigh_by_whole_words(names, weight):
    """The class/id rules match whole words (start, end, '-', '_', blanks), searched in the padded names."""
    assert ex._names_weight.__wrapped__(names) == weight


def test_blank_runs_squash_to_one_space():
    text = " a\t\tb\u00a0\u00a0c \u200b d\r\fe\v  f   "
    assert ex._squash(text) == " a b c d e f "
    assert ex._squash("plain words") == "plain words"


def test_cjk_characters_count_twice_in_text_length():
    assert ex._text_len("abc") == 3
    assert ex._text_len("\u2019quoted\u2019 \u00e9t\u00e9") == 12  # non-ASCII, no CJK: the plain length
    assert ex._text_len("中文abc") == 7
    assert ex._text_len("かなカナ한국") == 12


def test_metadata_from_one_walk_over_meta_and_link_tags():
    page = (
        "<html><head><link rel='canonical' href='/relative'><link rel='Canonical' href='https://x.org/a'>"
        '<script type=\'application/ld+json\'>{"@type": "WebSite", "name": "no keys read here"}</script>'
        '<script type=\'application/ld+json\'>{"headline": "LD title", "datePublished": "2020-01-02"}</script>'
        "</head><body><meta itemprop='author' content='someone'><p>text</p></body></html>"
    )
    meta = ex.extract_metadata(ex.parse_html(page))
    assert meta == {"title": "LD title", "date": "2020-01-02", "url": "https://x.org/a"}
    page = page.replace("<p>text</p>", "<meta property='og:title' content=' Meta  title '><p>text</p>")
    assert ex.extract_metadata(ex.parse_html(page))["title"] == "Meta title"


def test_a_long_line_repeating_the_title_is_dropped():
    title = "A very long headline " * 7
    kept = "x" * 130
    text = ex._drop_boilerplate_lines(f"{title.strip()}\n{kept}\nRead more", title)
    assert text == kept


def test_pruned_element_between_words_keeps_them_apart():
    """A pruned image's tail of blanks used to go with it, joining "alpha" and "beta" into one word."""
    prose = "Long prose, with commas, to be chosen as the article body here. " * 3
    page = f"<html><body><div id='story'><p>{prose}</p><p><b>alpha</b><img src=x> <b>beta</b></p></div></body></html>"
    assert ex.extract_html(page, min_chars_fallback=0).text.endswith("\nalpha beta")
