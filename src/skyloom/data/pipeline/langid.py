"""Language identification with py3langid (its model ships inside the wheel, as numpy arrays — no download,
no pickle).

Mixed pages: the text is cut into segments (paragraphs, long ones into ~500-character pieces); each segment
is identified and weighted by its length. The document's ``language`` is the language with the largest share,
``language_score`` is the identifier's mean confidence over that language's segments, and ``languages`` lists every
language holding at least ``mixed_min_share`` of the text. A page is kept when its main language is wanted
and scores at least ``min_score``, and wanted languages hold at least ``min_wanted_share`` of it. With
``remove_unwanted_segments``, long segments in unwanted languages are cut out of kept pages (e.g. a Chinese
article with a Russian block pasted in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from skyloom.data.pipeline.base import SkyFilter

_SEGMENT_CHARS = 500
_MIN_SEGMENT_CHARS = 300
_PARAGRAPH_CHARS = 100


@dataclass
class LangIdConfig:
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])  # kept languages ([] keeps all)
    min_score: float = 0.5
    min_wanted_share: float = 0.6
    mixed_min_share: float = 0.2
    remove_unwanted_segments: bool = False
    min_segment_letters: int = 20  # segments with fewer letters (numbers, formulas) follow their neighbours
    max_segments: int = 24  # long documents: judge this many evenly spaced segments; the rest follow them
    # identifier labels merged into another language: py3langid labels some Mandarin (Wikipedia, news) "wuu"
    aliases: dict[str, str] = field(default_factory=lambda: {"wuu": "zh"})

    def validate(self) -> None:
        from skyloom.config import ConfigError

        for key in ("min_score", "min_wanted_share", "mixed_min_share"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(key, "must be within [0, 1]")


_identifier = None


def identifier():
    """The py3langid identifier with normalised probabilities (loaded once per process, ~1 s)."""
    global _identifier
    if _identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def _segments(text: str) -> list[str]:
    """Paragraphs (lines of ≥ 100 characters) on their own; runs of short lines merged up to ~300 characters
    (few identifier calls); very long lines cut at spaces (or anywhere in CJK text)."""
    out: list[str] = []
    buf: list[str] = []
    size = 0
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        while len(line) > 2 * _SEGMENT_CHARS:
            cut = line.rfind(" ", _SEGMENT_CHARS // 2, _SEGMENT_CHARS)
            cut = cut if cut > 0 else _SEGMENT_CHARS
            if buf:
                out.append("\n".join(buf))
                buf, size = [], 0
            out.append(line[:cut])
            line = line[cut:].strip()
        if len(line) >= _PARAGRAPH_CHARS:  # a real paragraph is judged on its own
            if buf:
                out.append("\n".join(buf))
                buf, size = [], 0
            out.append(line)
            continue
        buf.append(line)
        size += len(line)
        if size >= _MIN_SEGMENT_CHARS:
            out.append("\n".join(buf))
            buf, size = [], 0
    if buf:
        if out and size < _MIN_SEGMENT_CHARS // 3:
            out[-1] += "\n" + "\n".join(buf)
        else:
            out.append("\n".join(buf))
    return out


_LETTER = re.compile(r"[^\W\d_]")


def _letters(s: str) -> int:
    return len(_LETTER.findall(s))


def identify(
    text: str, min_segment_letters: int = 20, aliases: dict[str, str] | None = None, max_segments: int = 24
) -> tuple[dict[str, float], dict[str, float], list[tuple[str, str]]]:
    """(share per language, mean confidence per language, [(segment, language)]).

    Shares and confidences are weighted by the letters of each segment, so lines of numbers and formulas
    (which the identifier labels at random) neither vote nor dilute."""
    ident = identifier()
    aliases = aliases or {}
    segs = _segments(text) or [text]
    judged = set(range(len(segs)))
    if len(segs) > max_segments > 0:
        step = len(segs) / max_segments
        judged = {int(i * step) for i in range(max_segments)}
    labelled: list[tuple[str, str | None, float, int]] = []
    for i, s in enumerate(segs):
        n = _letters(s)
        lang, prob = (None, 0.0)
        if i in judged and (n >= min_segment_letters or len(segs) == 1):
            lang, prob = ident.classify(s)
            lang = aliases.get(lang, lang)
            if lang == "zxx":  # "no linguistic content"
                lang = None
        labelled.append((s, lang, float(prob), n))
    if all(lang is None for _, lang, _, _ in labelled):
        lang, prob = ident.classify(text)
        lang = aliases.get(lang, lang)
        labelled = [(s, lang, float(prob), max(n, 1)) for s, _, _, n in labelled]
    # unjudged segments take the language of the previous judged segment (or of the first judged one)
    last = next(lang for _, lang, _, _ in labelled if lang is not None)
    resolved = []
    for s, lang, prob, n in labelled:
        if lang is None:
            resolved.append((s, last, None, n))
        else:
            last = lang
            resolved.append((s, lang, prob, n))
    share: dict[str, float] = {}
    conf_sum: dict[str, float] = {}
    conf_w: dict[str, float] = {}
    total = sum(n for *_, n in resolved) or 1
    for _s, lang, prob, n in resolved:
        share[lang] = share.get(lang, 0.0) + n / total
        if prob is not None:
            conf_sum[lang] = conf_sum.get(lang, 0.0) + prob * n
            conf_w[lang] = conf_w.get(lang, 0.0) + n
    conf = {k: conf_sum[k] / conf_w[k] for k in conf_sum if conf_w[k] > 0}
    return share, conf, [(s, lang) for s, lang, _, _ in resolved]


class LanguageFilter(SkyFilter):
    """Sets ``language``, ``language_score`` (and ``languages`` for mixed pages); keeps the wanted ones."""

    name = "🌐 Language"
    default_reason = "language"

    def __init__(self, cfg: LangIdConfig):
        super().__init__()
        self.cfg = cfg

    def setup(self) -> None:
        identifier()

    def filter(self, doc) -> bool | tuple[bool, str]:
        md = doc.metadata
        if md.get("kind") == "code":
            md["language"] = "code"
            return True
        share, conf, segments = identify(
            doc.text, self.cfg.min_segment_letters, self.cfg.aliases, self.cfg.max_segments
        )
        main = max(share, key=share.get)
        score = conf.get(main, 0.0)
        md["language"] = main
        md["language_score"] = round(score, 4)
        mixed = {
            k: round(v, 3) for k, v in sorted(share.items(), key=lambda kv: -kv[1]) if v >= self.cfg.mixed_min_share
        }
        if len(mixed) > 1:
            md["languages"] = mixed
        wanted = set(self.cfg.languages)
        if not wanted:
            return score >= self.cfg.min_score or (False, "low_language_score")
        if main not in wanted:
            return False, f"language:{main}"
        if score < self.cfg.min_score:
            return False, "low_language_score"
        if sum(v for k, v in share.items() if k in wanted) < self.cfg.min_wanted_share:
            return False, "too_much_other_language"
        if self.cfg.remove_unwanted_segments and any(lang not in wanted for _, lang in segments):
            doc.text = "\n".join(
                s for s, lang in segments if lang in wanted or _letters(s) < self.cfg.min_segment_letters
            )
        return True
