"""The Table 11 / Figure 1 benchmarks (skyloom/eval/benchmarks.py): readers for every layout, requests byte-identical
to lm-eval 0.4.13's own task objects (built from its shipped YAMLs, dataset pointed at tests/data/benchmarks, no
network), scores against lm-eval's `process_results` and a hand computation, TriviaQA's normalisation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from skyloom.cli import main
from skyloom.eval.benchmark_files import RowError, read_items
from skyloom.eval.benchmarks import SPECS, TRIVIAQA_STOP, BenchmarkTask, build_requests, split_file, triviaqa_correct
from skyloom.eval.tasks import TaskOptions, get_task
from tests.conftest import FIXTURE_DATA
from tests.test_eval_fixtures import tiny_checkpoint, tiny_model, tokenizer
from tests.train_helpers import single_thread  # noqa: F401

DATA = FIXTURE_DATA / "benchmarks"
LM_EVAL_YAML = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "race": "race/race.yaml",
    "triviaqa": "triviaqa/default.yaml",
}


class ScriptedLM:
    """Just enough of a LanguageModel to build requests (bytes as tokens) and return given log-likelihoods."""

    max_length = 1 << 20

    def __init__(self, lls=None):
        self.lls, self.completions, self.stop = lls, None, None

    def encode(self, text):
        return list(text.encode("utf-8"))

    def encode_batch(self, texts):
        return [self.encode(t) for t in texts]

    def loglikelihood(self, requests, desc=""):
        return [(float(x), False) for x in self.lls[: len(requests)]]

    def generate(self, prompts, max_new_tokens=256, stop=(), sampling=None, desc=""):
        self.stop = tuple(stop)
        return self.completions[: len(prompts)]


def _lm_eval_task(name: str, shots: int):
    """lm-eval's ConfigurableTask from its own YAML (utils, process_docs and all), reading the fixture folder."""
    pytest.importorskip("lm_eval")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets
    import lm_eval
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(Path(lm_eval.__file__).parent / "tasks" / LM_EVAL_YAML[name])
    splits = {}
    for split in ("train", "validation", "test"):
        path = DATA / name / f"{split}.jsonl"
        if path.is_file():
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
            splits[split] = datasets.Dataset.from_list(rows)
    config["custom_dataset"] = lambda **_: datasets.DatasetDict(splits)
    config["num_fewshot"] = shots
    task = ConfigurableTask(config=config)
    task.set_fewshot_seed(1234)  # what simple_evaluate does (fewshot_random_seed's default)
    return task


@pytest.mark.parametrize("name", list(SPECS))
def test_requests_are_byte_identical_to_lm_eval_and_scores_agree(name):
    """Every item of the fixture, 0- and 2-shot (exemplars drawn by lm-eval's seeded sampler, in item order): the same
    (context, continuation) pairs — or, TriviaQA, the same prompt and stop strings — and, fed the same
    log-likelihoods, the same acc / acc_norm as lm-eval's process_results."""
    ours = BenchmarkTask(name)
    for shots in (0, 2):
        theirs = _lm_eval_task(name, shots)
        data = ours.load(DATA / name, TaskOptions(shots=shots))
        docs = list(theirs.eval_docs)
        assert len(docs) == len(data.items) >= 3
        lls = np.random.default_rng(shots).normal(-8, 3, size=8).round(3)
        for i, (doc, item, exemplars) in enumerate(zip(docs, data.items, data.exemplars)):
            context = theirs.fewshot_context(doc, shots)
            instances = theirs.construct_requests(doc=doc, ctx=context, metadata=(name, i, 1))
            if SPECS[name].generation:
                prompt, kwargs = instances.arguments
                assert [(prompt, " " + item.targets[0])] == build_requests(item, exemplars)[:1]
                assert tuple(kwargs["until"]) == TRIVIAQA_STOP
                continue
            assert [inst.arguments for inst in instances] == build_requests(item, exemplars)
            n = len(instances)
            expected = theirs.process_results(doc, [(x, False) for x in lls[:n]])
            mine = ScriptedLM(lls)
            one = ours.score(mine, _one(data, i), ours.requests(mine, _one(data, i), TaskOptions()), TaskOptions())[0]
            assert one["correct"] == bool(expected["acc"])
            assert ("acc_norm" in expected) == ("correct_norm" in one) == SPECS[name].norm
            if "acc_norm" in expected:
                assert one["correct_norm"] == bool(expected["acc_norm"])
        if shots:
            used = {tuple(e.where for e in ex) for ex in data.exemplars}
            assert len(used) > 1  # the sampler really draws per item (not one fixed set)


def _one(data, i):
    from dataclasses import replace

    return replace(data, items=[data.items[i]], exemplars=[data.exemplars[i]], truncated=0)


@pytest.mark.parametrize(
    ("name", "release", "hf"),
    [
        ("boolq", "boolq-release", "boolq/validation.jsonl"),
        ("piqa", "piqa-release", "piqa/validation.jsonl"),
        ("winogrande", "winogrande-release", "winogrande/validation.jsonl"),
        ("arc_easy", "arc-release", "arc_easy/test.jsonl"),
        ("hellaswag", "hellaswag-release", "hellaswag/validation.jsonl"),
        ("race", "race-release", "race/test.jsonl"),
        ("race", "race-hf", "race/test.jsonl"),
        ("triviaqa", "triviaqa-release/verified-wikipedia-dev.json", "triviaqa/validation.jsonl"),
    ],
)
def test_release_layouts_read_as_the_hugging_face_layout(name, release, hf):
    """The datasets' own files (labels files, nested ARC questions, int HellaSwag labels, RACE per-article JSON files
    and per-question rows, TriviaQA's {"Data": …}) give the items lm-eval's Hugging Face copies give."""
    spec = SPECS[name]
    path = DATA / release
    eval_path = split_file(path, spec, spec.eval_split) if path.is_dir() else path
    released = read_items(spec.dataset, eval_path)
    reference = read_items(spec.dataset, DATA / hf)
    assert [(i.contexts, i.targets, i.gold) for i in released] == [(i.contexts, i.targets, i.gold) for i in reference]


def test_race_release_files_are_read_in_numeric_order(tmp_path):
    for number in (10, 2):
        problem = {"questions": ["Q?"], "options": [["a", "b", "c", "d"]], "answers": ["A"], "article": f"art {number}"}
        (tmp_path / f"{number}.txt").write_text(json.dumps(problem), encoding="utf-8")
    assert [i.contexts[0][:14] for i in read_items("race", tmp_path)] == ["Article: art 2", "Article: art 1"]


def test_common_layouts_and_partial_scoring():
    """{"query","choices","gold"}: the query is the prompt; {"context_options","continuation","gold"}: one context
    per option and the continuation after each (WinoGrande's partial scoring)."""
    query = read_items("piqa", DATA / "common" / "query.jsonl")
    assert build_requests(query[0], []) == [("Question: 2 + 2 =\nAnswer:", f" {c}") for c in ("3", "4", "5")]
    partial = read_items("winogrande", DATA / "common" / "partial.jsonl")[0]
    assert partial.partial and partial.gold == 0
    assert build_requests(partial, [query[1]]) == [
        ("The sky is blue\n\nThe cup fell because the cup", " was slippery."),
        ("The sky is blue\n\nThe cup fell because the table", " was slippery."),
    ]


def test_a_folder_without_the_split_names_what_was_looked_for(tmp_path):
    (tmp_path / "validation.jsonl").write_text(json.dumps({"query": "q", "choices": ["a", "b"], "gold": 0}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"boolq: no train split in .*train\.jsonl"):
        BenchmarkTask("boolq").load(tmp_path, TaskOptions(shots=1))  # exemplars need the training split
    assert BenchmarkTask("boolq").load(tmp_path, TaskOptions()).shots == 0  # zero-shot needs only the scored one


@pytest.mark.parametrize(
    ("dataset", "row", "message"),
    [
        ("boolq", {"question": "q", "label": 1}, "missing key 'passage'"),
        ("piqa", {"goal": "g", "sol1": "a", "sol2": "b", "label": 2}, "key 'label' = 2"),
        ("winogrande", {"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}, "no blank '_'"),
        ("arc", {"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "B"}, "key 'answerKey'"),
        ("hellaswag", {"ctx_a": "a", "ctx_b": "b", "activity_label": "x", "endings": ["e"], "label": "3"}, "'label'"),
        ("race", {"article": "a", "problems": "[{'question': 'q', 'options': ['1','2','3','4'], 'answer': 'E'}]"}, "E"),
        ("triviaqa", {"question": "q", "answer": {"value": "x"}}, "'aliases'"),
        ("piqa", {"query": "q", "choices": ["a"], "gold": 1}, "key 'gold'"),
    ],
)
def test_bad_rows_name_file_line_and_key(tmp_path, dataset, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"query": "fine", "choices": ["x", "y"], "gold": 0}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(RowError, match=rf"bad\.jsonl:2.*{message}"):
        read_items(dataset, path)


def test_acc_and_acc_norm_from_the_models_loglikelihoods(single_thread):  # noqa: F811
    """PIQA 1-shot on the tiny model: each option's log-likelihood summed by hand from `score` over the whole sequence
    (continuation tokens as they fall in context + continuation), acc and acc_norm (÷ the choice's characters, no
    delimiter) recomputed from them."""
    from skyloom.eval.backends import SkyloomLM

    lm = SkyloomLM(tiny_model(seed=3), tokenizer(), progress=False)
    result, records = get_task("piqa").evaluate(lm, DATA / "piqa", TaskOptions(shots=1))
    task = BenchmarkTask("piqa")
    data = task.load(DATA / "piqa", TaskOptions(shots=1))
    correct = correct_norm = 0
    for item, exemplars, record in zip(data.items, data.exemplars, records):
        lls = []
        for context, continuation in build_requests(item, exemplars):
            context_ids, whole = lm.encode(context), lm.encode(context + continuation)
            k = len(whole) - len(context_ids)
            lls.append(float(lm.score([whole])[0][-k:].sum()))
        assert record["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        correct += int(np.argmax(lls)) == item.gold
        correct_norm += int(np.argmax(np.array(lls) / [len(t) for t in item.targets])) == item.gold
    assert result["overall"] == pytest.approx({"acc": correct / 3, "acc_norm": correct_norm / 3, "n": 3})
    assert result["shots"] == 1 and result["kind"] == "multiple_choice" and len(result["prompt_sha256"]) == 64


def test_acc_norm_divides_by_the_choice_without_its_delimiter(tmp_path):
    """Choices "ab" / "abcde" with log-likelihoods -2.1 / -5.0: ÷2 vs ÷5 picks "abcde"; ÷3 vs ÷6 would pick "ab"."""
    path = tmp_path / "query.jsonl"
    path.write_text(json.dumps({"query": "q", "choices": ["ab", "abcde"], "gold": 1}) + "\n", encoding="utf-8")
    task = BenchmarkTask("piqa")
    data = task.load(path, TaskOptions())
    lm = ScriptedLM([-2.1, -5.0])
    record = task.score(lm, data, task.requests(lm, data, TaskOptions()), TaskOptions())[0]
    assert record["prediction"] == 0 and record["prediction_norm"] == 1 and record["correct_norm"]


@pytest.mark.parametrize(
    ("completion", "aliases", "correct"),
    [
        (" Mars", ["Mars"], True),  # the leading space of the continuation is stripped
        ("MARS!", ["Mars"], True),  # case and punctuation ignored
        ("U.S.A", ["USA", "United States"], True),
        ("Tōkyō", ["tōkyō"], True),  # lower-cased beyond ASCII, as numpy's char.lower
        ("the Mars", ["Mars"], False),  # no article stripping (lm-eval's triviaqa has none)
        ("Washington  DC", ["Washington DC"], False),  # whitespace inside is kept
        ("", ["Mars"], False),
    ],
)
def test_triviaqa_normalisation_agrees_with_lm_eval(completion, aliases, correct):
    assert triviaqa_correct(completion, aliases) is correct
    metrics = pytest.importorskip("lm_eval.api.metrics")
    theirs = metrics.exact_match_hf_evaluate(
        predictions=[completion.strip()] * len(aliases), references=aliases, ignore_case=True, ignore_punctuation=True
    )
    assert bool(theirs["exact_match"] > 0) is correct


def test_triviaqa_generation_scores_completions():
    task = BenchmarkTask("triviaqa")
    data = task.load(DATA / "triviaqa", TaskOptions(shots=1))
    lm = ScriptedLM()
    lm.completions = [" tokyo", "1945", " Silver"]
    result, records = task.evaluate(lm, DATA / "triviaqa", TaskOptions(shots=1))
    assert lm.stop == TRIVIAQA_STOP
    assert [r["correct"] for r in records] == [True, True, False]
    assert result["overall"]["acc"] == pytest.approx(2 / 3) and result["kind"] == "generation"
    assert records[0]["context"].endswith("Question: What is the capital of Japan?\nAnswer:")
    assert data.items[0].targets[0] == "Tokyo"


def test_eval_bench_runs_the_tasks_and_refuses_bad_rows(tmp_path, capsys, single_thread):  # noqa: F811
    """End to end through the CLI: a folder per task, the shots used and a warning when the pool is short; a bad row
    is `skyloom: error: FILE:LINE: …` with exit 2."""
    out = tmp_path / "bench.json"
    ckpt = str(tiny_checkpoint())
    common = ["eval", "bench", "--model", ckpt, "--limit", "2", "--no-progress", "--max-new-tokens", "4"]
    tasks = ["--task", f"winogrande:{DATA / 'winogrande'}", "--task", f"race:{DATA / 'race-release'}"]
    assert main([*common, *tasks, "--shots", "5", "--output", str(out)]) == 0
    results = json.loads(out.read_text(encoding="utf-8"))["tasks"]
    # 4 training sentences, one of them the first scored item (lm-eval's sampler leaves it out): 3 for that item
    assert results["winogrande"]["shots"] == 3 and results["winogrande"]["shots_requested"] == 5
    assert "fewer than the 5" in results["winogrande"]["warnings"][0]
    assert results["race"]["overall"]["n"] == 2 and "acc_norm" not in results["race"]["overall"]
    bad = tmp_path / "validation.jsonl"
    bad.write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n', encoding="utf-8")
    capsys.readouterr()
    assert main([*common, "--task", f"piqa:{bad}"]) == 2
    assert f"skyloom: error: {bad}:1: missing key 'label'" in capsys.readouterr().err
