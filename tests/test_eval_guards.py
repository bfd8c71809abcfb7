"""Nothing silently wrong in evaluation and shard consumers (issue 14, eval items).

Shards packed with another tokenizer or for a bigger vocabulary are refused by every consumer (eval `--data`,
training validation sets, training sources) with one message; ids beyond the vocabulary name the shard file;
a set with nothing to score or a NaN is an error naming the set, never a number; `--output` never holds bare
NaN; `eval bench` records the shots it used; the transformers backend never unpickles weights unless asked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from skyloom.cli import main
from skyloom.data.shards import ShardMismatch, finalize_index, write_shard
from skyloom.eval.backends import load_lm
from tests.test_eval_fixtures import VOCAB, tiny_checkpoint, tiny_hf_dir, tokenizer
from tests.train_helpers import TINY_MODEL, build_run_config

OTHER_TOKENIZER = "0123456789abcdef"


def _shards(
    directory: Path,
    docs: list[list[int]],
    vocab_size: int = VOCAB,
    tokenizer_id: str | None = None,
    eos_id: int | None = 2,
) -> Path:
    """A token-shard directory; by default packed with the test tokenizer (its fingerprint recorded)."""
    fingerprint = tokenizer().tokenizer_id if tokenizer_id is None else tokenizer_id
    write_shard(
        directory,
        "000",
        [np.asarray(d) for d in docs],
        vocab_size=vocab_size,
        source=directory.name,
        tokenizer=fingerprint,
        eos_id=eos_id,
    )
    finalize_index(directory)
    return directory


def _poke(directory: Path, position: int, token: int) -> None:
    """Change one token of the packed .bin after packing (what a corrupt or hand-edited shard looks like)."""
    path = directory / "shard_000.bin"
    data = np.fromfile(path, dtype="<u2")
    data[position] = token
    data.tofile(path)


def _ppl(capsys, data: str, *extra: str, model: Path | None = None) -> tuple[int, str]:
    rc = main(
        [
            "eval",
            "ppl",
            "--model",
            str(model or tiny_checkpoint()),
            "--data",
            data,
            "--max-tokens",
            "64",
            "--no-progress",
            "--device",
            "cpu",
            *extra,
        ]
    )
    return rc, capsys.readouterr().err


# ---- item 4 / 11: shards of another tokenizer or vocabulary --------------------------------------------------


@pytest.mark.parametrize("backend", ["skyloom", "hf"])
def test_eval_ppl_refuses_shards_of_another_tokenizer(tmp_path, capsys, backend):
    if backend == "hf":
        pytest.importorskip("transformers")
    d = _shards(tmp_path / "other", [[5, 6, 7, 8, 2]] * 3, tokenizer_id=OTHER_TOKENIZER)
    model = tiny_checkpoint() if backend == "skyloom" else tiny_hf_dir()
    rc, err = _ppl(capsys, f"x={d}", "--backend", backend, model=model)
    assert rc == 2
    assert str(d) in err and OTHER_TOKENIZER in err and tokenizer().tokenizer_id in err
    assert "Traceback" not in err


def test_eval_ppl_refuses_a_bigger_vocabulary_instead_of_index_error(tmp_path, capsys):
    d = _shards(tmp_path / "big", [[5, 4000, 4999, 2]] * 2, vocab_size=5000, tokenizer_id="")
    rc, err = _ppl(capsys, f"big={d}")
    assert rc == 2 and str(d) in err and "5,000" in err and f"{VOCAB:,}" in err


def test_eval_token_ids_beyond_the_vocabulary_name_the_shard_file(tmp_path, capsys):
    d = _shards(tmp_path / "edited", [[5, 6, 7, 2], [9, 10, 11, 12, 2]])
    _poke(d, 6, VOCAB + 7)  # document 1, after packing
    rc, err = _ppl(capsys, f"e={d}")
    assert rc == 2 and str(d / "shard_000.bin") in err and str(VOCAB + 7) in err


def _validation_set(path: Path) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), text_key="text", max_tokens=64, fallback=[])


def test_validation_sets_refuse_shards_of_another_tokenizer(tmp_path):
    from skyloom.train.validation import ValidationMonitor

    d = _shards(tmp_path / "val", [list(range(3, 40)) + [2]] * 4, vocab_size=64, tokenizer_id=OTHER_TOKENIZER)
    run_tokenizer = SimpleNamespace(tokenizer_id="fedcba9876543210", vocab_size=64, source=tmp_path / "tok")
    with pytest.raises(
        ShardMismatch,
        match=rf"validation.sets.held_out: {d} was packed with tokenizer "
        rf"{OTHER_TOKENIZER}.*fedcba9876543210",
    ):
        ValidationMonitor({"held_out": _validation_set(d)}, 8, run_tokenizer, vocab_size=64)


def test_validation_set_ids_beyond_the_vocabulary_are_named(tmp_path):
    from skyloom.train.validation import ValidationMonitor

    d = _shards(tmp_path / "val", [list(range(3, 40)) + [2]] * 4, vocab_size=100, tokenizer_id="")
    with pytest.raises(ShardMismatch, match=r"vocabulary of 100.*more than the model's 64"):
        ValidationMonitor({"v": _validation_set(d)}, 8, None, vocab_size=64)
    _shards(d, [list(range(3, 40)) + [2]] * 4, vocab_size=64, tokenizer_id="")
    _poke(d, 20, 80)
    with pytest.raises(ShardMismatch, match=rf"{d / 'shard_000.bin'}.*token id 80.*vocabulary of 64"):
        ValidationMonitor({"v": _validation_set(d)}, 8, None, vocab_size=64)


def test_training_sources_refuse_ids_beyond_the_vocabulary_by_shard_file(tmp_path):
    from skyloom.train.trainer import build_mixture_loader

    vocab = TINY_MODEL["vocab_size"]
    d = _shards(tmp_path / "src", [list(range(3, 200)) + [2]] * 4, vocab_size=vocab, tokenizer_id="")
    cfg = build_run_config(
        {
            "model": dict(TINY_MODEL),
            "data": {"seq_len": 16, "sources": {"s": {"path": str(d)}}},
            "train": {"global_batch_tokens": 64, "micro_batch_size": 4, "max_steps": 2},
        }
    )
    build_mixture_loader(cfg).next_windows()  # intact: fine
    _poke(d, 0, vocab + 3)
    for i in range(1, 4 * 198, 17):
        _poke(d, i, vocab + 3)  # every window holds one
    with pytest.raises(ShardMismatch, match=rf"{d / 'shard_000.bin'}.*token id {vocab + 3}"):
        build_mixture_loader(cfg).next_windows()
    other = SimpleNamespace(tokenizer_id="fedcba9876543210")
    _shards(d, [list(range(3, 200)) + [2]] * 4, vocab_size=vocab, tokenizer_id=OTHER_TOKENIZER)
    with pytest.raises(ShardMismatch, match=rf"data.sources.s: {d} was packed with tokenizer {OTHER_TOKENIZER}"):
        build_mixture_loader(cfg, other)


# ---- item 5: NaN never reaches a table, a verdict or a JSON file ---------------------------------------------


@pytest.mark.parametrize("kind", ["empty_txt", "empty_jsonl_texts", "one_char_docs", "empty_shards"])
def test_eval_ppl_refuses_a_set_with_nothing_to_score(tmp_path, capsys, kind):
    if kind == "empty_txt":
        path, why = tmp_path / "empty.txt", "1 document, all shorter than 2 tokens (1 empty)"
        path.write_text("", encoding="utf-8")
    elif kind == "empty_jsonl_texts":
        path, why = tmp_path / "blank.jsonl", "3 documents, all shorter than 2 tokens (3 empty)"
        path.write_text('{"text": ""}\n' * 3, encoding="utf-8")
    elif kind == "one_char_docs":
        path, why = tmp_path / "chars.jsonl", "3 documents, all shorter than 2 tokens"
        path.write_text("".join(json.dumps({"text": c}) + "\n" for c in "abc"), encoding="utf-8")
    else:
        path, why = _shards(tmp_path / "none", []), "no documents"
    out = tmp_path / "ppl.json"
    rc, err = _ppl(capsys, f"S={path}", "--output", str(out))
    assert rc == 2
    assert f"set 'S' ({path}) has no scorable tokens: {why}" in err
    assert not out.exists()


def test_eval_ppl_packed_set_shorter_than_a_window_says_so(tmp_path, capsys):
    path = tmp_path / "short.jsonl"
    path.write_text('{"text": "a few words"}\n', encoding="utf-8")
    rc, err = _ppl(capsys, f"S={path}", "--window", "packed")
    assert rc == 2 and "fewer than one window of max_tokens + 1 = 65" in err


@pytest.mark.parametrize("name", ["docs.jsonl.gz", "docs.json.gz", "doc.txt.gz"])
@pytest.mark.parametrize("kind", ["truncated", "not_gzip"])
def test_eval_ppl_names_a_damaged_gzip_set(tmp_path, capsys, name, kind):
    import gzip

    from skyloom.eval.textdata import read_texts

    records = [{"text": f"document number {i} with a few words of text"} for i in range(300)]
    body = json.dumps(records) if "json." in name else "".join(json.dumps(r) + "\n" for r in records)
    path = tmp_path / name
    whole = gzip.compress(body.encode())
    path.write_bytes(whole[: len(whole) // 2] if kind == "truncated" else body.encode())
    good = tmp_path / f"good_{name}"
    good.write_bytes(whole)
    assert read_texts(good) == ([body] if name.endswith(".txt.gz") else [r["text"] for r in records])
    rc, err = _ppl(capsys, f"S={path}")
    assert rc == 2 and err.startswith(f"skyloom: error: {path}:") and "gzip" in err and "Traceback" not in err


def test_leakage_gives_no_verdict_from_an_empty_set(tmp_path, capsys):
    files = {}
    for name in ("train", "test", "ref"):
        files[name] = tmp_path / f"{name}.jsonl"
        text = "" if name == "test" else "Tom has 3 apples and buys 4 more. #### 7"
        files[name].write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    rc = main(
        [
            "eval",
            "leakage",
            "--model",
            str(tiny_checkpoint()),
            "--no-progress",
            "--device",
            "cpu",
            "--max-tokens",
            "64",
            "--n-boot",
            "10",
            *(f"--{k}={v}" for k, v in files.items()),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 2 and "set 'test'" in captured.err and "no scorable tokens" in captured.err
    assert "no sign" not in captured.out and "likely" not in captured.out


def test_output_json_never_holds_bare_nan(tmp_path):
    from skyloom.eval.commands import _write_json

    out = tmp_path / "r.json"
    with pytest.raises(ValueError, match=r"\$\.domains\.Tech\.bpb \(nan\)"):
        _write_json(str(out), {"domains": {"Tech": {"loss": 1.0, "bpb": float("nan")}}})
    assert not out.exists() and not (tmp_path / "r.json.tmp").exists()
    _write_json(str(out), {"x": [np.float64(1.5), torch.tensor(2.0)]})
    assert json.loads(out.read_text()) == {"x": [1.5, 2.0]}


def test_correlate_refuses_nan_validation_losses(tmp_path):
    from skyloom.eval.correlate import collect

    (tmp_path / "checkpoints" / "step_00000010").mkdir(parents=True)
    lines = [
        {"kind": "val", "step": 10, "set": "wiki", "loss": float("nan")},
        {"kind": "bench", "step": 10, "task": "ceval", "score": 0.3},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    with pytest.raises(ValueError, match="validation loss of set 'wiki' is not finite at step.s. 10"):
        collect(tmp_path, [], {}, None, None, {}, None, progress=False)


# ---- item 7: the shots actually used -----------------------------------------------------------------------


def _write_mc(root: Path, dev_rows: dict[str, int]) -> Path:
    """An MMLU-format benchmark: per subject 2 test questions and `dev_rows[subject]` dev exemplars."""
    row = "What is 1 + {i}?,{a},{b},{c},{d},A\n"
    for split, _count in (("test", None), ("dev", None)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for subject, n_dev in dev_rows.items():
            n = 2 if split == "test" else n_dev
            text = "".join(row.format(i=i, a=i + 1, b=i + 2, c=i + 3, d=i + 4) for i in range(n))
            (root / split / f"{subject}_{split}.csv").write_text(text, encoding="utf-8")
    return root


def test_bench_records_the_shots_actually_used(tmp_path, capsys):
    root = _write_mc(tmp_path / "mmlu", {"algebra": 5, "anatomy": 2, "astronomy": 0})
    out = tmp_path / "bench.json"
    rc = main(
        [
            "eval",
            "bench",
            "--model",
            str(tiny_checkpoint()),
            "--task",
            f"mmlu:{root}",
            "--shots",
            "5",
            "--no-progress",
            "--device",
            "cpu",
            "--output",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    r = json.loads(out.read_text())["tasks"]["mmlu"]
    assert r["shots"] == 0 and r["shots_requested"] == 5
    assert {k: s["shots"] for k, s in r["subjects"].items()} == {"algebra": 5, "anatomy": 2, "astronomy": 0}
    assert "| mmlu | 0–5 of 5 |" in captured.out
    assert "| Subject | n | acc | acc_norm | shots |" in captured.out
    rows = {line.split(" | ")[0][2:]: line for line in captured.out.splitlines() if line.startswith("| a")}
    assert rows["algebra"].endswith(" 5 |") and rows["anatomy"].endswith(" 2 |") and rows["astronomy"].endswith(" 0 |")
    assert "warning: mmlu: 2 of 3 subject(s) have fewer than 5 dev exemplars" in captured.err
    assert "anatomy (2), astronomy (0)" in captured.err


def test_gsm8k_records_the_shots_actually_used(tmp_path):
    from skyloom.eval.gsm8k import evaluate_gsm8k

    problem = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"}
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text(json.dumps(problem) + "\n", encoding="utf-8")
    lm = load_lm(tiny_checkpoint(), device="cpu", progress=False)
    result, _ = evaluate_gsm8k(lm, tmp_path, shots=8, max_new_tokens=2)
    assert result["shots"] == 1 and result["shots_requested"] == 8 and "fewer than the 8" in result["warnings"][0]


# ---- item 12: no unpickling unless asked -------------------------------------------------------------------


def _pickled_hf_dir(tmp_path: Path) -> Path:
    src, out = tiny_hf_dir(), tmp_path / "pickled"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors"))
    from safetensors.torch import load_file

    torch.save(load_file(str(src / "model.safetensors")), out / "pytorch_model.bin")
    return out


def test_hf_backend_refuses_pickled_weights_unless_allowed(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    d = _pickled_hf_dir(tmp_path)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on pickled weights")

    text = tmp_path / "t.txt"
    text.write_text("Tom has 3 apples and buys 4 more.", encoding="utf-8")
    with monkeypatch.context() as m:
        m.setattr(torch, "load", no_unpickling)
        with pytest.raises(ValueError, match=r"no safetensors weights \(found pytorch_model.bin.*--allow-pickle"):
            load_lm(d, backend="hf", device="cpu", progress=False)
        rc, err = _ppl(capsys, f"t={text}", model=d)
        assert rc == 2 and "pytorch_model.bin" in err and "--allow-pickle" in err
    rc, _ = _ppl(capsys, f"t={text}", "--allow-pickle", model=d)
    assert rc == 0  # the documented, explicit escape hatch


def test_export_verify_loads_safetensors_only(monkeypatch):
    transformers = pytest.importorskip("transformers")
    from skyloom.model.checkpoint import load_model
    from skyloom.model.commands import verify_hf_export

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    assert verify_hf_export(load_model(tiny_checkpoint()), tiny_hf_dir()) < 1e-3
    assert seen.get("use_safetensors") is True and seen.get("trust_remote_code") is False
