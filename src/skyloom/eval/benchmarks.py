"""The Table 11 / Figure 1 benchmarks — BoolQ, PIQA, WinoGrande, ARC-Easy/Challenge, HellaSwag, RACE, TriviaQA —
with lm-evaluation-harness 0.4.13's prompts, byte for byte (tests/test_benchmark_tasks.py builds lm-eval's own task
objects from its YAMLs on the same files and compares the requests).

Prompt (lm-eval's plain-text rendering): K exemplars, each `text + " " + answer + "\\n\\n"`, then the item's text;
each option is scored as the continuation `" " + choice` (target delimiter " ", few-shot delimiter "\\n\\n", no
description). WinoGrande is scored partially: one context per option (the sentence up to the blank with the option
filled in) and the same continuation (the rest of the sentence) after each; an exemplar is the gold option's context
+ " " + the continuation. TriviaQA generates greedily after "Question: …?\\nAnswer:", stops at "\\n", "." or ",",
strips the answer and compares it, lower-cased and without ASCII punctuation, with each alias (lm-eval's
`exact_match` with ignore_case and ignore_punctuation, any alias counting).

acc = the option with the highest log-likelihood is gold; acc_norm divides each log-likelihood by the option's
length in characters (without the delimiter, as lm-eval does) — reported where lm-eval reports it (PIQA, ARC,
HellaSwag, and the two common layouts).

Few-shot exemplars (lm-eval's default sampler with its default seed): one `random.Random(1234)` per run, and for
each scored item in order `rnd.sample(pool, K)`, the pool being the task's training split (RACE has only a test
split and, as in lm-eval, draws from the scored split itself, without removing the item). So exemplars match
lm-eval's for the same files, `--limit` and K. A pool smaller than K gives every item the whole pool (the result
records the shots used and warns; lm-eval would refuse).

Files: `--task NAME:PATH`, PATH a folder with the splits (the dataset's own names or a Hugging Face export:
`validation.jsonl`, `train.jsonl`, …; see SPLITS) or one file to score (exemplars then come from the training file
beside it). Row layouts: skyloom/eval/benchmark_files.py.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from skyloom.eval.benchmark_files import Item, read_items
from skyloom.eval.lm import LanguageModel
from skyloom.eval.multiple_choice import requests_sha256, split_pair
from skyloom.eval.tasks import Task, TaskOptions

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
FEWSHOT_SEED = 1234  # lm-eval's DEFAULT_OTHER_SEED (--fewshot_random_seed)
TRIVIAQA_STOP = ("\n", ".", ",")

# split → the names its file has in the releases and in Hugging Face exports (matched case-insensitively,
# after a dataset prefix such as "hellaswag_" or "ARC-Easy-"), with .jsonl, .json or .jsonl.gz
SPLIT_NAMES = {
    "train": ("train", "train_xl"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}


@dataclass(frozen=True)
class BenchmarkSpec:
    """One lm-eval task: which reader, which splits, which metrics."""

    name: str
    dataset: str  # benchmark_files reader
    eval_split: str
    fewshot_split: str | None  # None: the scored split itself (RACE)
    norm: bool  # lm-eval reports acc_norm
    has_test_split: bool  # lm-eval's YAML names a test split; without one its sampler drops the item from its exemplars
    prefixes: tuple[str, ...] = ("",)
    subfolders: tuple[str, ...] = ()
    generation: bool = False


SPECS = {
    "boolq": BenchmarkSpec("boolq", "boolq", "validation", "train", norm=False, has_test_split=False),
    "piqa": BenchmarkSpec("piqa", "piqa", "validation", "train", norm=True, has_test_split=False),
    "winogrande": BenchmarkSpec("winogrande", "winogrande", "validation", "train", norm=False, has_test_split=False),
    "arc_easy": BenchmarkSpec(
        "arc_easy",
        "arc",
        "test",
        "train",
        norm=True,
        has_test_split=True,
        prefixes=("", "arc-easy-"),
        subfolders=("ARC-Easy",),
    ),
    "arc_challenge": BenchmarkSpec(
        "arc_challenge",
        "arc",
        "test",
        "train",
        norm=True,
        has_test_split=True,
        prefixes=("", "arc-challenge-"),
        subfolders=("ARC-Challenge",),
    ),
    "hellaswag": BenchmarkSpec(
        "hellaswag", "hellaswag", "validation", "train", norm=True, has_test_split=False, prefixes=("", "hellaswag_")
    ),
    "race": BenchmarkSpec("race", "race", "test", None, norm=False, has_test_split=True, subfolders=("high",)),
    "triviaqa": BenchmarkSpec(
        "triviaqa", "triviaqa", "validation", "train", norm=False, has_test_split=False, generation=True
    ),
}


def split_file(folder: Path, spec: BenchmarkSpec, split: str) -> Path:
    """The file (or, RACE, folder) of `split` in `folder`, under the release's or Hugging Face's name."""
    names = SPLIT_NAMES.get(split, (split,))
    wanted = {f"{p}{n}{ext}" for p in spec.prefixes for n in names for ext in (".jsonl", ".json", ".jsonl.gz")}
    for where in (folder, *(folder / s for s in spec.subfolders)):
        if not where.is_dir():
            continue
        for entry in sorted(where.iterdir()):
            if entry.is_file() and entry.name.lower() in wanted:
                return entry
        if spec.dataset == "race":  # the release: RACE/test/high/*.txt
            for n in names:
                for sub in (where / n / "high", where / n):
                    if sub.is_dir():
                        return sub
    raise FileNotFoundError(
        f"{spec.name}: no {split} split in {folder} (looked for {', '.join(sorted(wanted))}"
        + (f" and sub-folders {', '.join(spec.subfolders)}" if spec.subfolders else "")
        + ")"
    )


def sample_exemplars(
    pool: Sequence[Item], items: Sequence[Item], shots: int, exclude_item: bool, seed: int = FEWSHOT_SEED
) -> list[list[Item]]:
    """Exemplars per item, drawn as lm-eval's default ContextSampler draws them: one Random(seed) for the run and,
    per item in order, `rnd.sample(pool, K)` — or, when the task has no test split (`exclude_item`: lm-eval then
    passes the item as `eval_doc`), `rnd.sample(pool, K + 1)` with rows equal to the item dropped, the first K kept
    (resampled from the pool without them if fewer remain). Sampling indices picks the same positions as sampling
    docs. A pool smaller than K gives each item the whole pool in sampled order (lm-eval would refuse)."""
    if shots <= 0 or not pool:
        return [[] for _ in items]
    rnd = random.Random(seed)
    out = []
    for item in items:
        if not exclude_item:
            out.append([pool[j] for j in rnd.sample(range(len(pool)), min(shots, len(pool)))])
            continue
        drawn = rnd.sample(range(len(pool)), min(shots + 1, len(pool)))
        kept = [j for j in drawn if pool[j].row != item.row][:shots]
        if len(kept) < min(shots, len(pool)):
            others = [j for j in range(len(pool)) if pool[j].row != item.row]
            kept = rnd.sample(others, min(shots, len(others)))
        out.append([pool[j] for j in kept])
    return out


def exemplar_text(item: Item) -> str:
    """One solved exemplar: the gold context (partial scoring) or the text, the delimiter, the answer, a blank line."""
    if item.partial:
        return item.contexts[item.gold] + TARGET_DELIMITER + item.targets[0] + FEWSHOT_DELIMITER
    return item.contexts[0] + TARGET_DELIMITER + item.targets[item.gold] + FEWSHOT_DELIMITER


def build_requests(item: Item, exemplars: Sequence[Item]) -> list[tuple[str, str]]:
    """(context, continuation) per option — lm-eval's `construct_requests` arguments for the item."""
    prefix = "".join(exemplar_text(e) for e in exemplars)
    if item.partial:
        return [(prefix + c, TARGET_DELIMITER + item.targets[0]) for c in item.contexts]
    return [(prefix + item.contexts[0], TARGET_DELIMITER + t) for t in item.targets]


def normalize_answer(text: str) -> str:
    """lm-eval's exact_match with ignore_case + ignore_punctuation: lower-cased, ASCII punctuation removed."""
    return text.lower().translate(str.maketrans("", "", string.punctuation))


def triviaqa_correct(completion: str, aliases: Sequence[str]) -> bool:
    """The stripped completion equals some alias after normalisation (lm-eval: remove_whitespace, take_first)."""
    answer = normalize_answer(completion.strip())
    return any(answer == normalize_answer(a) for a in aliases)


@dataclass
class _Data:
    spec: BenchmarkSpec
    eval_file: Path
    fewshot_file: Path | None
    items: list[Item]
    exemplars: list[list[Item]]
    shots: int  # used (≤ requested)
    truncated: int = 0
    prompt_ids: list[list[int]] = field(default_factory=list)


class BenchmarkTask(Task):
    """One of SPECS: log-likelihood multiple choice, or (TriviaQA) greedy generation with exact match."""

    default_shots = 0
    default_path = None

    def __init__(self, name: str):
        self.spec = SPECS[name]
        self.name = name
        self.kind = "generation" if self.spec.generation else "multiple_choice"

    def load(self, path: Path, options: TaskOptions) -> _Data:
        spec = self.spec
        if path.is_dir():
            eval_file = split_file(path, spec, options.split or spec.eval_split)
            folder = path
        elif path.exists():
            eval_file, folder = path, path.parent
        else:
            raise FileNotFoundError(f"{spec.name}: no such file or folder: {path}")
        items = read_items(spec.dataset, eval_file, options.limit)
        pool: list[Item] = []
        fewshot_file: Path | None = None
        if options.shots > 0:
            fewshot_file = eval_file if spec.fewshot_split is None else split_file(folder, spec, spec.fewshot_split)
            pool = read_items(spec.dataset, fewshot_file)
        exemplars = sample_exemplars(pool, items, options.shots, exclude_item=not spec.has_test_split)
        return _Data(spec, eval_file, fewshot_file, items, exemplars, min((len(e) for e in exemplars), default=0))

    def requests(self, lm: LanguageModel, data: _Data, options: TaskOptions) -> Any:
        """Generation: the prompts. Multiple choice: (records, (context ids, continuation ids) per option)."""
        prompts = [build_requests(item, ex) for item, ex in zip(data.items, data.exemplars)]
        if self.spec.generation:
            texts = [p[0][0] for p in prompts]
            data.prompt_ids = lm.encode_batch(texts)
            data.truncated = sum(len(ids) > lm.max_length - options.max_new_tokens for ids in data.prompt_ids)
            return texts
        pairs = [pair for p in prompts for pair in p]
        context_ids = lm.encode_batch([c for c, _ in pairs])
        whole_ids = lm.encode_batch([c + t for c, t in pairs])
        encoded = []
        for (_, cont), ids, whole in zip(pairs, context_ids, whole_ids):
            cont_ids = split_pair(ids, whole, lambda c=cont: lm.encode(c))
            data.truncated += int(len(ids) + len(cont_ids) - 1 > lm.max_length)
            encoded.append((ids, cont_ids))
        records = []
        for item, p in zip(data.items, prompts):
            contexts = [c for c, _ in p]
            records.append(
                {
                    "id": f"{self.name}/{item.index}",
                    "where": item.where,
                    "context": contexts if item.partial else contexts[0],
                    "continuations": [t for _, t in p] if not item.partial else [p[0][1]],
                    "gold": item.gold,
                }
            )
        return records, encoded

    def score(self, lm: LanguageModel, data: _Data, requests: Any, options: TaskOptions) -> list[dict[str, Any]]:
        if self.spec.generation:
            return self._score_generation(lm, data, requests, options)
        records, encoded = requests
        scores = lm.loglikelihood(encoded, desc=f"{self.name} ({len(records)} items)")
        start = 0
        for r, item in zip(records, data.items):
            n = max(len(item.contexts), len(item.targets))
            lls = np.array([s[0] for s in scores[start : start + n]])
            start += n
            # lm-eval's completion_len: the characters of doc_to_choice (the contexts, for partial scoring)
            choices = item.contexts if item.partial else item.targets
            lengths = np.array([float(len(c)) for c in choices])
            r["loglikelihoods"] = lls.tolist()
            r["prediction"] = int(np.argmax(lls))
            r["correct"] = r["prediction"] == item.gold
            if self.spec.norm:
                r["prediction_norm"] = int(np.argmax(lls / lengths))
                r["correct_norm"] = r["prediction_norm"] == item.gold
        return records

    def _score_generation(
        self, lm: LanguageModel, data: _Data, prompts: list[str], options: TaskOptions
    ) -> list[dict[str, Any]]:
        completions = lm.generate(
            data.prompt_ids,
            max_new_tokens=options.max_new_tokens,
            stop=TRIVIAQA_STOP,
            sampling=options.sampling,
            desc=f"{self.name} ({len(prompts)} questions)",
        )
        records = []
        for item, prompt, completion in zip(data.items, prompts, completions):
            records.append(
                {
                    "id": f"{self.name}/{item.index}",
                    "where": item.where,
                    "context": prompt,
                    "continuations": [],
                    "completion": completion,
                    "prediction": completion.strip(),
                    "answers": list(item.targets),
                    "correct": triviaqa_correct(completion, item.targets),
                }
            )
        return records

    def aggregate(self, data: _Data, records: list[dict[str, Any]], options: TaskOptions) -> dict[str, Any]:
        n = len(records)
        overall: dict[str, Any] = {"acc": sum(r["correct"] for r in records) / n, "n": n}
        if records and "correct_norm" in records[0]:
            overall["acc_norm"] = sum(r["correct_norm"] for r in records) / n
        warnings = []
        if data.shots < options.shots:
            warnings.append(
                f"{self.name}: the few-shot pool {data.fewshot_file} holds fewer than the {options.shots} exemplars "
                f"asked for (besides the item scored); items were scored with as few as {data.shots}"
            )
        result: dict[str, Any] = {
            "task": self.name,
            "kind": self.kind,
            "path": str(data.eval_file),
            "fewshot_path": None if data.fewshot_file is None else str(data.fewshot_file),
            "fewshot_sampler": f"lm-eval default: random.Random({FEWSHOT_SEED}).sample(pool, K) per item in order",
            "shots": data.shots,
            "shots_requested": options.shots,
            "limit": options.limit,
            "overall": overall,
            "subjects": {self.name: {**{k: v for k, v in overall.items()}, "shots": data.shots}},
            "prompt_sha256": requests_sha256(records),
            "truncated_prompts": data.truncated,
            "warnings": warnings,
        }
        if self.spec.generation:
            result["generation"] = {
                "max_new_tokens": options.max_new_tokens,
                "stop": list(TRIVIAQA_STOP),
                "sampling": vars(options.sampling) if options.sampling else "greedy",
            }
        else:
            result["chance"] = float(np.mean([1 / max(len(i.contexts), len(i.targets)) for i in data.items]))
        return result
