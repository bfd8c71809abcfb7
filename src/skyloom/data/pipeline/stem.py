"""STEM split: exercises, exam questions and worked solutions → SkyPile-STEM; everything else → SkyPile-Main.

A transparent score (each signal's weight in YAML) rather than a trained model, because the only labelled
STEM text at hand are the benchmarks we must not train on. Signals, bilingual:

- ``options``: a multiple-choice block — at least three of the labels A–D written as options
  (``A.``, ``(B)``, ``C、``, ``D．`` at a line start or after a space);
- ``answer``: an answer/solution marker (``Answer:``, ``Solution``, ``The answer is``, ``####``, ``答案``,
  ``解：``, ``解析``, ``故选``, ``答：`` …);
- ``question``: an exercise prompt (``How many``, ``Find``, ``Calculate``, ``Solve``, ``Prove``, ``求``,
  ``计算``, ``下列``, ``正确的是`` …) or a question mark;
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
_ANSWER = re.compile(
    r"answer\s*(?:is|:)|solution\s*[:：]|the answer is|therefore,? the|so the answer|final answer|####|"
    r"答案|解[:：]|解析|故选|答[:：]|所以[^，。]{0,20}[=为是]|因此[^，。]{0,20}[=为是]|【答案】|【解析】|选\s*[A-D]",
    re.I)
_QUESTION = re.compile(
    r"\bhow (?:many|much|long|far|old)\b|\bwhat is the\b|\bfind\b|\bcalculate\b|\bcompute\b|\bsolve\b|\bprove\b|"
    r"\bshow that\b|\bevaluate\b|\bdetermine\b|\bsimplify\b|\bwhich of the following\b|"
    r"求|计算|解方程|证明|多少|下列|以下.{0,10}(?:正确|错误|属于|是)|正确的是|错误的是|哪[个项一种]|选择", re.I)
_EQUATION = re.compile(r"\d\s*[-+*/×÷^]\s*\(?\d[\d.,]*\)?\s*=|=\s*\d|<<[^>]*=[^>]*>>|\b[a-z]\s*[=^]\s*\d")
_MATH_CHARS = re.compile(r"[0-9+\-*/=<>^×÷%√π∑∫≤≥≠±]")
_LATEX = re.compile(r"\\(?:frac|sqrt|sum|int|times|cdot|leq|geq|pi|alpha|beta|theta)|\$[^$\n]{1,80}\$|[√∑∫≤≥≠±π]")


@dataclass
class StemConfig:
    """``stem_split`` step: sets ``subset`` (stem/main) and ``stem_score``; drops nothing."""

    threshold: float = 3.0
    w_options: float = 2.0
    w_answer: float = 1.5
    w_question: float = 1.0
    w_equations: float = 1.0  # at ≥ 2 equations per 1,000 characters (half at ≥ 0.5)
    w_math: float = 1.0  # at ≥ 8 % digits/operators (half at ≥ 4 %)
    w_latex: float = 0.5
    max_chars: int = 20_000  # only the start of very long documents is scored


def stem_score(text: str, cfg: StemConfig) -> tuple[float, dict[str, float]]:
    t = text[: cfg.max_chars]
    n = max(len(t), 1)
    parts: dict[str, float] = {}
    if len(set(_OPTION.findall(t))) >= 3:
        parts["options"] = cfg.w_options
    if _ANSWER.search(t):
        parts["answer"] = cfg.w_answer
    if _QUESTION.search(t) or "?" in t or "？" in t:
        parts["question"] = cfg.w_question
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
