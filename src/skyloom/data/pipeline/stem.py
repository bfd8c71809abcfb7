"""STEM split: exercises, exam questions and worked solutions → SkyPile-STEM; everything else → SkyPile-Main.

A transparent score (each signal's weight in YAML) rather than a trained model, because the only labelled
STEM text at hand are the benchmarks we must not train on. Signals, bilingual:

- ``options``: a multiple-choice item — A, B, C and D each opening a line, or in order inline with short texts
  (``… A. 马 B. 猪 C. 牛 D. 羊``) weighs as much as the threshold; three of A–D anywhere weigh less;
- ``answer``: an answer/solution marker (``Answer:``, ``The answer is``, ``####``, ``答案：``, ``解：`` at a line
  start, ``解析：``, ``故选B``, ``【答案】``, ``所以 … = 24`` …) — Chinese markers are anchored, since bare
  ``答案``, ``所以…是`` or ``选A`` occur in any prose;
- ``question``: an exercise prompt (``How many``, ``Find``, ``Calculate``, ``Solve``, ``Prove``, ``求出``,
  ``是多少``, ``下列``, ``正确的是``, a blank ``____`` …) or a question mark;
- answer and question markers weigh fully when dense (at least one per ``marker_chars``), half otherwise, so one
  stray marker in a long article does not make it an exercise;
- ``equations``: arithmetic written out (``3 + 4 = 7``, ``x^2``, ``<<48/2=24>>``), per 1,000 characters;
- ``math``: share of digits and operators; ``latex``: TeX or math symbols (``\\frac``, ``√``, ``≤`` …).

A document is STEM when its score reaches ``threshold``; news and reviews full of numbers rarely carry
both a question and an answer/option structure, which is what the default weights require.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from skyloom.data.pipeline.base import SkyFilter

_OPTION = re.compile(r"(?:^|\n|\s)[(（]?([A-D])[)）]?\s*[.．、:：)]\s*\S")
_OPTION_LINE = re.compile(r"(?m)^[ \t　]*[(（]?([A-D])[)）]?[ \t]*[.．、:：)][ \t]*\S")
_OPT = r"[(（]?{}[)）]?[ \t]*[.．、:：][ \t]*"
_OPTION_RUN = re.compile(
    r"(?:^|\s)" + r"[^\n]{1,80}?\s".join(_OPT.format(c) for c in "ABCD") + r"\S"
)  # A… B… C… D… inline
# Markers of a worked answer. Chinese ones must be anchored: bare 答案 / 所以…是 / 选A occur in any prose.
_ANSWER = re.compile(
    r"answer\s*(?:is|:)|solution\s*[:：]|the answer is|therefore,? the (?:answer|value|total|result)|"
    r"so the answer|final answer|####|"
    r"答案\s*[:：是为]|(?:^|\n)\s*解\s*[:：]|解析\s*[:：]|故选\s*[A-D]|应选\s*[A-D]|正确答案|【答案】|【解析】|"
    r"(?:所以|因此|故)[^，。,\n]{0,20}=\s*-?\d",
    re.I,
)
_QUESTION = re.compile(
    r"\bhow (?:many|much|long|far|old)\b|\bwhat is the\b|\bfind\b|\bcalculate\b|\bcompute\b|\bsolve\b|\bprove\b|"
    r"\bshow that\b|\bevaluate\b|\bsimplify\b|\bwhich of the following\b|"
    r"求(?:出|得|证|解|值|和|积|[a-zA-Z\d(（])|计算(?:[:：]|题|下列|出)|解方程|证明[:：]|是多少|有多少|多少(?:元|个|人|米|千克|天)|"
    r"下列|以下.{0,10}(?:正确|错误|属于)|正确的是|错误的是|不正确的是|哪一项|哪个选项|_{3,}|（\s*）",
    re.I,
)
_EQUATION = re.compile(r"\d\s*[-+*/×÷^]\s*\(?\d[\d.,]*\)?\s*=|=\s*\d|<<[^>]*=[^>]*>>|\b[a-z]\s*[=^]\s*\d")
_MATH_CHARS = re.compile(r"[0-9+\-*/=<>^×÷%√π∑∫≤≥≠±]")
_LATEX = re.compile(r"\\(?:frac|sqrt|sum|int|times|cdot|leq|geq|pi|alpha|beta|theta)|\$[^$\n]{1,80}\$|[√∑∫≤≥≠±π]")


@dataclass
class StemConfig:
    """``stem_split`` step: sets ``subset`` (stem/main) and ``stem_score``; drops nothing."""

    threshold: float = 3.0
    w_options: float = 2.0  # ≥ 3 of A–D written as options anywhere
    w_all_options: float = 0.5  # … added when all four of A–D are there
    w_option_block: float = 3.0  # A, B, C, D each opening a line, or in order with short texts: an exam item
    w_answer: float = 1.5
    w_question: float = 1.0
    w_equations: float = 1.0  # at ≥ 2 equations per 1,000 characters (half at ≥ 0.5)
    w_math: float = 1.0  # at ≥ 8 % digits/operators (half at ≥ 4 %)
    w_latex: float = 0.5
    max_chars: int = 20_000  # only the start of very long documents is scored
    marker_chars: int = 1500  # answer/question markers count fully at ≥ one per this many characters


def stem_score(text: str, cfg: StemConfig) -> tuple[float, dict[str, float]]:
    t = text[: cfg.max_chars]
    n = max(len(t), 1)
    parts: dict[str, float] = {}
    # a full A–D block at line starts is an exam item by itself; A/B/C inline (initials, outlines) is weaker
    if len(set(_OPTION_LINE.findall(t))) >= 4 or _OPTION_RUN.search(t):
        parts["options"] = cfg.w_option_block
    else:
        inline = len(set(_OPTION.findall(t)))
        if inline >= 3:
            parts["options"] = cfg.w_options + (cfg.w_all_options if inline == 4 else 0.0)
    # answer / question markers weigh fully when they are dense (≥ one per `marker_chars`), as in exercises;
    # one stray marker in a long article weighs half
    for name, pattern, weight in (("answer", _ANSWER, cfg.w_answer), ("question", _QUESTION, cfg.w_question)):
        hits = len(pattern.findall(t)) + (t.count("?") + t.count("？") if name == "question" else 0)
        if hits:
            parts[name] = weight if hits * cfg.marker_chars >= n else weight / 2
    eq = len(_EQUATION.findall(t)) * 1000 / n
    if eq >= 2:
        parts["equations"] = cfg.w_equations
    elif eq >= 0.5:
        parts["equations"] = cfg.w_equations / 2
    math = len(_MATH_CHARS.findall(t)) / n
    if math >= 0.08:
        parts["math"] = cfg.w_math
    elif math >= 0.04:
        parts["math"] = cfg.w_math / 2
    if _LATEX.search(t):
        parts["latex"] = cfg.w_latex
    return sum(parts.values()), parts


class StemSplit(SkyFilter):
    """Routes each document to ``subset: stem`` or ``subset: main`` (code always goes to main)."""

    name = "🧪 STEM split"
    default_reason = "stem"

    def __init__(self, cfg: StemConfig):
        super().__init__()
        self.cfg = cfg

    def filter(self, doc) -> bool:
        if doc.metadata.get("kind") == "code":
            doc.metadata["subset"] = "main"
            self.count("subset:main")
            self.count("subset:main:code")
            return True
        score, _ = stem_score(doc.text, self.cfg)
        doc.metadata["stem_score"] = round(score, 2)
        doc.metadata["subset"] = "stem" if score >= self.cfg.threshold else "main"
        self.count(f"subset:{doc.metadata['subset']}")
        self.count(f"subset:{doc.metadata['subset']}:{doc.metadata.get('language') or '?'}")
        return True
