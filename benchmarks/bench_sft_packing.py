"""SFT throughput: packed samples (positions + attention reset per sample) vs one padded sample per window.

Same data (GSM8K train + the Skywork authors' Chinese Alpaca sample, in the Skywork chat template), same model,
same trainer (`skyloom.sft.runner.build_trainer` → the real `Trainer.train_step`), same windows per step; only
`data.layout` differs. Steps alternate between the two trainers so a shared machine slows both alike.

Reported per layout: the share of window positions holding real tokens (non-pad share), windows needed for
one epoch, answer (target) tokens per second and real tokens per second from the median step time (wall and
process CPU time), and the resulting time for one epoch of the data — the number that matters.

    .venv/bin/python benchmarks/bench_sft_packing.py                     # this CPU, ~2-4 min
    .venv/bin/python benchmarks/bench_sft_packing.py --dim 512 --layers 8 --device cuda --seq-len 1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def make_base(root: Path, shared: Path, vocab: int, dim: int, layers: int, seq_len: int) -> Path:
    import torch

    from skyloom.config import build
    from skyloom.model.checkpoint import save_model
    from skyloom.model.config import ModelConfig
    from skyloom.model.transformer import Transformer
    from skyloom.tokenizer.loading import TextTokenizer
    from skyloom.train.prepare import train_bpe

    texts = []
    with open(shared / "gsm8k" / "train.jsonl", encoding="utf-8") as f:
        texts += [json.loads(line)["question"] + "\n" + json.loads(line)["answer"] for line in f]
    with open(shared / "skywork" / "alpaca_data_zh_51k_sample_1k.jsonl", encoding="utf-8") as f:
        texts += [json.loads(line)["instruction"] + "\n" + json.loads(line)["output"] for line in f]
    (root / "corpus.txt").write_text("\n\n".join(texts), encoding="utf-8")
    base = root / "base"
    train_bpe([root / "corpus.txt"], base, vocab_size=vocab)
    tok = TextTokenizer.from_dir(base)
    torch.manual_seed(0)
    cfg = build(
        ModelConfig,
        dict(
            arch="llama",
            vocab_size=tok.vocab_size,
            dim=dim,
            n_layers=layers,
            n_heads=max(1, dim // 64),
            max_seq_len=seq_len,
        ),
    )
    save_model(Transformer(cfg), base)
    return base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=os.environ.get("SKYLOOM_SHARED_DATA", "../shared/data"))
    ap.add_argument("--gsm8k", type=int, default=2000, help="GSM8K train records")
    ap.add_argument("--alpaca", type=int, default=1000, help="Alpaca-zh records")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8, help="windows per optimizer step")
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per layout (after 2 warm-up steps)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from skyloom.sft.config import build_sft_config
    from skyloom.sft.runner import build_trainer

    shared = Path(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_base(root, shared, args.vocab, args.dim, args.layers, args.seq_len)
        trainers = {}
        for layout in ("packed", "padded"):
            cfg = build_sft_config(
                {
                    "base": str(base),
                    "export_hf": False,
                    "data": {
                        "layout": layout,
                        "seq_len": args.seq_len,
                        "sources": {
                            "gsm8k": {"path": str(shared / "gsm8k" / "train.jsonl"), "limit": args.gsm8k},
                            "alpaca": {
                                "path": str(shared / "skywork" / "alpaca_data_zh_51k_sample_1k.jsonl"),
                                "limit": args.alpaca,
                            },
                        },
                        "epochs": 1,
                    },
                    "train": {
                        "global_batch_tokens": args.windows * args.seq_len,
                        "micro_batch_size": args.micro,
                        "device": args.device,
                        "lr": 1e-4,
                    },
                }
            )
            trainer, source, _, _ = build_trainer(cfg, root / layout, log=lambda s: None)
            trainers[layout] = (trainer, source)
        times = {k: {"wall": [], "cpu": [], "targets": [], "real": []} for k in trainers}
        for i in range(args.steps + 2):
            for layout, (trainer, source) in trainers.items():
                step = source.step
                real = sum(len(source.samples[j]) - 1 for w in source.step_windows(step) for j in w)
                t0, c0 = time.perf_counter(), time.process_time()
                m = trainer.train_step()
                if args.device != "cpu":
                    torch.cuda.synchronize()
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                if i >= 2:
                    t = times[layout]
                    t["wall"].append(wall), t["cpu"].append(cpu), t["real"].append(real)
                    t["targets"].append(m["tokens"] - (t.get("last_tokens") or m["tokens"] - real))
                times[layout]["last_tokens"] = m["tokens"]
        print(
            f"model dim {args.dim} × {args.layers} layers, vocab {args.vocab}, seq_len {args.seq_len}, "
            f"{args.windows} windows/step, device {args.device}, {args.threads} thread(s); "
            f"data: {args.gsm8k} GSM8K + {args.alpaca} Alpaca-zh, skywork template\n"
        )
        rows = {}
        for layout, (_trainer, source) in trainers.items():
            st = source.stats()
            t = times[layout]
            wall, cpu = statistics.median(t["wall"]), statistics.median(t["cpu"])
            tgt_per_step = st["target_tokens"] / st["windows"] * args.windows
            real_per_step = st["real_tokens"] / st["windows"] * args.windows
            steps_epoch = st["windows"] / args.windows
            rows[layout] = dict(
                share=st["non_pad_share"],
                windows=st["windows"],
                spw=st["samples_per_window"],
                tgt_s=tgt_per_step / wall,
                real_s=real_per_step / wall,
                tgt_cpu=tgt_per_step / cpu,
                step=wall,
                epoch=steps_epoch * wall,
                epoch_cpu=steps_epoch * cpu,
            )
        print(
            "| layout | non-pad share | samples/window | windows/epoch | step (s, median) | answer tok/s | "
            "real tok/s | answer tok/CPU-s | epoch time (s) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for layout, r in rows.items():
            print(
                f"| {layout} | {r['share']:.1%} | {r['spw']:.2f} | {r['windows']:,} | {r['step']:.3f} | "
                f"{r['tgt_s']:,.0f} | {r['real_s']:,.0f} | {r['tgt_cpu']:,.0f} | {r['epoch']:,.0f} |"
            )
        p, q = rows["packed"], rows["padded"]
        print(
            f"\npacked / padded: answer tokens/s × {p['tgt_s'] / q['tgt_s']:.2f} (wall), "
            f"× {p['tgt_cpu'] / q['tgt_cpu']:.2f} (CPU time); epoch time × {p['epoch'] / q['epoch']:.2f}; "
            f"step time × {p['step'] / q['step']:.2f} (the block-diagonal mask's cost)"
        )


if __name__ == "__main__":
    main()
