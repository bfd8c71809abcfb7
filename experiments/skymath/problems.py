"""Procedurally generated 1–4 step arithmetic word problems with GSM8K-style annotated solutions, English and
Chinese. The `test` split uses sentence templates, names and items never seen in training, and starting numbers
that are multiples of 5 (training never starts from one), so it measures transfer to new wording and new
numbers; `val` problems are new problems from the training templates (in-distribution).

A problem: someone starts with A items; each step applies one operation (buy more: +, give away: −,
k times as many: ×, share equally among k and keep one share: ÷, always exact) and writes one solution line
"… = <<a op b=r>>r …"; the last line is "#### R". Every annotation is exact (checked in `generate`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OPS = ("add", "sub", "mul", "div")

EN = {
    "train": {
        "names": ["Tom", "Anna", "Ben", "Lucy", "Sam", "Mia", "Jack", "Emma"],
        "items": ["apples", "pencils", "stickers", "marbles", "cookies", "cards"],
        "start": "{name} has {a} {item}.",
        "add": ("Then {name} buys {n} more {item}.", "After buying, {name} has {x}+{n} = <<{x}+{n}={r}>>{r} {item}."),
        "sub": (
            "Then {name} gives away {n} {item}.",
            "After giving some away, {name} has {x}-{n} = <<{x}-{n}={r}>>{r} {item}.",
        ),
        "mul": (
            "Then the number of {item} becomes {n} times as many.",
            "Now {name} has {x}*{n} = <<{x}*{n}={r}>>{r} {item}.",
        ),
        "div": (
            "Then {name} splits the {item} equally into {n} bags and keeps one bag.",
            "One bag holds {x}/{n} = <<{x}/{n}={r}>>{r} {item}.",
        ),
        "ask": "How many {item} does {name} have now?",
    },
    "test": {
        "names": ["Olivia", "Noah", "Grace", "Leo", "Chloe", "Ethan"],
        "items": ["books", "coins", "shells", "balloons", "stamps"],
        "start": "At the start, {name} owns {a} {item}.",
        "add": ("Later {name} receives another {n} {item}.", "{name} now owns {x}+{n} = <<{x}+{n}={r}>>{r} {item}."),
        "sub": ("Later {name} loses {n} of the {item}.", "{name} is left with {x}-{n} = <<{x}-{n}={r}>>{r} {item}."),
        "mul": (
            "Later {name}'s collection of {item} grows to {n} times its size.",
            "The collection is {x}*{n} = <<{x}*{n}={r}>>{r} {item}.",
        ),
        "div": (
            "Later {name} divides the {item} evenly among {n} friends and keeps one share.",
            "Each share is {x}/{n} = <<{x}/{n}={r}>>{r} {item}.",
        ),
        "ask": "How many {item} does {name} own at the end?",
    },
}
ZH = {
    "train": {
        "names": ["小明", "小红", "小刚", "小丽", "小华", "小军"],
        "items": ["苹果", "铅笔", "贴纸", "弹珠", "饼干"],
        "start": "{name}有{a}个{item}。",
        "add": ("然后{name}又买了{n}个{item}。", "买了以后，{name}有 {x}+{n}=<<{x}+{n}={r}>>{r} 个{item}。"),
        "sub": ("然后{name}送出了{n}个{item}。", "送出以后，{name}有 {x}-{n}=<<{x}-{n}={r}>>{r} 个{item}。"),
        "mul": ("然后{item}的数量变成了原来的{n}倍。", "现在{name}有 {x}*{n}=<<{x}*{n}={r}>>{r} 个{item}。"),
        "div": ("然后{name}把{item}平均装进{n}个袋子，只留下一袋。", "一袋有 {x}/{n}=<<{x}/{n}={r}>>{r} 个{item}。"),
        "ask": "现在{name}有多少个{item}？",
    },
    "test": {
        "names": ["小芳", "小强", "小燕", "小龙", "小梅"],
        "items": ["书", "硬币", "贝壳", "气球", "邮票"],
        "start": "一开始，{name}拥有{a}个{item}。",
        "add": ("后来{name}又得到了{n}个{item}。", "{name}现在拥有 {x}+{n}=<<{x}+{n}={r}>>{r} 个{item}。"),
        "sub": ("后来{name}弄丢了{n}个{item}。", "{name}还剩 {x}-{n}=<<{x}-{n}={r}>>{r} 个{item}。"),
        "mul": ("后来{name}的{item}增加到原来的{n}倍。", "{item}一共有 {x}*{n}=<<{x}*{n}={r}>>{r} 个。"),
        "div": ("后来{name}把{item}平均分给{n}个朋友，自己留一份。", "每份是 {x}/{n}=<<{x}/{n}={r}>>{r} 个{item}。"),
        "ask": "最后{name}拥有多少个{item}？",
    },
}


def _operation(rng: random.Random, x: int, split: str) -> tuple[str, int, int] | None:
    """(op, operand, result) keeping results integral and in 1..200; None if no operation fits."""
    small = (2, 5)
    choices = list(OPS)
    rng.shuffle(choices)
    for op in choices:
        if op == "add":
            n = rng.randint(1, 20)
            if x + n <= 200:
                return op, n, x + n
        elif op == "sub" and x > 2:
            n = rng.randint(1, x - 1)
            return op, n, x - n
        elif op == "mul":
            n = rng.randint(*small)
            if x * n <= 200:
                return op, n, x * n
        elif op == "div":
            divisors = [d for d in range(small[0], small[1] + 1) if x % d == 0 and x // d >= 1]
            if divisors:
                n = rng.choice(divisors)
                return op, n, x // n
    return None


def make_problem(rng: random.Random, steps: int, lang: str, split: str) -> dict:
    t = (EN if lang == "en" else ZH)[split]
    name, item = rng.choice(t["names"]), rng.choice(t["items"])
    # starting numbers: never a multiple of 5 in training, always one in the test set
    a = rng.choice([v for v in range(2, 41) if (v % 5 == 0) == (split == "test")])
    q = [t["start"].format(name=name, a=a, item=item)]
    sol = []
    x = a
    for _ in range(steps):
        op = _operation(rng, x, split)
        if op is None:
            return make_problem(rng, steps, lang, split)
        kind, n, r = op
        q.append(t[kind][0].format(name=name, n=n, item=item))
        sol.append(t[kind][1].format(name=name, n=n, item=item, x=x, r=r))
        x = r
    q.append(t["ask"].format(name=name, item=item))
    sep = " " if lang == "en" else ""
    return {"question": sep.join(q), "answer": "\n".join(sol + [f"#### {x}"]), "steps": steps, "lang": lang, "final": x}


def generate(n: int, split: str, seed: int) -> list[dict]:
    from decimal import Decimal

    from skyloom.eval.math import grade

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = make_problem(rng, 1 + i % 4, ("en", "zh")[(i // 4) % 2], split)
        g = grade(p["answer"], Decimal(p["final"]))
        assert g.accepted, p  # every generated solution is right and every annotation checks
        out.append(p)
    rng.shuffle(out)
    return out


def write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


if __name__ == "__main__":
    for p in generate(4, "train", 0) + generate(4, "test", 1):
        print(p["question"], "\n", p["answer"], "\n")
