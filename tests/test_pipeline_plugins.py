"""Plug-in pipeline steps: a user's datatrove filter from a `.py` file named in the recipe (`type: python`), and a
global step registered from another module, both accounted for in the funnel like built-in steps."""

from __future__ import annotations

import gzip
import json
import os

import pytest
from datatrove.pipeline.base import PipelineStep

from skyloom.cli import main
from skyloom.data.pipeline.base import REASON_KEY
from skyloom.data.pipeline.builder import _REGISTERED, GlobalContext, GlobalStages, StepType, register_step
from tests.test_pipeline_support import read_outputs, write_jsonl, write_yaml

USER_STEPS = '''
import os

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter


class DropShouting(BaseFilter):
    """Drops documents written in capitals (with a reason) and, without one, documents naming `banned`."""

    name = "user: no shouting"

    def __init__(self, banned: str = "zzz", min_upper: float = 0.5):
        super().__init__()
        self.banned, self.min_upper = banned, min_upper

    def filter(self, doc):
        letters = [c for c in doc.text if c.isalpha()]
        if letters and sum(c.isupper() for c in letters) / len(letters) >= self.min_upper:
            return False, "shouting"
        return self.banned not in doc.text


class TagAndDropSpam(PipelineStep):
    """Not a filter: tags every document with the process that saw it and swallows the ones containing 'spam'."""

    def run(self, data, rank=0, world_size=1):
        for doc in data:
            if "spam" in doc.text:
                continue
            doc.metadata["tagged"] = os.getpid()
            yield doc


class NotAStep:
    pass
'''


def _corpus(tmp_path):
    records = []
    for i in range(24):
        text = f"Document number {i} talks about rivers and hills in a calm voice."
        if i % 6 == 1:
            text = text.upper()
        elif i % 6 == 2:
            text += " It mentions the banned word forbidden."
        elif i % 6 == 3:
            text += " Buy spam now."
        records.append({"id": f"d{i}", "text": text, "src": "a" if i % 2 else "b"})
    write_jsonl(tmp_path / "in" / "a.jsonl", [r for r in records if r["src"] == "a"])
    write_jsonl(tmp_path / "in" / "b.jsonl", [r for r in records if r["src"] == "b"])
    return records


def _inputs(tmp_path):
    return [
        {"name": "a", "path": str(tmp_path / "in" / "a.jsonl"), "shard": "records"},
        {"name": "b", "path": str(tmp_path / "in" / "b.jsonl"), "shard": "records"},
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_user_filter_from_a_py_file_drops_with_reasons_and_balances_the_funnel(tmp_path, workers):
    """The class travels to worker processes by name (the file is not on their PYTHONPATH)."""
    records = _corpus(tmp_path)
    plugin = tmp_path / "user_steps.py"
    plugin.write_text(USER_STEPS)
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "output_dir": str(out),
            "executor": {"tasks": 2, "workers": workers},
            "inputs": _inputs(tmp_path),
            "steps": [
                {
                    "type": "python",
                    "class": f"{plugin}:DropShouting",
                    "args": {"banned": "forbidden"},
                    "name": "no_shouting",
                },
                {"type": "python", "class": f"{plugin}:TagAndDropSpam"},
            ],
        },
    )
    assert main(["data", "run", str(cfg)]) == 0
    kept = read_outputs(out, "main")
    assert {d["id"] for d in kept} == {r["id"] for i, r in enumerate(records) if i % 6 not in (1, 2, 3)}
    pids = {d["metadata"]["tagged"] for d in kept}
    assert (pids == {os.getpid()}) if workers == 1 else (os.getpid() not in pids)

    stats = json.loads((out / "stats.json").read_text())
    assert stats["checks"]["rows_balanced"] and stats["checks"]["rows_chained"]
    rows = {r["step"]: r for r in stats["steps"]}
    shout = rows["no_shouting"]
    assert shout["docs_in"] == 24 and shout["docs_out"] == 16
    # a reason the filter gave, and the class name where it gave none
    assert {k: v["docs"] for k, v in shout["dropped"].items()} == {"shouting": 4, "DropShouting": 4}
    assert shout["by_source"]["a"]["docs_in"] + shout["by_source"]["b"]["docs_in"] == 24
    spam = rows["TagAndDropSpam"]
    assert (spam["docs_in"], spam["docs_out"]) == (16, 12) and spam["dropped"] == {
        "TagAndDropSpam": {"docs": 4, "chars": spam["chars_in"] - spam["chars_out"]}
    }
    funnel = (out / "funnel.md").read_text()
    assert "| no_shouting | 24 | 16 | 8 |" in funnel and "shouting 4" in funnel
    assert "| TagAndDropSpam | 16 | 12 | 4 |" in funnel


def test_user_filter_takes_sources(tmp_path):
    _corpus(tmp_path)
    plugin = tmp_path / "user_steps.py"
    plugin.write_text(USER_STEPS)
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "output_dir": str(out),
            "inputs": _inputs(tmp_path),
            "steps": [
                {"type": "python", "class": f"{plugin}:DropShouting", "args": {"banned": "forbidden"}, "sources": ["a"]}
            ],
        },
    )
    assert main(["data", "run", str(cfg)]) == 0
    row = {r["step"]: r for r in json.loads((out / "stats.json").read_text())["steps"]}["DropShouting"]
    # source b holds the documents naming the banned word: untouched, since the step is scoped to source a
    assert row["by_source"]["a"]["docs_dropped"] == 4 and row["by_source"]["b"]["docs_dropped"] == 0


@pytest.mark.parametrize(
    "step, key, message",
    [
        ({"class": "no_such_module_xyz:Thing"}, "steps[0].class", "cannot import module"),
        ({"class": "{plugin}:Missing"}, "steps[0].class", "has no 'Missing'"),
        ({"class": "{plugin}:NotAStep"}, "steps[0].class", "not a subclass of datatrove.pipeline.base.PipelineStep"),
        ({"class": "{plugin}"}, "steps[0].class", "expected 'package.module:Name'"),
        ({"class": "{plugin}:DropShouting", "args": {"bannned": "x"}}, "steps[0].args", "bannned"),
        ({"args": {}}, "steps[0].class", "is required"),
        ({"class": "{plugin}:TagAndDropSpam", "sources": ["a"]}, "sources", "only filters take sources"),
    ],
)
def test_bad_plugin_steps_are_refused_naming_the_key(tmp_path, capsys, step, key, message):
    _corpus(tmp_path)
    plugin = tmp_path / "user_steps.py"
    plugin.write_text(USER_STEPS)
    step = {k: v.format(plugin=plugin) if isinstance(v, str) else v for k, v in step.items()}
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {"output_dir": str(out), "inputs": _inputs(tmp_path), "steps": [{"type": "python", **step}]},
    )
    assert main(["data", "run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyloom: error: ") and key in err and message in err, err
    assert "Traceback" not in err
    assert not (out / "plan.json").exists()


class _CaseSignature(PipelineStep):
    """Stage 1 of a toy global step: each task writes the lower-cased texts it saw, in order."""

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data, rank=0, world_size=1):
        texts = [doc.text.lower() for doc in data]
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, f"{rank:05d}.json"), "w") as f:
            json.dump(texts, f)
        return
        yield


class _CaseFind(PipelineStep):
    """Stage 2 (one task): every text seen before (in rank order), ignoring case, is to be removed."""

    def __init__(self, sigs: str, out: str):
        super().__init__()
        self.sigs, self.out = sigs, out

    def run(self, data=None, rank=0, world_size=1):
        seen, remove = set(), {}
        for name in sorted(os.listdir(self.sigs)):
            with open(os.path.join(self.sigs, name)) as f:
                for i, text in enumerate(json.load(f)):
                    if text in seen:
                        remove.setdefault(name, []).append(i)
                    seen.add(text)
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "remove.json"), "w") as f:
            json.dump(remove, f)
        return
        yield


class _CaseFilter(PipelineStep):
    """Stage 3: drops what stage 2 listed for this task, with its reason."""

    def __init__(self, out: str):
        super().__init__()
        self.out = out

    def run(self, data, rank=0, world_size=1):
        with open(os.path.join(self.out, "remove.json")) as f:
            remove = set(json.load(f).get(f"{rank:05d}.json", []))
        for i, doc in enumerate(data):
            if i in remove:
                doc.metadata[REASON_KEY] = "case_duplicate"
                continue
            yield doc


class CaseDedupConfig:
    pass


def _case_dedup_stages(cfg, ctx: GlobalContext) -> GlobalStages:
    sigs, out = os.path.join(ctx.work_dir, "sigs"), os.path.join(ctx.work_dir, "remove")
    return GlobalStages(_CaseSignature(sigs), [("find", [_CaseFind(sigs, out)], 1)], _CaseFilter(out))


@pytest.fixture
def case_dedup():
    from dataclasses import make_dataclass

    register_step(
        "case_dedup",
        StepType(
            make_dataclass("CaseDedupConfig", []),
            "global",
            None,
            "case_duplicate",
            "drop copies that differ only in case",
            stages=_case_dedup_stages,
        ),
    )
    yield
    _REGISTERED.pop("case_dedup", None)


def test_a_registered_global_step_is_picked_up(tmp_path, case_dedup):
    records = [{"id": f"d{i}", "text": f"Text {i % 5} about things."} for i in range(10)]
    records += [{"id": "loud", "text": "TEXT 3 ABOUT THINGS."}]
    write_jsonl(tmp_path / "in" / "docs.jsonl", records)
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "output_dir": str(out),
            "executor": {"tasks": 2},
            "keep_rejects": True,
            "inputs": [{"path": str(tmp_path / "in" / "docs.jsonl"), "shard": "records", "source": "s"}],
            "steps": [{"type": "case_dedup"}],
        },
    )
    assert main(["data", "run", str(cfg)]) == 0
    kept = [d["text"].lower() for d in read_outputs(out, "main")]
    assert sorted(kept) == sorted(f"text {i} about things." for i in range(5))
    stats = json.loads((out / "stats.json").read_text())
    row = {r["step"]: r for r in stats["steps"]}["case_dedup"]
    assert row["docs_in"] == 11 and row["docs_dropped"] == 6 and set(row["dropped"]) == {"case_duplicate"}
    assert stats["checks"]["rows_balanced"] and stats["checks"]["rows_chained"]
    plan = json.loads((out / "plan.json").read_text())
    assert [s["name"] for s in plan["stages"]] == [
        "01_documents",
        "01_documents.case_dedup.find",
        "02_documents",
        "99_report",
    ]
    rejected = [json.loads(line) for f in (out / "rejects").rglob("*.jsonl.gz") for line in gzip.open(f, "rt")]
    assert len(rejected) == 6 and {r["metadata"]["drop_reason"] for r in rejected} == {"case_duplicate"}


def test_register_step_refuses_a_step_without_its_builder():
    with pytest.raises(ValueError, match="needs stages"):
        register_step("broken", StepType(CaseDedupConfig, "global"))
    assert "broken" not in _REGISTERED


def test_every_builtin_step_type_is_complete():
    """A built-in step either builds a filter or returns its stages: no `if type ==` branch left in the builder."""
    from skyloom.data.pipeline.builder import step_types

    for name, st in step_types().items():
        assert (st.make if st.kind == "doc" else st.stages) is not None, name


def test_a_plugin_module_in_the_working_directory_is_found(tmp_path, monkeypatch):
    """`module:Class` without a path: the working directory (where the recipe is run) is searched too."""
    from skyloom.config import ConfigError
    from skyloom.plugins import load_class

    (tmp_path / "my_cwd_steps.py").write_text(USER_STEPS)
    monkeypatch.chdir(tmp_path)
    cls = load_class("my_cwd_steps:DropShouting", "steps[0].class", PipelineStep)
    assert cls.__name__ == "DropShouting"
    with pytest.raises(ConfigError, match="steps\\[0\\].class.*not a subclass"):
        load_class("my_cwd_steps:NotAStep", "steps[0].class", PipelineStep)


def test_datatrove_builtin_filter_and_formatter_run_as_python_steps(tmp_path):
    """datatrove's own RegexFilter (a BaseFilter) and PIIFormatter (a plain PipelineStep) named by import path."""
    records = _corpus(tmp_path)
    for r in records[::4]:
        r["text"] += " Write to someone@mail.example.com."
    write_jsonl(tmp_path / "in" / "a.jsonl", [r for r in records if r["src"] == "a"])
    write_jsonl(tmp_path / "in" / "b.jsonl", [r for r in records if r["src"] == "b"])
    out = tmp_path / "out"
    cfg = write_yaml(
        tmp_path / "p.yaml",
        {
            "output_dir": str(out),
            "executor": {"tasks": 2},
            "inputs": _inputs(tmp_path),
            "steps": [
                {"type": "python", "class": "datatrove.pipeline.filters:RegexFilter", "args": {"regex_exp": "spam"}},
                {
                    "type": "python",
                    "class": "datatrove.pipeline.formatters:PIIFormatter",
                    "args": {"email_replacement": "x@example.org"},
                },
            ],
        },
    )
    assert main(["data", "run", str(cfg)]) == 0
    kept = {d["id"]: d["text"] for d in read_outputs(out, "main")}
    assert set(kept) == {r["id"] for i, r in enumerate(records) if i % 6 != 3}
    mailed = {r["id"] for r in records[::4]} & set(kept)
    assert mailed and all(kept[i].endswith("Write to x@example.org.") for i in mailed)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["checks"]["rows_balanced"] and stats["checks"]["rows_chained"]
    rows = {r["step"]: r for r in stats["steps"]}
    assert (rows["RegexFilter"]["docs_in"], rows["RegexFilter"]["docs_out"]) == (24, 20)
    assert rows["RegexFilter"]["dropped"]["RegexFilter"]["docs"] == 4
    assert (rows["PIIFormatter"]["docs_in"], rows["PIIFormatter"]["docs_out"]) == (20, 20)
