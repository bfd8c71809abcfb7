"""lm-evaluation-harness runs skyloom's numbers: the shipped task YAMLs + `--model skyloom` on the same files give
the prompts, log-likelihoods, completions and scores of `skyloom eval bench` / `skyloom eval ppl`.

One lm-eval run (module-scoped, a tiny random checkpoint, tiny slices) covers the C-Eval group (every subject of
tests/data, macro mean), an MMLU subject with fewer dev exemplars than shots, GSM8K 8-shot and the Table-6 rolling
perplexity group; the skyloom side runs the real commands with `--output` / `--log-samples`.
"""

from __future__ import annotations

import csv
import json
import os

import pytest
import yaml

pytest.importorskip("lm_eval")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from skyloom.cli import main  # noqa: E402
from skyloom.eval.lm_eval_tasks import tasks_dir  # noqa: E402
from skyloom.eval.lm_eval_tasks.build import TABLE6_TASKS, task_files  # noqa: E402
from tests.conftest import FIXTURE_DATA  # noqa: E402
from tests.test_eval_fixtures import tiny_checkpoint  # noqa: E402
from tests.train_helpers import single_thread  # noqa: E402, F401

LIMIT = 2  # questions per subject / problems / documents per domain, on both sides
MMLU_SUBJECT = "abstract_algebra"
CEVAL_SUBJECTS = ["college_chemistry", "college_programming", "computer_network"]  # answers vary: acc is not 0 or 1
TABLE6_TEXTS = {
    "zh_tech": ["芯片制造工艺不断进步，晶体管的尺寸越来越小。" * 4, "开源软件改变了开发者协作的方式。"],
    "zh_movie": ["这部电影的剧情紧凑，演员的表演也很出色。" * 3, "导演用长镜头讲述了一个家庭的故事。"],
    "zh_government": ["政府发布了关于促进就业的新政策。" * 5, "各地要加强基础设施建设。"],
    "zh_game": ["这款游戏的画面精美，玩法也很有创意。" * 4, "玩家可以在开放世界中自由探索。"],
    "zh_finance": ["央行宣布下调存款准备金率。" * 6, "股市今天小幅上涨，成交量有所放大。"],
    "zh_general": ["今天天气很好，我们去公园散步吧。" * 5, "Mixed text with English words 和中文。"],
}


def _write_mmlu(root):
    """Headerless MMLU CSVs: 2 dev exemplars (fewer than the 5 shots: both sides use 2), 2 test questions."""
    for split, n in (("dev", 2), ("test", LIMIT)):
        (root / split).mkdir(parents=True)
        with open(root / split / f"{MMLU_SUBJECT}_{split}.csv", "w", newline="", encoding="utf-8") as f:
            for i in range(n):
                csv.writer(f).writerow(
                    [f"Find {i} + {split}.", str(i), str(i + 1), "x, y", "none", "ABCD"[(i + 1) % 4]]
                )
    return root


def _fixture_ceval_group(folder):
    """The shipped skyloom_ceval group narrowed to a few subjects (its aggregation settings kept), as `eval bench
    --subjects` narrows skyloom's run."""
    group = yaml.safe_load((tasks_dir() / "ceval" / "_skyloom_ceval.yaml").read_text(encoding="utf-8"))
    chosen = {f"skyloom_ceval_{s}" for s in CEVAL_SUBJECTS}
    assert chosen <= set(group["task"])
    group["group"], group["task"] = "fixture_ceval", [t for t in group["task"] if t in chosen]
    folder.mkdir()
    (folder / "fixture_ceval.yaml").write_text(yaml.safe_dump(group), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, single_thread):
    """(skyloom's results and samples, lm-eval's results) on the same files."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from skyloom.eval.lm_eval_run import register_model

    tmp = tmp_path_factory.mktemp("lm-eval-bridge")
    ckpt = str(tiny_checkpoint())
    mmlu = _write_mmlu(tmp / "mmlu")
    table6 = tmp / "table6"
    table6.mkdir()
    for stem, texts in TABLE6_TEXTS.items():
        (table6 / f"{stem}.jsonl").write_text(
            "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8"
        )
    ceval, gsm8k = FIXTURE_DATA / "ceval", FIXTURE_DATA / "gsm8k"
    ppl, samples = tmp / "ppl.json", tmp / "samples"
    common = ["--model", ckpt, "--limit", str(LIMIT), "--no-progress"]
    ours = {}
    for tasks in (
        ["--task", f"ceval:{ceval}", "--subjects", ",".join(CEVAL_SUBJECTS)],
        ["--task", f"mmlu:{mmlu}", "--task", f"gsm8k:{gsm8k}", "--max-new-tokens", "16"],
    ):
        assert (
            main(["eval", "bench", *common, *tasks, "--log-samples", str(samples), "--output", str(tmp / "bench.json")])
            == 0
        )
        ours.update(json.loads((tmp / "bench.json").read_text(encoding="utf-8"))["tasks"])
    data = [x for name, stem in TABLE6_TASKS.items() for x in ("--data", f"{name}={table6 / stem}.jsonl")]
    assert main(["eval", "ppl", *common, "--window", "rolling", "--max-tokens", "16", *data, "--output", str(ppl)]) == 0

    register_model()
    metadata = {"ceval_dir": str(ceval), "mmlu_dir": str(mmlu), "gsm8k_dir": str(gsm8k), "table6_dir": str(table6)}
    manager = TaskManager(
        include_path=[str(tasks_dir()), str(_fixture_ceval_group(tmp / "groups"))],
        include_defaults=False,
        metadata=metadata,
    )
    out = simple_evaluate(
        model="skyloom",
        model_args={"checkpoint": ckpt, "max_tokens": 16, "progress": False},
        tasks=["fixture_ceval", f"skyloom_mmlu_{MMLU_SUBJECT}", "skyloom_gsm8k", "skyloom_table6"],
        task_manager=manager,
        device="cpu",
        limit=LIMIT,
        gen_kwargs="max_gen_toks=16",
        log_samples=True,
    )
    logged = {
        p.stem: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()] for p in samples.iterdir()
    }
    return ours, logged, json.loads(ppl.read_text(encoding="utf-8")), out


def _by_id(records):
    return {r["id"]: r for r in records}


def test_multiple_choice_prompts_loglikelihoods_and_scores_match_eval_bench(runs):
    ours, logged, _, out = runs
    results, samples = out["results"], out["samples"]
    assert sorted(ours["ceval"]["subjects"]) == CEVAL_SUBJECTS
    for benchmark, subjects in (("ceval", list(ours["ceval"]["subjects"])), ("mmlu", [MMLU_SUBJECT])):
        records = _by_id(logged[benchmark])
        for subject in subjects:
            task = f"skyloom_{benchmark}_{subject}"
            assert len(samples[task]) == LIMIT
            for sample in samples[task]:
                mine = records[f"{subject}/{sample['doc_id']}"]
                contexts = {context for context, _ in sample["arguments"]}
                assert contexts == {mine["context"]}  # byte-identical prompt, exemplars included
                assert [c for _, c in sample["arguments"]] == mine["continuations"]
                lls = [r[0][0] for r in sample["resps"]]
                assert lls == pytest.approx(mine["loglikelihoods"], abs=1e-4)
            assert results[task]["acc,none"] == pytest.approx(ours[benchmark]["subjects"][subject]["acc"])
            assert results[task]["acc_norm,none"] == pytest.approx(ours[benchmark]["subjects"][subject]["acc_norm"])
    # the group's mean over subjects is eval bench's headline acc (not a trivial 0 or 1 on these slices)
    assert 0 < ours["ceval"]["overall"]["acc"] < 1
    assert results["fixture_ceval"]["acc,none"] == pytest.approx(ours["ceval"]["overall"]["acc"])
    assert (
        ours["mmlu"]["shots"] == 2 and "Find 1 + dev." in samples[f"skyloom_mmlu_{MMLU_SUBJECT}"][0]["arguments"][0][0]
    )


def test_gsm8k_prompts_completions_and_accuracy_match_eval_bench(runs):
    ours, logged, _, out = runs
    records = logged["gsm8k"]
    samples = out["samples"]["skyloom_gsm8k"]
    assert len(samples) == len(records) == LIMIT
    for sample, mine in zip(samples, records):
        context, gen_kwargs = sample["arguments"][0]
        assert context == mine["context"] and context.count("Question: ") == 9  # 8 exemplars + the question
        assert gen_kwargs["max_gen_toks"] == 16 and sample["resps"][0][0] == mine["completion"]
    assert out["results"]["skyloom_gsm8k"]["exact_match,none"] == pytest.approx(ours["gsm8k"]["overall"]["acc"])


def test_table6_rolling_bits_per_byte_match_eval_ppl(runs):
    _, _, ppl, out = runs
    results = out["results"]
    for name in TABLE6_TASKS:
        domain = ppl["domains"][name]
        assert domain["tokens"] > 16  # several windows per document: the window rule is exercised
        assert results[f"skyloom_ppl_{name}"]["bits_per_byte,none"] == pytest.approx(domain["bpb"], rel=1e-6)
    assert results["skyloom_table6"]["bits_per_byte,none"] == pytest.approx(ppl["average"]["bpb"], rel=1e-6)


def test_shipped_task_files_are_the_generated_ones():
    shipped = {
        p.relative_to(tasks_dir()).as_posix(): p.read_text(encoding="utf-8")
        for p in tasks_dir().rglob("*")
        if p.is_file() and (p.suffix == ".yaml" or p.name.endswith("_yaml"))
    }
    assert shipped == task_files()  # regenerate with: python -m skyloom.eval.lm_eval_tasks.build


def test_adapter_registration_keeps_lm_eval_models_and_adds_the_task_folder():
    from lm_eval.api.registry import get_model

    from skyloom.eval.lm_eval_model import SkyloomEvalLM
    from skyloom.eval.lm_eval_run import register_model, with_task_folder

    register_model()
    assert get_model("skyloom") is SkyloomEvalLM
    assert get_model("hf").__name__ == "HFLM"  # registering did not hide lm-eval's own models
    assert with_task_folder(["--model", "skyloom"]) == ["--model", "skyloom", "--include_path", str(tasks_dir())]
    assert with_task_folder(["--include_path=mine", "--tasks", "x"]) == ["--include_path=mine", "--tasks", "x"]


def test_missing_benchmark_folder_says_how_to_point_at_it(tmp_path):
    from skyloom.eval.lm_eval_tasks.sources import ceval_dataset

    with pytest.raises(FileNotFoundError, match="--metadata ceval_dir=DIR"):
        ceval_dataset("law", ceval_dir=str(tmp_path / "nowhere"))


def test_wrapper_turns_input_errors_into_a_named_error(monkeypatch, capsys):
    import lm_eval.__main__

    from skyloom.eval import lm_eval_run

    def missing_folder():
        raise FileNotFoundError("skyloom_ceval: no /nowhere; point lm-eval at your copy with --metadata ceval_dir=DIR")

    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", missing_folder)
    monkeypatch.setattr("sys.argv", ["lm-eval"])
    assert lm_eval_run.main(["--model", "skyloom", "--tasks", "skyloom_ceval"]) == 2
    assert capsys.readouterr().err.startswith("skyloom: error: skyloom_ceval: no /nowhere")
