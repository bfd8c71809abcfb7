"""Procedurally generated 1–3 step arithmetic word problems with GSM8K-style annotated solutions, English and
Chinese, sized so that a ~1M-parameter model trained for minutes on one CPU thread can learn them.

A problem: someone starts with A items; each step applies one operation (buy more: +, give away: −,
k times as many: ×, share equally among k and keep one share: ÷, always exact), every intermediate result in
1..99; the solution writes one line "a op b = <<a op b=r>>r" per step, then "#### R". Every annotation is exact
(checked in `generate`).

Sentences are composed: an opening (8 forms per language in training), steps of a connective (10) and an
operation phrase (2 per operation), a question (6). Held-out factors: the "frames" (opening and question forms),
the connectives, the names and items, and the starting numbers (`TEST_STARTS`; training never starts from one).
The `test` split holds out the frames and the starting numbers (`HELD_OUT_IN_TEST`): new sentences around the
training vocabulary, as GSM8K's test problems are new text about the same kind of everyday things. `test-all`
holds out every factor (new names and items too: a model trained from scratch has never seen them in a problem),
`test-FACTOR` one factor only (what a failure to transfer is due to). The operation phrases are always shared: a
model trained from scratch on this text has no other way to learn what a verb means. `val` is new problems from
the training templates (in-distribution).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OPS = ("add", "sub", "mul", "div")
MAX_VALUE = 99

# solution lines: the arithmetic only (no names or items to copy), the same for both languages and both splits
# (the test references are never trained on; only `final` is graded)
SOLUTION = {op: "{x}" + sign + "{n} = <<{x}" + sign + "{n}={r}>>{r}" for op, sign in zip(OPS, "+-*/", strict=True)}
# + and × are written in either order (half the references each): a problem has more than one correct solution,
# so RFT's distinct sampled solutions can differ from the reference (with one order only, RFT ≡ plain SFT)
COMMUTATIVE = ("add", "mul")
PHRASES = {  # operation phrases, shared by both splits
    "en": {
        "add": ["{name} buys {n} more {item}.", "{name} finds {n} more {item}."],
        "sub": ["{name} gives away {n} {item}.", "{name} loses {n} {item}."],
        "mul": ["the number of {item} becomes {n} times as many.", "{name} gets {n} times as many {item}."],
        "div": [
            "{name} splits the {item} equally into {n} bags and keeps one bag.",
            "{name} shares the {item} equally among {n} kids and keeps one share.",
        ],
    },
    "zh": {
        "add": ["{name}又买了{n}个{item}。", "{name}又找到了{n}个{item}。"],
        "sub": ["{name}送出了{n}个{item}。", "{name}弄丢了{n}个{item}。"],
        "mul": ["{item}的数量变成了原来的{n}倍。", "{name}的{item}变成了原来的{n}倍。"],
        "div": ["{name}把{item}平均装进{n}个袋子，只留下一袋。", "{name}把{item}平均分给{n}个人，自己留一份。"],
    },
}
FRAMES = {
    "en": {
        "train": {
            "names": [
                "Tom",
                "Anna",
                "Ben",
                "Lucy",
                "Sam",
                "Mia",
                "Jack",
                "Emma",
                "Max",
                "Lily",
                "Dan",
                "Zoe",
                "Ivan",
                "Rosa",
                "Omar",
                "Kate",
            ],
            "items": ["apples", "pencils", "stickers", "marbles", "cookies", "cards", "eggs", "pens", "cups", "toys"],
            "start": [
                "{name} has {a} {item}.",
                "{name} starts with {a} {item}.",
                "There are {a} {item} in {name}'s box.",
                "{name} keeps {a} {item} in a box.",
                "On Monday, {name} has {a} {item}.",
                "In the beginning, {name} has {a} {item}.",
                "{name} owns {a} {item}.",
                "First, {name} gets {a} {item}.",
            ],
            "connectives": [
                "Then",
                "Next,",
                "After a while,",
                "Soon",
                "After lunch,",
                "After that,",
                "On Tuesday,",
                "Afterwards",
                "In the evening,",
                "Now",
            ],
            "ask": [
                "How many {item} does {name} have now?",
                "How many {item} are there now?",
                "How many {item} does {name} have in the end?",
                "Find the number of {item} {name} has.",
                "How many {item} are left?",
                "Count the {item} that {name} has now.",
            ],
        },
        "test": {
            "names": ["Olivia", "Noah", "Grace", "Leo", "Chloe", "Ethan"],
            "items": ["books", "coins", "shells", "balloons", "stamps"],
            "start": ["At the start, {name} has {a} {item}."],
            "connectives": ["Later"],
            "ask": ["What is the number of {item} that {name} has at the end?"],
        },
    },
    "zh": {
        "train": {
            "names": ["小明", "小红", "小刚", "小丽", "小华", "小军", "小东", "小兰", "小文", "小静", "小伟", "小雪"],
            "items": ["苹果", "铅笔", "贴纸", "弹珠", "饼干", "鸡蛋", "杯子", "玩具", "橘子", "本子"],
            "start": [
                "{name}有{a}个{item}。",
                "{name}一开始有{a}个{item}。",
                "盒子里有{name}的{a}个{item}。",
                "{name}手里有{a}个{item}。",
                "星期一，{name}有{a}个{item}。",
                "起初{name}有{a}个{item}。",
                "{name}拿到了{a}个{item}。",
                "{name}家里有{a}个{item}。",
            ],
            "connectives": [
                "然后",
                "接着，",
                "过了一会儿，",
                "不久",
                "午饭后，",
                "之后",
                "星期二，",
                "随后",
                "晚上，",
                "这时",
            ],
            "ask": [
                "现在{name}有多少个{item}？",
                "现在一共有多少个{item}？",
                "最后{name}有多少个{item}？",
                "{name}还有多少个{item}？",
                "请算出{name}的{item}有多少个。",
                "剩下多少个{item}？",
            ],
        },
        "test": {
            "names": ["小芳", "小强", "小燕", "小龙", "小梅"],
            "items": ["书", "硬币", "贝壳", "气球", "邮票"],
            "start": ["早上，{name}有{a}个{item}。"],
            "connectives": ["后来"],
            "ask": ["{name}最终有几个{item}？"],
        },
    },
}
# starting numbers of the test split; training never starts from one of them
TEST_STARTS = (7, 12, 18, 23, 26)


# General text for the pretraining corpus: every name and item of both splits and the words of the held-out
# frames, in sentences with no numbers and no operations. A real pretrained model has read its test set's names and
# words somewhere; what it has not seen is them in a word problem. Without this, the held-out tokens keep their
# random initial embeddings and the test measures only that (a 0.7 → 0.1 drop from names alone, measured).
FILLER = {
    "en": [
        "{name} likes {item}.",
        "Later {name} goes home.",
        "At the start, {name} is happy.",
        "What is the color of the {item}?",
        "That is the number that {name} likes.",
        "{name} has {item} at the end of the day.",
    ],
    "zh": [
        "{name}喜欢{item}。",
        "后来{name}回家了。",
        "早上，{name}很高兴。",
        "{name}最终回家了。",
        "这里有几个人？",
        "{name}的{item}很好看。",
    ],
}


def filler(n: int, seed: int) -> list[str]:
    """`n` general sentences over the names and items of both splits (see FILLER)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lang = ("en", "zh")[i % 2]
        split = rng.choice(("train", "test"))
        t = FRAMES[lang][split]
        out.append(rng.choice(FILLER[lang]).format(name=rng.choice(t["names"]), item=rng.choice(t["items"])))
    return out


def _operation(rng: random.Random, x: int) -> tuple[str, int, int] | None:
    """(op, operand, result) keeping results integral and in 1..MAX_VALUE; None if no operation fits."""
    choices = list(OPS)
    rng.shuffle(choices)
    for op in choices:
        if op == "add":
            n = rng.randint(1, 20)
            if x + n <= MAX_VALUE:
                return op, n, x + n
        elif op == "sub" and x > 2:
            n = rng.randint(1, min(x - 1, 20))
            return op, n, x - n
        elif op == "mul":
            n = rng.randint(2, 5)
            if x * n <= MAX_VALUE:
                return op, n, x * n
        elif op == "div":
            divisors = [d for d in range(2, 6) if x % d == 0]
            if divisors:
                n = rng.choice(divisors)
                return op, n, x // n
    return None


def _step_sentence(lang: str, connective: str, phrase: str) -> str:
    return connective + phrase if lang == "zh" else f"{connective} {phrase}"


# a split that holds out one factor only (the others from training): what a failure to transfer is due to
FACTORS = ("frames", "connectives", "names", "starts")
HELD_OUT_IN_TEST = ("frames", "starts")  # the `test` split's held-out factors; `test-all` holds out every factor


def _sources(split: str) -> dict[str, str]:
    """Which pool each factor comes from: "train", "test" (HELD_OUT_IN_TEST), "test-all" (every factor) or
    "test-FACTOR" (that one only)."""
    if split in ("train", "test-all"):
        return dict.fromkeys(FACTORS, split.removesuffix("-all"))
    if split == "test":
        return {f: "test" if f in HELD_OUT_IN_TEST else "train" for f in FACTORS}
    factor = split.removeprefix("test-")
    if factor not in FACTORS:
        raise ValueError(f"unknown split {split!r}")
    return {f: "test" if f == factor else "train" for f in FACTORS}


def make_problem(rng: random.Random, steps: int, lang: str, split: str) -> dict:
    src = _sources(split)
    t = FRAMES[lang][src["frames"]]
    joins = FRAMES[lang][src["connectives"]]
    who = FRAMES[lang][src["names"]]
    name, item = rng.choice(who["names"]), rng.choice(who["items"])
    a = rng.choice([v for v in range(2, 31) if (v in TEST_STARTS) == (src["starts"] == "test")])
    q = [rng.choice(t["start"]).format(name=name, a=a, item=item)]
    sol = []
    x = a
    for _ in range(steps):
        op = _operation(rng, x)
        if op is None:
            return make_problem(rng, steps, lang, split)
        kind, n, r = op
        phrase = rng.choice(PHRASES[lang][kind])
        q.append(_step_sentence(lang, rng.choice(joins["connectives"]), phrase).format(name=name, n=n, item=item))
        x_first = kind not in COMMUTATIVE or rng.random() < 0.5
        sol.append(SOLUTION[kind].format(n=n, x=x, r=r) if x_first else SOLUTION[kind].format(n=x, x=n, r=r))
        x = r
    q.append(rng.choice(t["ask"]).format(name=name, item=item))
    sep = " " if lang == "en" else ""
    return {"question": sep.join(q), "answer": "\n".join(sol + [f"#### {x}"]), "steps": steps, "lang": lang, "final": x}


def generate(n: int, split: str, seed: int, max_steps: int = 3) -> list[dict]:
    """`n` problems, step counts 1..max_steps and the two languages in equal shares, shuffled."""
    from decimal import Decimal

    from skyloom.eval.math import grade

    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = make_problem(rng, 1 + i % max_steps, ("en", "zh")[(i // max_steps) % 2], split)
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
