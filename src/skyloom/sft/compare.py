"""Self-compare examples: align a model's wrong solution with the reference and name the first wrong step.

Our reading of SkyMath's "self-compare" (only the abstract is public; the closest documented recipe is
learning-from-mistakes): the model is shown a question, its own wrong solution and the reference, and learns
to say where its solution first departs from the reference, why, and what the corrected solution is.

Alignment works on *computed values*, not on wording. A solution is split into steps (non-empty lines; the
final "#### N" / "the answer is N" line is the answer line). Each step's values are the results of its
`<<a=b>>` annotations (or, when it has none, the numbers right after an "="). Walking the wrong solution's
steps in order, the first step is wrong when
  1. one of its annotations does not check arithmetically ("arithmetic": 3*4 is 12, not 13), or
  2. it computes a value the reference never computes ("diverges": the reference computes … instead), or
  3. no step is wrong but the reference's values are never all reached: the step after the last one that
     made progress ("incomplete": the solution stops, or wanders without computing anything), or
  4. all steps agree and reach every value but the stated final answer differs ("final").
The corrected solution keeps the model's steps before the wrong one and continues with the reference's
steps from the first one whose values the kept steps have not produced yet — so it reads as a repair of the
model's own attempt, and it ends with the reference's final answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from skyloom.eval.gsm8k import ANSWER_IS, MARKER, normalize_number
from skyloom.eval.math import ANNOTATION, check_annotation, extract_answer

_AFTER_EQUALS = re.compile(r"=\s*\$?(-?[\d,]*\.?\d+)")
_CJK = re.compile(r"[\u4e00-\u9fff]")


def is_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


@dataclass
class Step:
    text: str
    values: list[Decimal]
    arithmetic_ok: bool
    bad: str | None  # the first failing annotation, "expr=stated", when not arithmetic_ok
    true_value: float | None


def _is_answer_line(line: str) -> bool:
    return bool(MARKER.search(line)) or (bool(ANSWER_IS.search(line)) and "<<" not in line)


def split_steps(solution: str) -> tuple[list[Step], str | None]:
    """(reasoning steps, answer line or None)."""
    steps, answer = [], None
    for line in (x.strip() for x in solution.strip().splitlines()):
        if not line:
            continue
        if _is_answer_line(line):
            answer = line
            continue
        values, ok, bad, true = [], True, None, None
        bodies = ANNOTATION.findall(line)
        if bodies:
            for body in bodies:
                a = check_annotation(body)
                v = normalize_number(a.stated)
                if v is not None:
                    values.append(v)
                if not a.ok and ok:
                    ok, bad, true = False, body, a.value
        else:
            values = [v for v in (normalize_number(m) for m in _AFTER_EQUALS.findall(line)) if v is not None]
        steps.append(Step(line, values, ok, bad, true))
    return steps, answer


@dataclass
class Comparison:
    wrong_step: int  # 1-based index into the wrong solution's steps (len + 1 = the answer line)
    kind: str  # "arithmetic" | "diverges" | "incomplete" | "final"
    step_text: str
    reason: str
    corrected: str


def _fmt(v: float | Decimal) -> str:
    d = Decimal(str(round(float(v), 6))).normalize()
    return format(d, "f")


def compare(wrong: str, reference: str, gold: Decimal | None = None) -> Comparison:
    """Locate the first wrong step of `wrong` against `reference` (see the module docstring)."""
    zh = is_chinese(reference)
    mine, my_answer = split_steps(wrong)
    ref, ref_answer = split_steps(reference)
    ref_values = {v for s in ref for v in s.values}
    produced: set[Decimal] = set()
    last_progress = -1  # the last step that produced a value of the reference
    for i, step in enumerate(mine):
        if not step.arithmetic_ok:
            expr, _, stated = step.bad.rpartition("=")
            true = _fmt(step.true_value) if step.true_value is not None else "not a number"
            reason = (
                f"计算错误：{expr} 等于 {true}，不是 {stated}。"
                if zh
                else f"the calculation is wrong: {expr} is {true}, not {stated}."
            )
            return Comparison(i + 1, "arithmetic", step.text, reason, _repair(mine[:i], ref, produced))
        off = [v for v in step.values if v not in ref_values]
        if off:
            want = _expected(ref, produced)
            reason = (
                (
                    f"这一步算出 {_fmt(off[0])}，但参考解答从未得到这个数"
                    + (f"；这里应当计算 {want}。" if want else "。")
                )
                if zh
                else (
                    f"it computes {_fmt(off[0])}, a value the reference solution never reaches"
                    + (f"; at this point the reference computes {want}." if want else ".")
                )
            )
            return Comparison(i + 1, "diverges", step.text, reason, _repair(mine[:i], ref, produced))
        if set(step.values) - produced:
            last_progress = i
        produced.update(step.values)
    want = _expected(ref, produced)
    if want is not None:  # no step is wrong, but the solution never gets to the reference's result
        k = last_progress + 1
        text = mine[k].text if k < len(mine) else (my_answer or "(end of solution)")
        reason = (
            f"解答在这里没有继续推进；参考解答接下来计算 {want}。"
            if zh
            else f"the solution stops making progress here; next the reference computes {want}."
        )
        return Comparison(k + 1, "incomplete", text, reason, _repair(mine[:k], ref, produced))
    # every step agrees with the reference: the stated answer is what is wrong (or missing)
    gold_text = _fmt(gold) if gold is not None else (_fmt(extract_answer(ref_answer or reference) or 0))
    said = extract_answer(my_answer) if my_answer else None
    line = my_answer or "(no final answer)"
    if zh:
        reason = (
            f"前面的步骤都对，但最终答案写成了 {_fmt(said)}，应为 {gold_text}。"
            if said is not None
            else f"前面的步骤都对，但没有给出最终答案；答案是 {gold_text}。"
        )
    else:
        reason = (
            f"the steps are right but the final answer says {_fmt(said)}; it should be {gold_text}."
            if said is not None
            else f"the steps are right but no final answer is given; it is {gold_text}."
        )
    return Comparison(len(mine) + 1, "final", line, reason, _repair(mine, ref, produced))


def _expected(ref: list[Step], produced: set[Decimal]) -> str | None:
    """The reference's next computation the model has not produced yet ("a*b=c"), or None when all are."""
    nxt = next((s for s in ref if s.values and not set(s.values) <= produced), None)
    if nxt is None:
        return None
    body = ANNOTATION.search(nxt.text)
    return body.group(1) if body else ", ".join(_fmt(v) for v in nxt.values)


def _repair(kept: list[Step], ref: list[Step], produced: set[Decimal]) -> str:
    start = next((j for j, s in enumerate(ref) if not set(s.values) <= produced), len(ref))
    return "\n".join([s.text for s in kept] + [s.text for s in ref[start:]])


def final_line(gold: Decimal, zh: bool) -> str:
    return f"所以答案是 {_fmt(gold)}。" if zh else f"So, the answer is {_fmt(gold)}."


def skymath_style(solution: str, gold: Decimal) -> str:
    """A reference solution in the released model's style: the "#### N" line becomes "So, the answer is N."
    ("所以答案是 N。" for Chinese); an existing answer line is kept."""
    steps, answer = split_steps(solution)
    zh = is_chinese(solution)
    body = "\n".join(s.text for s in steps)
    if answer and not MARKER.search(answer):
        return f"{body}\n{answer}".strip()
    return f"{body}\n{final_line(gold, zh)}".strip()


def compare_prompt(question: str, wrong: str, reference: str) -> str:
    if is_chinese(question):
        return (
            f"题目：{question}\n\n参考解答：\n{reference}\n\n我的解答：\n{wrong}\n\n"
            "请对照参考解答逐步检查我的解答：指出第一个出错的步骤，说明原因，并给出改正后的解答。"
        )
    return (
        f"Question: {question}\n\nReference solution:\n{reference}\n\nMy solution:\n{wrong}\n\n"
        "Compare my solution with the reference step by step: name the first wrong step, say why it is "
        "wrong, and give the corrected solution."
    )


def compare_target(c: Comparison, gold: Decimal, zh: bool) -> str:
    corrected = c.corrected.strip()
    if zh:
        head = f"第 {c.wrong_step} 步出错：“{c.step_text}”。{c.reason}\n改正后的解答：\n"
    else:
        head = f'Step {c.wrong_step} is the first wrong step: "{c.step_text}". Why: {c.reason}\nCorrected solution:\n'
    return head + (corrected + "\n" if corrected else "") + final_line(gold, zh)


def equation_key(solution: str) -> tuple[str, ...]:
    """The equation sequence that identifies a solution for deduplication (annotations, spaces removed)."""
    return tuple(re.sub(r"\s+", "", b) for b in ANNOTATION.findall(solution))
