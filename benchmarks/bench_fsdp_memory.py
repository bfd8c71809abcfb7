"""Peak resident memory per rank: one process vs FSDP2 over 2 ranks, same ~0.37B-parameter model, 2 steps.

Issue 16's acceptance: with the model built on `meta` and each rank materialising only its shards, an FSDP rank's
peak RSS is at most 0.6× that of the one-process run (before: every rank built the full fp32 model first, 0.72×
on a 271M shape). Both runs are the real `Trainer` (loader, loss, backward, clip, AdamW) on a random-token shard,
fp32 on CPU; peak RSS is each process's `getrusage(RUSAGE_SELF).ru_maxrss`, read after its steps. Needs ~7 GB free.
Under FSDP the Trainer fixes glibc's mmap threshold by default (`train.host_memory: auto`; train/host_memory.py:
FSDP's freed per-parameter buffers are unmapped instead of kept in the heap, where the default dynamic threshold put
them), and AdamW runs its fused kernel on the shards too (train/optim.py: no parameter-sized foreach temporary).
The ratio compares equal heap settings: the one-process run is also measured with `host_memory: lean` (the
headline) and with its default (printed beside it). A `MALLOC_MMAP_THRESHOLD_` in the environment is left in force.
Results: benchmarks/results/fsdp_memory.txt.

    .venv/bin/python benchmarks/bench_fsdp_memory.py                     # dim 1024, 24 layers, vocab 32,000
    .venv/bin/python benchmarks/bench_fsdp_memory.py --dim 256 --layers 4 --vocab 4096   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MARK = "BENCH_RESULT "
# (label, train.parallel, processes, train.host_memory): the ratio is taken at equal heap settings (both lean);
# the one-process default (auto = fast without sharding) is printed beside it
RUNS = (
    ("one process, lean", "ddp", 1, "lean"),
    ("one process, default", "ddp", 1, "auto"),
    ("FSDP2 × 2, default", "fsdp", 2, "auto"),
)


def make_source(directory: Path, vocab: int, n_tokens: int) -> Path:
    from skyloom.data.shards import finalize_index, write_shard

    rng = np.random.default_rng(0)
    write_shard(directory, "000", [rng.integers(0, vocab, n_tokens)], vocab_size=vocab, source="random")
    finalize_index(directory)
    return directory


def run_config(args, data: Path, parallel: str, host_memory: str) -> dict:
    return {
        "model": {
            "arch": "llama",
            "vocab_size": args.vocab,
            "dim": args.dim,
            "n_layers": args.layers,
            "n_heads": args.dim // 64,
            "max_seq_len": args.seq,
        },
        "data": {"seq_len": args.seq, "seed": 0, "sources": {"random": {"path": str(data)}}},
        "train": {
            "global_batch_tokens": 2 * args.micro * args.seq,
            "micro_batch_size": args.micro,
            "max_steps": args.steps,
            "lr": 1e-4,
            "warmup_steps": 1,
            "log_every": 1000,
            "device": "cpu",
            "precision": "fp32",
            "parallel": parallel,
            "host_memory": host_memory,
        },
        "validation": {"every": 0, "at_start": False, "sets": {}},
        "checkpoint": {"every": 0, "save_final": False},
    }


def worker(config: Path, out: Path) -> None:
    """One rank: build the Trainer, run the steps, print its peak RSS."""
    from skyloom.config import load
    from skyloom.train import host_memory
    from skyloom.train.config import RunConfig
    from skyloom.train.distributed import shutdown
    from skyloom.train.trainer import Trainer

    cfg = load(RunConfig, config)
    trainer = Trainer(cfg, out, log=lambda _: None)
    after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    losses = [trainer.train_step()["loss"] for _ in range(cfg.train.max_steps)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        MARK
        + json.dumps(
            {
                "rank": trainer.env.rank,
                "world": trainer.env.world_size,
                "peak_gb": peak / 2**20,
                "after_build_gb": after_build / 2**20,
                "params": trainer.n_params,
                "fixed_mmap_threshold": host_memory.heap_retention_limited(),
                "fused_adamw": bool(trainer.optimizer.defaults.get("fused")),
                "losses": losses,
            }
        ),
        flush=True,
    )
    shutdown()


def launch(cmd: list[str]) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rows = [json.loads(line[len(MARK) :]) for line in proc.stdout.splitlines() if line.startswith(MARK)]
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--micro", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]))
        return
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_source(root / "data", args.vocab, 200 * args.micro * args.seq * (args.steps + 1))
        results = {}
        for name, parallel, nproc, host_memory in RUNS:
            config = root / f"{parallel}-{host_memory}.yaml"
            config.write_text(yaml.safe_dump(run_config(args, data, parallel, host_memory)), encoding="utf-8")
            script = [
                str(Path(__file__).resolve()),
                "--worker",
                str(config),
                str(root / f"run_{parallel}_{host_memory}"),
            ]
            cmd = (
                [sys.executable, *script]
                if nproc == 1
                else [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={nproc}",
                    *script,
                ]
            )
            results[name] = launch(cmd)
    one, one_default = results[RUNS[0][0]][0], results[RUNS[1][0]][0]
    all_rows = [r for runs in results.values() for r in runs]
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    heap = (
        f"MALLOC_MMAP_THRESHOLD_={malloc} (the user's)"
        if malloc
        else f"mmap threshold fixed at 128 KiB by the Trainer: {[r['fixed_mmap_threshold'] for r in all_rows]}"
    )
    print(
        f"model: dim {args.dim}, {args.layers} layers, vocab {args.vocab:,}, seq {args.seq}: "
        f"{one['params']:,} parameters; {args.steps} steps, fp32, CPU; glibc {heap}; "
        f"AdamW fused: {[r['fused_adamw'] for r in all_rows]}"
    )
    for name, rows in results.items():
        for r in rows:
            print(
                f"  {name:16s} rank {r['rank']}: peak RSS {r['peak_gb']:.2f} GB "
                f"(after building: {r['after_build_gb']:.2f} GB)  losses {r['losses']}"
            )
    largest = max(r["peak_gb"] for r in results[RUNS[2][0]])
    print(
        f"largest FSDP rank / one process, same heap setting (lean) = {largest:.2f} / {one['peak_gb']:.2f} = "
        f"{largest / one['peak_gb']:.2f}× (target ≤ 0.60×); against the one-process default (fast): "
        f"{largest / one_default['peak_gb']:.2f}×; losses identical in every process: "
        f"{len({tuple(r['losses']) for r in all_rows}) == 1}"
    )


if __name__ == "__main__":
    main()
