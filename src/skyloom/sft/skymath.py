"""`skyloom skymath`: self-compare fine-tuning in rounds (our reading of SkyMath; docs/sft.md).

Round r (1-based), starting from the base model (r = 1) or round r−1's fine-tuned model:
  a. sample    K solutions per training question at `sample.temperature` (batched; seeded) → samples.jsonl
  b. grade     final answer vs the reference, every <<a=b>> checked                         (in samples.jsonl)
  c. data      data/reference.jsonl   the references (in the answer style of the released model)
               data/own.jsonl         own correct solutions with all annotations right, distinct by equation
                                      sequence (and from the reference's), at most `own_per_question`
               data/compare.jsonl     self-compare examples (skyloom/sft/compare.py), ≤ `compare_per_question`
  d. fine-tune `skyloom sft`'s engine on the three files with weights `mix.*` (0 switches a kind off)
  e. evaluate  every `eval.sets` entry zero-shot in the chat template → eval.json, rounds.jsonl, metrics.jsonl
Each stage writes its output atomically and is skipped when present, and the fine-tune resumes from its
checkpoints, so `--resume` continues a killed run where it stopped. Round 0 in the records is the base model.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyloom.config import ConfigError
from skyloom.progress import draws_bar

KINDS = ("reference", "own", "compare")


@dataclass
class SampleConfig:
    k: int = 4
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 256
    questions: int | None = None  # sample on the first N training questions (default: all)
    seed: int = 0

    def validate(self) -> None:
        for name in ("k", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be ≥ 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ConfigError("temperature", f"must be ≥ 0, got {self.temperature}")


@dataclass
class MixConfig:
    """Weight of each kind of data (times each example is used per epoch; 0 = off)."""

    reference: float = 1.0
    own: float = 1.0
    compare: float = 1.0
    own_per_question: int = 4
    compare_per_question: int = 1

    def validate(self) -> None:
        if min(self.reference, self.own, self.compare) < 0:
            raise ConfigError("reference", "mix weights must be ≥ 0")
        if self.reference + self.own + self.compare <= 0:
            raise ConfigError("reference", "at least one kind of data needs a positive weight")


@dataclass
class EvalSetConfig:
    path: str
    limit: int | None = None
    group_by: str | None = None  # a record field to report accuracy by (e.g. steps, lang)


@dataclass
class EvalConfig:
    sets: dict[str, EvalSetConfig] = field(default_factory=dict)
    max_new_tokens: int = 256
    at_start: bool = True  # evaluate the base model as round 0


@dataclass
class SkyMathConfig:
    base: str
    train_data: str  # JSONL with question + annotated reference answer ("#### N" or "答案是 N")
    sft: dict[str, Any]  # an `skyloom sft` config without `base` / `data.sources` (template, layout, train, …)
    rounds: int = 1
    train_limit: int | None = None
    tokenizer: str | None = None
    sample: SampleConfig = field(default_factory=SampleConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    answer_style: str = "skymath"  # skymath: end with "So, the answer is N." | keep: the reference as written
    out_dir: str | None = None

    def validate(self) -> None:
        if self.rounds < 1:
            raise ConfigError("rounds", f"must be ≥ 1, got {self.rounds}")
        if self.answer_style not in ("skymath", "keep"):
            raise ConfigError("answer_style", "choose skymath or keep")
        for key in ("base", "data"):
            if key in self.sft and (key == "base" or "sources" in (self.sft.get("data") or {})):
                raise ConfigError(f"sft.{key}", "set by skymath itself (base per round, data.sources from the mix)")


# ---- helpers ----------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_training_questions(path: str | Path, limit: int | None) -> list[dict[str, Any]]:
    from skyloom.eval.math import gold_value

    out = []
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"train_data: no {path}")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            where = f"{path}:{number}"
            if (
                not isinstance(r, dict)
                or not isinstance(r.get("question"), str)
                or not isinstance(r.get("answer"), str)
            ):
                raise ValueError(f"{where}: expected question + answer strings")
            out.append({"question": r["question"], "answer": r["answer"], "gold": gold_value(r, where)})
            if limit and len(out) >= limit:
                break
    return out


def load_lm(checkpoint: Path, max_new_tokens: int):
    from skyloom.eval.backends import SkyloomLM
    from skyloom.model.checkpoint import load_model
    from skyloom.tokenizer.loading import TextTokenizer

    model = load_model(checkpoint)
    return SkyloomLM(
        model,
        TextTokenizer.from_dir(checkpoint),
        name=str(checkpoint),
        progress=draws_bar(sys.stderr),  # a bar on a terminal; the rounds print their own lines
        batch_tokens=16384,
        max_batch_size=64,
    )


def usable_template(lm, name: str) -> str:
    """`name` when the model's tokenizer has the template's tokens, else `plain` (a base model before its first
    fine-tune has no [USER]/[BOT]/[SEP] yet)."""
    from skyloom.eval.math import _LMTokens
    from skyloom.tokenizer.chat import get_template

    tokens = _LMTokens(lm)
    return name if all(tokens.token_to_id(t) is not None for t in get_template(name).added_tokens) else "plain"


# ---- stages -----------------------------------------------------------------------------------------------


def sample_solutions(lm, questions, cfg: SampleConfig, template: str, round_no: int) -> list[dict[str, Any]]:
    """K samples per question in one batched `generate` call; graded."""
    from skyloom.eval.lm import Sampling
    from skyloom.eval.math import _LMTokens, grade
    from skyloom.tokenizer.chat import Message, TemplateEncoder, get_template

    chat = get_template(usable_template(lm, template))
    enc = TemplateEncoder(chat, _LMTokens(lm))
    qs = questions[: cfg.questions] if cfg.questions else questions
    prompts = []
    for q in qs:
        ids = enc.encode([Message("user", q["question"])], add_generation_prompt=True)[0]
        prompts += [ids] * cfg.k
    sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed * 1009 + round_no)
    texts = lm.generate(
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        stop=tuple(chat.stop_tokens) + ("<|endoftext|>",),
        sampling=sampling,
        desc=f"round {round_no}: sampling {len(prompts)}",
    )
    out = []
    for i, text in enumerate(texts):
        qi = i // cfg.k
        g = grade(text, qs[qi]["gold"])
        out.append(
            {
                "q": qi,
                "sample": i % cfg.k,
                "text": text,
                "correct": g.correct,
                "annotations_ok": g.annotations_ok,
                "accepted": g.accepted,
                "prediction": None if g.predicted is None else format(g.predicted, "f"),
            }
        )
    return out


def build_round_data(questions, samples, mix: MixConfig, answer_style: str) -> tuple[dict[str, list], dict[str, Any]]:
    """(records per kind, statistics) from graded samples."""
    from skyloom.sft.compare import compare, compare_prompt, compare_target, equation_key, is_chinese, skymath_style

    by_q: dict[int, list[dict]] = {}
    for s in samples:
        by_q.setdefault(s["q"], []).append(s)
    data: dict[str, list] = {k: [] for k in KINDS}
    kinds_of_wrong: dict[str, int] = {}
    for qi, q in enumerate(questions):
        ref = skymath_style(q["answer"], q["gold"]) if answer_style == "skymath" else q["answer"]
        data["reference"].append({"question": q["question"], "answer": ref})
        seen = {equation_key(q["answer"])}
        own = compares = 0
        for s in by_q.get(qi, []):
            if s["accepted"]:
                key = equation_key(s["text"])
                if key not in seen and own < mix.own_per_question:
                    seen.add(key)
                    own += 1
                    data["own"].append({"question": q["question"], "answer": s["text"].strip(), "q": qi})
            elif compares < mix.compare_per_question and s["text"].strip():
                c = compare(s["text"], ref, q["gold"])
                kinds_of_wrong[c.kind] = kinds_of_wrong.get(c.kind, 0) + 1
                compares += 1
                data["compare"].append(
                    {
                        "question": compare_prompt(q["question"], s["text"].strip(), ref),
                        "answer": compare_target(c, q["gold"], is_chinese(q["question"])),
                        "q": qi,
                        "wrong_step": c.wrong_step,
                        "kind": c.kind,
                    }
                )
    n = len(samples)
    stats = {
        "questions": len(questions),
        "samples": n,
        "sample_accuracy": sum(s["correct"] for s in samples) / n if n else None,
        "accepted": sum(s["accepted"] for s in samples),
        "correct_but_bad_annotation": sum(s["correct"] and not s["annotations_ok"] for s in samples),
        "questions_solved": len({s["q"] for s in samples if s["accepted"]}),
        "examples": {k: len(v) for k, v in data.items()},
        "compare_kinds": kinds_of_wrong,
    }
    return data, stats


def evaluate_round(checkpoint: Path, cfg: SkyMathConfig, template: str) -> dict[str, Any]:
    from skyloom.eval.math import evaluate_math

    lm = load_lm(checkpoint, cfg.eval.max_new_tokens)
    out = {}
    for name, s in cfg.eval.sets.items():
        result, records = evaluate_math(
            lm,
            Path(s.path),
            task=name,
            template=usable_template(lm, template),
            limit=s.limit,
            max_new_tokens=cfg.eval.max_new_tokens,
            group_by=s.group_by,
        )
        out[name] = {
            "acc": result["overall"]["acc"],
            "n": result["overall"]["n"],
            "annotations_ok": result["overall"]["annotations_ok"],
            "subjects": result["subjects"],
            "template": result["template"],
            "correct": [r["correct"] for r in records],
        }
    return out


# ---- the run ----------------------------------------------------------------------------------------------


def round_sft_config(cfg: SkyMathConfig, base: Path, data_dir: Path, first: bool):
    """The round's `skyloom sft` config. After round 1 the base is a fine-tuned checkpoint whose own tokenizer
    already holds the template's tokens, so `tokenizer:` is used for round 1 only (rows are never re-grown)."""
    from skyloom.sft.config import build_sft_config

    raw = json.loads(json.dumps(cfg.sft))
    raw["base"] = str(base)
    raw.pop("tokenizer", None)
    if first and cfg.tokenizer:
        raw["tokenizer"] = cfg.tokenizer
    data = raw.setdefault("data", {})
    weights = {"reference": cfg.mix.reference, "own": cfg.mix.own, "compare": cfg.mix.compare}
    data["sources"] = {
        k: {"path": str(data_dir / f"{k}.jsonl"), "weight": w}
        for k, w in weights.items()
        if w > 0 and (data_dir / f"{k}.jsonl").is_file() and (data_dir / f"{k}.jsonl").stat().st_size
    }
    raw.setdefault("export_hf", False)
    return build_sft_config(raw)


def run_skymath(cfg: SkyMathConfig, run_dir: str | Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or continue) every round; returns the per-round records (also in RUN_DIR/rounds.jsonl)."""
    from skyloom.sft.runner import base_checkpoint, run_sft

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    template = (cfg.sft.get("data") or {}).get("template", "skywork")
    questions = load_training_questions(cfg.train_data, cfg.train_limit)
    rounds_file, metrics_file = run_dir / "rounds.jsonl", run_dir / "metrics.jsonl"
    done = {r["round"]: r for r in _read_jsonl(rounds_file)} if rounds_file.is_file() else {}
    current = base_checkpoint(cfg.base)
    steps_total = 0

    def record(round_no: int, checkpoint: Path, extra: dict[str, Any]) -> dict[str, Any]:
        nonlocal steps_total
        rdir = run_dir / f"round_{round_no:02d}"
        rdir.mkdir(parents=True, exist_ok=True)
        if (rdir / "eval.json").is_file():
            results = json.loads((rdir / "eval.json").read_text(encoding="utf-8"))
        else:
            results = evaluate_round(checkpoint, cfg, template) if cfg.eval.sets else {}
            _write_json(rdir / "eval.json", results)
        rec = {
            "round": round_no,
            "checkpoint": str(checkpoint),
            "step": steps_total,
            **extra,
            "eval": {k: {kk: vv for kk, vv in v.items() if kk != "correct"} for k, v in results.items()},
            "time": time.time(),
        }
        with open(rounds_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        with open(metrics_file, "a", encoding="utf-8") as f:
            for name, v in results.items():
                f.write(
                    json.dumps(
                        {
                            "kind": "bench",
                            "step": steps_total,
                            "round": round_no,
                            "task": name,
                            "score": v["acc"],
                            "n": v["n"],
                            "time": time.time(),
                        }
                    )
                    + "\n"
                )
        summary = ", ".join(f"{k} {100 * v['acc']:.1f}%" for k, v in results.items())
        log(f"round {round_no}: {summary or 'no eval sets'}")
        return rec

    out = []
    if cfg.eval.at_start:
        out.append(done[0] if 0 in done else record(0, current, {"kind": "base"}))
    for r in range(1, cfg.rounds + 1):
        rdir = run_dir / f"round_{r:02d}"
        if r in done:
            current = Path(done[r]["checkpoint"])
            steps_total = done[r]["step"]
            out.append(done[r])
            continue
        rdir.mkdir(parents=True, exist_ok=True)
        samples_file, data_dir = rdir / "samples.jsonl", rdir / "data"
        need_samples = cfg.mix.own > 0 or cfg.mix.compare > 0
        if need_samples and not samples_file.is_file():
            log(
                f"round {r}: sampling {cfg.sample.k} solutions for "
                f"{min(len(questions), cfg.sample.questions or len(questions))} questions from {current}"
            )
            _write_jsonl(
                samples_file,
                sample_solutions(load_lm(current, cfg.sample.max_new_tokens), questions, cfg.sample, template, r),
            )
        stats_file = rdir / "data_stats.json"
        if not stats_file.is_file():
            samples = _read_jsonl(samples_file) if need_samples else []
            data, stats = build_round_data(questions, samples, cfg.mix, cfg.answer_style)
            for kind, records in data.items():
                _write_jsonl(data_dir / f"{kind}.jsonl", records)
            _write_json(stats_file, stats)
            log(
                f"round {r}: data {stats['examples']} (sample accuracy "
                f"{stats['sample_accuracy'] if stats['sample_accuracy'] is None else round(stats['sample_accuracy'], 3)})"
            )
        stats = json.loads(stats_file.read_text(encoding="utf-8"))
        usable = {k: n for k, n in stats["examples"].items() if n and getattr(cfg.mix, k) > 0}
        if not usable:
            raise ValueError(
                f"round {r}: no training data — the kinds switched on ({', '.join(k for k in KINDS if getattr(cfg.mix, k) > 0)}) "
                f"produced no examples ({stats['examples']}); see {stats_file}"
            )
        sft_cfg = round_sft_config(cfg, current, data_dir, first=r == 1)
        sft_dir = rdir / "sft"
        resume = (sft_dir / "checkpoints").is_dir()
        if not resume:  # killed before its first checkpoint: start the fine-tune afresh
            (sft_dir / "metrics.jsonl").unlink(missing_ok=True)
        summary = run_sft(sft_cfg, sft_dir, resume=resume, log=log)
        if summary["status"] != "finished":
            raise KeyboardInterrupt(
                f"round {r} fine-tuning interrupted at step {summary['steps']}; continue with --resume"
            )
        steps_total += summary["steps"]
        current = Path(summary["checkpoint"])
        out.append(
            record(
                r,
                current,
                {"kind": "sft", "data": stats, "sft_steps": summary["steps"], "sft_tokens": summary["tokens"]},
            )
        )
    return out
