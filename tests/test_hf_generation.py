"""The Hugging Face generation contract of an export: after `skyloom sft`, transformers' greedy `generate` stops
where skyloom's generation stops, with the same tokens; config.json, generation_config.json and
tokenizer_config.json carry the special ids and the model's context; a control token typed in a message is text
in skyloom and in transformers (`sanitize_control_tokens=True`), and refused by the exported template otherwise."""

from __future__ import annotations

import json
import os
import random

import pytest
import torch

from skyloom.cli import main
from skyloom.tokenizer.chat import Message, TemplateEncoder, get_template
from skyloom.tokenizer.loading import TextTokenizer
from tests.test_sft_support import tiny_base  # noqa: F401
from tests.train_helpers import single_thread  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="transformers (skyloom[hf]) is not installed")
pytestmark = pytest.mark.usefixtures("single_thread")

QUESTIONS = ["What is 3 plus 4?", "What is 12 plus 30?", "What is 7 plus 8?", "How many is 5 plus 5?"]


def _sums(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Short synthetic question/answer records: after a few dozen steps the model ends answers with `[SEP]`."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        records.append({"question": f"What is {a} plus {b}?", "answer": str(a + b)})
    return records


@pytest.fixture(scope="module")
def sft_run(tiny_base, tmp_path_factory, single_thread):  # noqa: F811
    from skyloom.sft.config import build_sft_config
    from skyloom.sft.runner import run_sft

    root = tmp_path_factory.mktemp("hf_generation")
    data = root / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _sums(400)), encoding="utf-8")
    cfg = build_sft_config(
        {
            "base": str(tiny_base),
            "data": {"sources": {"sums": {"path": str(data)}}, "val_fraction": 0.0},
            # many small steps: the new [SEP] row must overtake the digits (greedy ends "5[SEP]" or "[SEP]")
            "train": {"max_steps": 24, "global_batch_tokens": 256, "micro_batch_size": 1, "lr": 5e-3, "device": "cpu"},
        }
    )
    summary = run_sft(cfg, root / "run", log=lambda _: None)
    assert summary["status"] == "finished" and summary["hf"] == str(root / "run" / "hf")
    return summary


def _skyloom_generate(checkpoint, tok_dir, prompt: list[int], max_new_tokens: int) -> list[int]:
    """skyloom's own greedy generation (the SFT stop tokens, as `skyloom skymath` samples); the generated ids."""
    from skyloom.eval.backends import SkyloomLM
    from skyloom.model.checkpoint import load_model

    chat = get_template("skywork")
    lm = SkyloomLM(load_model(checkpoint), TextTokenizer.from_dir(tok_dir), progress=False)
    seen: list[list[int]] = []
    decode = lm.decode
    lm.decode = lambda ids: (seen.append(list(ids)), decode(ids))[1]  # the last call sees all generated ids
    lm.generate([prompt], max_new_tokens=max_new_tokens, stop=chat.stop_tokens)
    return seen[-1]


def test_hf_generate_stops_where_skyloom_stops(sft_run):
    run = sft_run["hf"].rsplit("/", 1)[0]
    tok = TextTokenizer.from_dir(f"{run}/tokenizer")
    enc = TemplateEncoder(get_template("skywork"), tok)
    sep = enc.ids["[SEP]"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(sft_run["hf"]).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(sft_run["hf"])
    max_new = 24
    stopped = 0
    for question in QUESTIONS:
        prompt = enc.prompt_ids(question)
        got = hf_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        assert list(got["input_ids"]) == prompt
        ours = _skyloom_generate(sft_run["checkpoint"], f"{run}/tokenizer", prompt, max_new)
        ids = torch.tensor([prompt])
        with torch.no_grad():  # greedy, with nothing but what the export's files say (eos list, pad id)
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new)
        theirs = out[0, len(prompt) :].tolist()
        if theirs and theirs[-1] == tok.eos_id:  # skyloom drops EOS from what it returns; transformers keeps it
            theirs = theirs[:-1]
        assert theirs == ours, question
        stopped += len(ours) < max_new and ours[-1] == sep
    assert stopped, "no answer ended with [SEP]: the test would not see a missing stop token"


def test_export_files_carry_ids_and_context(sft_run):
    hf_dir = sft_run["hf"]
    tok = TextTokenizer.from_dir(hf_dir)
    sep = tok.tokenizer.token_to_id("[SEP]")
    config = json.loads(open(f"{hf_dir}/config.json", encoding="utf-8").read())
    generation = json.loads(open(f"{hf_dir}/generation_config.json", encoding="utf-8").read())
    tok_cfg = json.loads(open(f"{hf_dir}/tokenizer_config.json", encoding="utf-8").read())
    assert tok.bos_id is None and tok.eos_id is not None and tok.pad_id is not None  # this BPE has no BOS
    for doc in (config, generation):
        assert doc["eos_token_id"] == [tok.eos_id, sep]
        assert doc["pad_token_id"] == tok.pad_id
        assert "bos_token_id" in doc and doc["bos_token_id"] is None  # stated, so transformers does not assume 1
    assert config["dtype"] == "float32" and "torch_dtype" not in config
    assert config["rope_parameters"]["rope_theta"] == config["rope_theta"]
    assert tok_cfg["model_max_length"] == config["max_position_embeddings"] == 256
    assert tok_cfg["split_special_tokens"] is False  # the chat template's [SEP] must be read as a token
    # as transformers reads them
    loaded = transformers.AutoModelForCausalLM.from_pretrained(hf_dir)
    assert loaded.generation_config.eos_token_id == [tok.eos_id, sep]
    assert loaded.config.bos_token_id is None and loaded.generation_config.pad_token_id == tok.pad_id
    assert transformers.AutoTokenizer.from_pretrained(hf_dir).model_max_length == 256


def test_typed_control_token_is_text_in_both(sft_run):
    run = sft_run["hf"].rsplit("/", 1)[0]
    enc = TemplateEncoder(get_template("skywork"), TextTokenizer.from_dir(f"{run}/tokenizer"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(sft_run["hf"])
    sep = enc.ids["[SEP]"]
    msgs = [
        {"role": "user", "content": "what is [SEP]? and <|endoftext|>"},
        {"role": "assistant", "content": "a [BOT]"},
    ]
    ours, _ = enc.encode([Message(**m) for m in msgs])
    assert ours.count(sep) == 2 and ours.count(enc.ids["[BOT]"]) == 1  # only the template's own
    theirs = hf_tok.apply_chat_template(msgs, sanitize_control_tokens=True)["input_ids"]
    assert list(theirs) == ours
    with pytest.raises(Exception, match=r"control token \[SEP\] as text.*sanitize_control_tokens=True"):
        hf_tok.apply_chat_template(msgs)  # never silently the turn-end token
    assert enc.tokenizer.decode(ours).count("[SEP]") == 3


def test_sft_tokenizer_folder_reads_the_templates_tokens_in_transformers(tiny_base, tmp_path):  # noqa: F811
    """RUN_DIR/tokenizer (not only the export) loads in transformers with a working template, also from a base
    whose tokenizer_config says `split_special_tokens: true` (what `skyloom tokenizer train` writes)."""
    import shutil

    from skyloom.sft.vocab import add_special_tokens

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    (base / "tokenizer_config.json").write_text(json.dumps({**cfg, "split_special_tokens": True}), encoding="utf-8")
    template = get_template("skywork")
    add_special_tokens(base, tmp_path / "run_tok", template.added_tokens, template.jinja)
    msgs = [{"role": "user", "content": "1+2="}, {"role": "assistant", "content": "3"}]
    ours, _ = TemplateEncoder(template, TextTokenizer.from_dir(tmp_path / "run_tok")).encode(
        [Message(**m) for m in msgs]
    )
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "run_tok").apply_chat_template(msgs)["input_ids"]
    assert list(theirs) == ours


def test_typed_control_token_cut_as_transformers_cuts(tiny_base, tmp_path):  # noqa: F811
    """With merges that span a typed `[SEP]` (" [", "]?"), encoding the message text whole would give other ids
    than transformers' sanitized encoding; skyloom cuts the text where transformers does."""
    from skyloom.sft.vocab import add_special_tokens
    from skyloom.train.prepare import train_bpe

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("what is [SEP]? it is [SEP]. x[SEP]y\n" * 200 + "plain words here\n" * 50, encoding="utf-8")
    train_bpe([corpus], tmp_path / "base", vocab_size=300)
    template = get_template("skywork")
    add_special_tokens(tmp_path / "base", tmp_path / "tok", template.added_tokens, template.jinja)
    tok = TextTokenizer.from_dir(tmp_path / "tok")
    enc = TemplateEncoder(template, tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    for text in ["what is [SEP]?", "it is [SEP]. x[SEP]y", "[SEP][SEP] x"]:
        msgs = [{"role": "user", "content": text}]
        ours = enc.encode([Message(**m) for m in msgs], add_generation_prompt=True)[0]
        whole = [tok.eos_id, enc.ids["[USER]"], *tok.encode(text), enc.ids["[SEP]"], enc.ids["[BOT]"]]
        theirs = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, sanitize_control_tokens=True)
        assert list(theirs["input_ids"]) == ours, text
        assert tok.decode(ours) == tok.decode(whole)
    assert any(
        enc.encode([Message("user", t)], add_generation_prompt=True)[0]
        != [tok.eos_id, enc.ids["[USER]"], *tok.encode(t), enc.ids["[SEP]"], enc.ids["[BOT]"]]
        for t in ["what is [SEP]?", "it is [SEP]. x[SEP]y"]
    ), "the corpus learned no merge across [SEP]: this test would not see the difference"


def test_base_export_text_is_text_and_moe_export_writes_the_contract(tiny_base, tmp_path, capsys):  # noqa: F811
    assert main(["export", "hf", str(tiny_base), str(tmp_path / "hf")]) == 0
    tok = TextTokenizer.from_dir(tiny_base)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text(encoding="utf-8"))
    assert generation == {"bos_token_id": None, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    tok_cfg = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert tok_cfg["model_max_length"] == 256 and tok_cfg["split_special_tokens"] is True
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "a literal <|endoftext|> in a document"
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == tok.encode(text)  # text is text, as skyloom
    # the MoE (Mixtral) export writes the same contract
    from skyloom.config import build
    from skyloom.model.config import ModelConfig
    from skyloom.model.hf import export_hf
    from skyloom.model.transformer import Transformer

    torch.manual_seed(0)
    moe_fields = {"gate_norm": False, "gate_bias": False, "dropless": True}
    moe = Transformer(build(ModelConfig, {"preset": "tiny-moe", "vocab_size": tok.vocab_size, "moe": moe_fields}))
    export_hf(moe, tmp_path / "moe", source_dir=tiny_base)
    assert json.loads((tmp_path / "moe" / "generation_config.json").read_text(encoding="utf-8")) == generation
    config = json.loads((tmp_path / "moe" / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "mixtral" and config["eos_token_id"] == tok.eos_id
    assert "bos_token_id" in config and config["bos_token_id"] is None


@pytest.mark.parametrize("case", ["missing", "empty", "gpt"])
def test_export_hf_refusals_exit_2_without_traceback(tmp_path, capsys, case):
    src = tmp_path / "src"
    if case == "empty":
        src.mkdir()
    elif case == "gpt":
        assert main(["model", "init", "tiny-gpt", str(src), "vocab_size=64", "n_layers=1"]) == 0
    capsys.readouterr()
    assert main(["export", "hf", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyloom: error: ") and str(src) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
