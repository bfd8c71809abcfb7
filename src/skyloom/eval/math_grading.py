"""Grading competition-math answers written in LaTeX (MATH / minerva_math): extraction, normalisation, equivalence.

* Extraction (`extract_final_answer`): the argument of the LAST `\\boxed{…}` / `\\fbox{…}` (braces balanced, so
  `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`), as the Hendrycks MATH reference's `last_boxed_only_string`; else
  minerva's "Final Answer: The final answer is X. I hope it is correct."; else "the answer is X"; else the last
  `$…$` of the last non-empty line, else that line.
* Normalisation (`normalize_answer`): Lewkowycz et al. (2022) appendix D as lm-eval's `minerva_math` (unit words,
  `\\text{}`, `\\$`, degrees, thousands separators, `\\fracab`/`\\sqrt3` shorthand) followed by the Hendrycks
  reference's `strip_string` (`\\left`/`\\right`, `\\!`, `\\dfrac`/`\\tfrac`→`\\frac`, `\\%`, leading `.5`, `k = `,
  `a/b`→`\\frac{a}{b}`, spaces), and `^{2}`→`^2`, a trailing `.`.
* Equivalence (`is_equiv`): equal normalised strings; else both sides parsed by `latex_to_sympy` — a small
  recursive-descent parser for the common forms (numbers exactly as rationals, letters, + − · × ÷ /, powers,
  implicit products, `\\frac`, `\\sqrt[n]{}`, `\\pi`, `\\infty`, parentheses, `a:b`-free) that builds sympy objects
  directly (no `eval`, no `sympify` of untrusted text) — and `simplify(a − b) == 0`; tuples / intervals compare
  element-wise with the same brackets. Sizes and exponents are capped and sympy runs under a wall-clock alarm
  (`SYMPY_TIMEOUT_S`, main thread), so a pathological answer is judged wrong instead of hanging the run.
"""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SYMPY_TIMEOUT_S = 2.0
MAX_PARSED_CHARS = 400  # longer answers are compared as strings only
MAX_EXPONENT = 1000  # |n| of a numeric power; 10^(10^10) would never finish

# ---- extraction ---------------------------------------------------------------------------------------------


def last_boxed_only_string(text: str) -> str | None:
    """`\\boxed{…}` (or `\\fbox{…}`, or `\\boxed X` up to the next `$`) — the last one, braces balanced; None: none."""
    idx = text.rfind("\\boxed")
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[idx : i + 1]
    return None


def remove_boxed(boxed: str) -> str:
    """The argument of `\\boxed{X}` / `\\fbox{X}` / `\\boxed X`."""
    for left in ("\\boxed ", "\\boxed{", "\\fbox{"):
        if boxed.startswith(left):
            inner = boxed[len(left) :]
            return inner[:-1] if left.endswith("{") and inner.endswith("}") else inner
    return boxed


FINAL_ANSWER = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")  # lm-eval's, dots and all
ANSWER_IS = re.compile(r"(?:the|final) answer is[:\s]*(.+?)(?:\.\s*$|\.\s+\S|\n|$)", re.IGNORECASE)
DOLLARS = re.compile(r"\$([^$]+)\$")


def extract_final_answer(completion: str) -> str | None:
    """The model's final answer as written (LaTeX, unnormalised); None when the completion is empty."""
    boxed = last_boxed_only_string(completion)
    if boxed is not None:
        return remove_boxed(boxed)
    match = FINAL_ANSWER.search(completion + "I hope it is correct.")  # as minerva: the end may be cut off
    if match:
        return match.group(1).strip()
    answers = ANSWER_IS.findall(completion)
    if answers:
        return answers[-1].strip()
    lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
    if not lines:
        return None
    dollars = DOLLARS.findall(lines[-1])
    return dollars[-1].strip() if dollars else lines[-1]


def dollar_span(completion: str) -> str:
    """lm-eval hendrycks_math's answer: the text between the first and the last `$`, else the whole completion."""
    first, last = completion.find("$"), completion.rfind("$")
    return completion[first + 1 : last] if first != last else completion


def reference_answer(solution: str) -> str | None:
    """The gold answer of a MATH solution: its last boxed expression."""
    boxed = last_boxed_only_string(solution)
    return None if boxed is None else remove_boxed(boxed)


# ---- normalisation ------------------------------------------------------------------------------------------

_SUBSTITUTIONS = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    (r"\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
]
_REMOVED = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    r"\mathrm{th}",
    r"^\circ",
    r"^{\circ}",
    r"\;",
    r",\!",
    "{,}",
    '"',
    "\\dots",
]


def minerva_normalize(answer: str) -> str:
    """Lewkowycz et al. (2022) appendix D, as lm-eval's minerva_math (unit words only where they are words)."""
    answer = answer.split("=")[-1]
    for expr in _REMOVED:
        if expr.isalpha():
            answer = re.sub(rf"(?<!\\)\b{expr}\b", "", answer)
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expr in _REMOVED:
        if expr.isalpha():
            segments = re.split(r"(\\[a-zA-Z]+)", answer)  # never cut a unit out of a command ("\left" keeps "ft")
            segments[::2] = [s.replace(expr, "") for s in segments[::2]]
            answer = "".join(segments)
        else:
            answer = answer.replace(expr, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", answer)
    answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", answer):
        answer = answer.replace(",", "")
    return answer


def _fix_a_slash_b(text: str) -> str:
    match = re.fullmatch(r"(-?\d+)/(\d+)", text)
    return f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}" if match else text


def strip_string(text: str) -> str:
    """The Hendrycks MATH reference's `strip_string` (units on the right, `\\left`, `\\dfrac`, `0.5`, `k=` …)."""
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "")
    if "\\text{ " in text:  # units on the right: "5 \text{ cm}"
        text = text.split("\\text{ ")[0]
    text = text.replace("\\%", "").replace("%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if text.startswith("."):
        text = "0" + text
    parts = text.split("=")
    if len(parts) == 2 and len(parts[0].strip()) <= 2:
        text = parts[1]
    text = re.sub(r"\\sqrt(?![{\[])(\w)", r"\\sqrt{\1}", text)
    text = text.replace(" ", "")
    text = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(\w)(?=\{)", r"\\frac{\1}", text)
    text = re.sub(r"\\frac\{([^{}]*)\}(\w)", r"\\frac{\1}{\2}", text)
    text = _fix_a_slash_b(text)
    return "\\frac{1}{2}" if text == "0.5" else text


def _reference_fix_fracs(text: str) -> str:
    pieces = text.split("\\frac")
    out = pieces[0]
    for piece in pieces[1:]:
        out += "\\frac"
        if piece[0] == "{":  # IndexError on a trailing \\frac, as the reference
            out += piece
            continue
        if len(piece) < 2:
            return text
        a, b, rest = piece[0], piece[1], piece[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _reference_fix_a_slash_b(text: str) -> str:
    if len(text.split("/")) != 2:
        return text
    a, b = text.split("/")
    a_int, b_int = int(a), int(b)  # ValueError for "a/b", as the reference (its caller then compares raw strings)
    return f"\\frac{{{a_int}}}{{{b_int}}}" if text == f"{a_int}/{b_int}" else text


def hendrycks_strip_string(text: str) -> str:
    """The Hendrycks MATH reference's `strip_string` as lm-eval's hendrycks_math runs it, quirks included
    (`\\sqrt[3]{8}` → `\\sqrt{[}3]{8}`); raises where it raises (`a/b`, a trailing `\\frac`, two `\\text{ `)."""
    text = text.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    text = text.replace("tfrac", "frac").replace("dfrac", "frac")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("^{\\circ}", "").replace("^\\circ", "")
    text = text.replace("\\$", "")
    if "\\text{ " in text:
        splits = text.split("\\text{ ")
        if len(splits) != 2:
            raise ValueError("more than one \\text{ ")
        text = splits[0]
    text = text.replace("\\%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    if len(text.split("=")) == 2 and len(text.split("=")[0]) <= 2:
        text = text.split("=")[1]
    if "\\sqrt" in text:
        splits = text.split("\\sqrt")
        text = splits[0] + "".join(
            "\\sqrt" + split if split[0] == "{" else "\\sqrt{" + split[0] + "}" + split[1:] for split in splits[1:]
        )
    text = _reference_fix_fracs(text.replace(" ", ""))
    if text == "0.5":
        text = "\\frac{1}{2}"
    return _reference_fix_a_slash_b(text)


def normalize_answer(answer: str) -> str:
    """minerva's normalisation, then Hendrycks's `strip_string`, then `^{2}` → `^2` and no trailing `.`."""
    text = strip_string(minerva_normalize(answer.strip()))
    text = re.sub(r"\^\{(\w)\}", r"^\1", text)
    text = re.sub(r"_\{(\w)\}", r"_\1", text)
    return text.rstrip(".").strip()


# ---- LaTeX → sympy ------------------------------------------------------------------------------------------


class LatexParseError(ValueError):
    """A normalised answer outside the forms `latex_to_sympy` reads (compared as a string only)."""


_TOKEN = re.compile(r"\s*(\d+\.\d*|\.\d+|\d+|\\[a-zA-Z]+|\\[,;!: ]|[A-Za-z]|\S)")
_MULTIPLY = {"*", "\\cdot", "\\times"}
_DIVIDE = {"/", "\\div"}
_IGNORED = {"\\,", "\\;", "\\!", "\\:", "\\ ", "\\left", "\\right", "\\displaystyle"}
_OPEN = {"(": ")", "{": "}", "[": "]"}


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            break
        pos = match.end()
        if match.group(1) not in _IGNORED:
            out.append(match.group(1))
    return out


class _Parser:
    """expr := term (± term)* ; term := unary ((·|/)? unary)* ; unary := ± unary | power ; power := atom (^ atom)?"""

    def __init__(self, text: str):
        import sympy

        self.sp = sympy
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise LatexParseError(f"expected {expected or 'more'}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self):
        value = self.expr()
        if self.peek() is not None:
            raise LatexParseError(f"unexpected {self.peek()!r}")
        return value

    def expr(self):
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self):
        value = self.unary()
        while True:
            tok = self.peek()
            if tok in _MULTIPLY:
                self.take()
                value = value * self.unary()
            elif tok in _DIVIDE:
                self.take()
                value = value / self.unary()
            elif tok is not None and self._starts_atom(tok):  # implicit product: 2\pi, 3x, (a)(b)
                value = value * self.power()
            else:
                return value

    def _starts_atom(self, tok: str) -> bool:
        return tok[0].isdigit() or tok[0] == "." or tok.isalpha() or tok in ("(", "{", "\\frac", "\\sqrt", "\\pi")

    def unary(self):
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self):
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take("^")
        exponent = self.unary() if self.peek() in ("-", "+") else self.atom()
        if exponent.is_number and (not exponent.is_finite or abs(exponent) > MAX_EXPONENT):
            raise LatexParseError("exponent too large")
        return base**exponent

    def group(self):
        self.take("{")
        value = self.expr()
        self.take("}")
        return value

    def atom(self):
        sp, tok = self.sp, self.take()
        if tok[0].isdigit() or tok[0] == ".":
            return sp.Rational(tok)  # exact: 0.5 == 1/2
        if tok.isalpha() and len(tok) == 1:
            return sp.Symbol(tok)
        if tok in ("(", "{"):
            value = self.expr()
            self.take(_OPEN[tok])
            return value
        if tok == "\\frac":
            return self.group() / self.group()
        if tok == "\\sqrt":
            index = 2
            if self.peek() == "[":
                self.take("[")
                index = self.expr()
                self.take("]")
            return sp.root(self.group(), index)
        if tok == "\\pi":
            return sp.pi
        if tok == "\\infty":
            return sp.oo
        raise LatexParseError(f"unsupported {tok!r}")


def latex_to_sympy(text: str):
    """A sympy expression for a normalised answer in the common forms (see the module docstring)."""
    if len(text) > MAX_PARSED_CHARS:
        raise LatexParseError("answer too long to parse")
    return _Parser(text).parse()


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeoutError after `seconds` (SIGALRM; only in the main thread, elsewhere the size caps alone)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError("sympy took too long")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_BRACKETS = re.compile(r"^([(\[])(.*)([)\]])$")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _sympy_equal(a: str, b: str) -> bool:
    import sympy

    x, y = latex_to_sympy(a), latex_to_sympy(b)
    if x == y:
        return True
    if x.has(sympy.oo, -sympy.oo) or y.has(sympy.oo, -sympy.oo):
        return False
    return sympy.simplify(x - y) == 0


def _equal_parts(a: str, b: str) -> bool:
    """Element-wise for tuples / intervals (same brackets, same count); one expression otherwise."""
    ma, mb = _BRACKETS.match(a), _BRACKETS.match(b)
    pa, pb = _split_top_level(ma.group(2) if ma else a), _split_top_level(mb.group(2) if mb else b)
    if len(pa) > 1 or len(pb) > 1:
        brackets_a = (ma.group(1), ma.group(3)) if ma else None
        brackets_b = (mb.group(1), mb.group(3)) if mb else None
        if brackets_a != brackets_b or len(pa) != len(pb):
            return False
        return all(x == y or _sympy_equal(x, y) for x, y in zip(pa, pb))
    return _sympy_equal(a, b)


def strip_equal(predicted: str | None, gold: str | None) -> bool:
    """hendrycks_math's exact_match: equal after the reference `strip_string` (raw strings where it raises)."""
    if predicted is None or gold is None:
        return False
    try:
        return hendrycks_strip_string(predicted) == hendrycks_strip_string(gold)
    except (ValueError, IndexError):
        return predicted == gold


def is_equiv(predicted: str | None, gold: str | None, timeout_s: float = SYMPY_TIMEOUT_S) -> bool:
    """Same answer: equal after `normalize_answer`, else equal under sympy where both sides parse."""
    if predicted is None or gold is None:
        return False
    a, b = normalize_answer(predicted), normalize_answer(gold)
    if a == b:
        return bool(a)
    try:
        with _time_limit(timeout_s):
            return _equal_parts(a, b)
    except (LatexParseError, TimeoutError, TypeError, ValueError, ZeroDivisionError, RecursionError):
        return False
    except Exception:  # noqa: BLE001 — sympy raises assorted errors on odd input; an unparsed answer is wrong
        return False
