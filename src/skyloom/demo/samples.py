"""What the demo's models write: greedy and sampled continuations of fixed prompts after every session, and one
word problem (never trained on) answered before and after Stage-2 — the evidence of learning a reader can see,
next to the loss numbers. Decoding is the evaluation engine's (`LanguageModel.generate`, KV cache)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from skyloom.eval.lm import LanguageModel, Sampling

# one prompt per natural-text domain, in the style of its text
PROMPTS = {
    "zh_news": "新华社北京１月１日电",
    "zh_reviews": "这本书",
    "en_docs": "The return statement",
    "code": "def ",
}
SAMPLED = Sampling(temperature=0.8, top_k=40, seed=1234)  # fixed seed: the same text on every run


def continuations(lm: LanguageModel, max_new_tokens: int = 40) -> list[dict[str, Any]]:
    """[{domain, prompt, greedy, sampled}] for the fixed prompts."""
    prompts = [lm.encode(p) for p in PROMPTS.values()]
    greedy = lm.generate(prompts, max_new_tokens, desc="samples (greedy)")
    sampled = lm.generate(prompts, max_new_tokens, sampling=SAMPLED, desc="samples (sampled)")
    return [
        {"domain": d, "prompt": p, "greedy": g, "sampled": s} for (d, p), g, s in zip(PROMPTS.items(), greedy, sampled)
    ]


def split_problem(text: str) -> tuple[str, str]:
    """("Question: …\\nAnswer:", " the worked solution") of a GSM8K-style record; the whole text as the prompt
    when it has no "Answer:"."""
    head, sep, answer = text.partition("Answer:")
    return (head + sep, answer) if sep else (text, "")


def solve(lm: LanguageModel, problem: str, max_new_tokens: int = 60) -> dict[str, Any]:
    """The model's greedy answer to one problem (stops at the next "Question:"), with the reference answer."""
    prompt, reference = split_problem(problem)
    room = lm.max_length - max_new_tokens
    answer = lm.generate([lm.encode(prompt)[-room:]], max_new_tokens, stop=["Question:"], desc="stem problem")[0]
    return {
        "prompt": prompt,
        "answer": answer,
        "reference": reference,
        "correct": final_number(answer) is not None and final_number(answer) == final_number(reference),
    }


def final_number(text: str) -> str | None:
    """The number after the first "####" (GSM8K's answer line), or None."""
    _, sep, rest = text.partition("####")
    digits = rest.strip().split()
    return digits[0].rstrip(".") if sep and digits else None


def session_samples(lm: LanguageModel, problems: Sequence[str] = ()) -> dict[str, Any]:
    """Everything shown for one checkpoint: the continuations and, when given, the answered problems."""
    out: dict[str, Any] = {"continuations": continuations(lm)}
    if problems:
        out["problems"] = [solve(lm, p) for p in problems]
    return out
