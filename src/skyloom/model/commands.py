"""`skyloom model info|init`, `skyloom export hf`, `skyloom import hf`."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skyloom.commandline import add_command, add_config_arguments, add_group, option
from skyloom.config import ConfigError, apply_overrides, build, read_yaml
from skyloom.model.config import ModelConfig
from skyloom.model.presets import PRESETS


def resolve_model_config(spec: str, overrides: list[str] = ()) -> ModelConfig:
    """A preset name, a YAML config (with a `model:` section or flat), or a checkpoint directory."""
    path = Path(spec)
    if spec in PRESETS:
        data: dict[str, Any] = {"preset": spec}
    elif path.is_dir():
        from skyloom.config import to_dict
        from skyloom.model.checkpoint import is_skyloom_checkpoint, read_model_config

        if is_skyloom_checkpoint(path):
            data = to_dict(read_model_config(path))
        elif (path / "config.json").is_file():
            from skyloom.model.hf import config_from_hf

            data = to_dict(config_from_hf(json.loads((path / "config.json").read_text()), str(path)))
        else:
            raise ConfigError("", f"{path}: not a skyloom checkpoint or Hugging Face model directory")
    elif path.suffix in (".yaml", ".yml") or path.is_file():
        raw = read_yaml(path)
        data = raw.get("model", raw) if isinstance(raw.get("model"), dict) else raw
    else:
        import difflib

        close = difflib.get_close_matches(spec, list(PRESETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(
            "", f"{spec!r} is neither a preset{hint}, a config file nor a checkpoint; presets: {', '.join(PRESETS)}"
        )
    # Overrides may be written relative to the model section or with the `model.` prefix.
    relative = [o[len("model.") :] if o.startswith("model.") else o for o in overrides]
    return build(ModelConfig, apply_overrides(data, relative), prefix="model")


def memory_plan(cfg: ModelConfig, args: argparse.Namespace):
    """`model info`'s per-GPU memory plan (skyloom.model.memory) for the layout its flags describe."""
    from skyloom.model.memory import STATE_BYTES, Layout, gpu_capacity_bytes, plan_memory

    if args.memory_profile not in STATE_BYTES:
        raise ConfigError("--memory-profile", f"one of {', '.join(STATE_BYTES)}, got {args.memory_profile!r}")
    for name in ("dp", "dp_shard", "pp", "tp", "ep", "micro_batch", "global_batch"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}", f"must be ≥ 1, got {getattr(args, name)}")
    if cfg.n_heads % args.tp or cfg.kv_heads % args.tp:
        raise ConfigError("--tp", f"{cfg.n_heads} heads ({cfg.kv_heads} key/value) not divisible by tp={args.tp}")
    if args.ep > 1 and (cfg.moe is None or cfg.moe.n_experts % args.ep):
        raise ConfigError("--ep", f"needs an MoE model whose experts divide by ep={args.ep}")
    if args.pp > cfg.n_layers:
        raise ConfigError("--pp", f"{args.pp} stages need at least as many layers, the model has {cfg.n_layers}")
    layout = Layout(
        dp_replicate=args.dp,
        dp_shard=args.dp_shard,
        pp=args.pp,
        tp=args.tp,
        ep=args.ep,
        zero1=not args.no_zero1,
        micro_batch_size=args.micro_batch,
        global_batch=args.global_batch,
        seq_len=args.seq_len or cfg.max_seq_len,
        activation_checkpointing=args.activation_checkpointing,
        precision=args.memory_profile,
    )
    return plan_memory(cfg, layout, gpu_capacity_bytes(args.gpu_mem))


def model_report(
    cfg: ModelConfig, seq_len: int | None, tokens_per_sec: float | None, peak_tflops: float | None, gpus: int
) -> dict[str, Any]:
    from skyloom.model.accounting import count_params, flops_per_token, mfu, training_memory_bytes

    counts = count_params(cfg)
    seq = seq_len or cfg.max_seq_len
    fpt = flops_per_token(cfg, seq)
    report: dict[str, Any] = {
        "preset": cfg.preset,
        "arch": cfg.arch,
        "vocab_size": cfg.vocab_size,
        "hidden_dim": cfg.dim,
        "ffn_dim": cfg.hidden_ffn_dim,
        "head_dim": cfg.head_dim,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.kv_heads,
        "n_layers": cfg.n_layers,
        "max_seq_len": cfg.max_seq_len,
        "tie_embeddings": cfg.tie_embeddings,
        "params_total": counts.total,
        "params_embedding": counts.embedding,
        "params_non_embedding": counts.non_embedding,
        "seq_len": seq,
        "flops_per_token": fpt,
        "memory_bytes": training_memory_bytes(counts.total),
    }
    if tokens_per_sec is not None:
        if peak_tflops is None:
            raise ConfigError("--peak-tflops", "is needed with --tokens-per-sec to compute MFU")
        report.update(
            tokens_per_sec=tokens_per_sec,
            peak_tflops=peak_tflops,
            gpus=gpus,
            mfu=mfu(tokens_per_sec, fpt, peak_tflops * 1e12, gpus),
        )
    return report


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def format_report(r: dict[str, Any]) -> str:
    rows = [
        ("Preset", r["preset"] or "(custom)"),
        ("Architecture", r["arch"]),
        ("Vocab. size", f"{r['vocab_size']:,}"),
        ("Hidden dim.", f"{r['hidden_dim']:,}"),
        ("FFN dim.", f"{r['ffn_dim']:,}"),
        ("Head dim.", r["head_dim"]),
        ("Num. heads", r["n_heads"]),
        ("Num. KV heads", r["n_kv_heads"]),
        ("Num. layers", r["n_layers"]),
        ("Seq. len.", f"{r['max_seq_len']:,}"),
        ("Tied embeddings", r["tie_embeddings"]),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["| " + "Architecture".ljust(width) + " | value |", "|" + "-" * (width + 2) + "|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    lines += [
        "",
        f"Parameters (total):         {r['params_total']:,}",
        f"Parameters (embedding):     {r['params_embedding']:,}",
        f"Parameters (non-embedding): {r['params_non_embedding']:,}",
        f"Training FLOPs per token:   {r['flops_per_token']:.4g}  (6·N + 12·L·H·S, S={r['seq_len']:,})",
        "",
        "Memory for weights / gradients / AdamW state (no activations):",
    ]
    for setup, parts in r["memory_bytes"].items():
        total = sum(parts.values())
        lines.append(
            f"  {setup:<11} weights {_gib(parts['weights'])}, gradients {_gib(parts['gradients'])}, "
            f"optimizer {_gib(parts['optimizer'])}  = {_gib(total)}"
        )
    if "mfu" in r:
        lines += [
            "",
            f"MFU at {r['tokens_per_sec']:,.0f} tokens/s on {r['gpus']} GPU(s) of "
            f"{r['peak_tflops']:g} TFLOP/s peak: {100 * r['mfu']:.1f}%",
        ]
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from skyloom.model.memory import format_memory

    cfg = resolve_model_config(args.model, args.overrides)
    report = model_report(cfg, args.seq_len, args.tokens_per_sec, args.peak_tflops, args.gpus)
    plan = memory_plan(cfg, args)
    report["memory_plan"] = plan.as_dict()
    print(json.dumps(report, indent=2) if args.json else format_report(report) + "\n\n" + format_memory(plan))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import torch

    from skyloom.model.accounting import count_params
    from skyloom.model.checkpoint import save_model
    from skyloom.model.transformer import Transformer

    cfg = resolve_model_config(args.model, args.overrides)
    n = count_params(cfg).total
    if n > 2e9 and not args.force:
        raise ConfigError("", f"{n:,} parameters would need {_gib(4 * n)} of memory; pass --force to do it anyway")
    torch.manual_seed(args.seed)
    model = Transformer(cfg)
    out = save_model(model, args.out_dir, metadata={"seed": args.seed})
    print(f"wrote {out} ({n:,} parameters, seed {args.seed})")
    return 0


def _paths_or_error(source: str, what: str, out_dir: str) -> None:
    """Refuse, as `skyloom: error:` (exit 2) before any work, a missing input directory or an OUT_DIR that is a
    file; what is wrong inside the input is reported by its loader and turned into the same kind of error."""
    if not Path(source).is_dir():
        reason = "not a directory" if Path(source).exists() else "no such directory"
        raise ConfigError("", f"{what} {source}: {reason}")
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError("", f"OUT_DIR {out_dir}: exists and is not a directory")


def cmd_export_hf(args: argparse.Namespace) -> int:
    from skyloom.model.checkpoint import load_model
    from skyloom.model.hf import export_hf

    _paths_or_error(args.checkpoint, "CHECKPOINT", args.out_dir)
    try:
        model = load_model(args.checkpoint, verify=not args.no_verify)  # a corrupt source is refused, not laundered
    except (ValueError, FileNotFoundError) as err:  # not a checkpoint, unreadable model.json, …
        raise ConfigError("", str(err)) from None
    try:
        out = export_hf(model, args.out_dir, source_dir=args.checkpoint)
    except ValueError as err:  # an architecture HF cannot express, a malformed tokenizer_config.json, …
        raise ConfigError("", f"CHECKPOINT {args.checkpoint}: {err}") from None
    kind = "MixtralForCausalLM" if model.config.moe is not None else "LlamaForCausalLM"
    print(f"wrote Hugging Face {kind} directory {out}")
    if args.verify:
        diff = verify_hf_export(model, out)
        print(f"verified with transformers: max |logit difference| = {diff:.2e}")
    return 0


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from skyloom.model.checkpoint import load_model
    from skyloom.model.gguf_export import read_check_texts, write_gguf

    _paths_or_error(args.checkpoint, "CHECKPOINT", str(Path(args.out_file).parent))
    if Path(args.out_file).is_dir():
        raise ConfigError("", f"OUT_FILE {args.out_file}: is a directory (give the .gguf file to write)")
    try:
        model = load_model(args.checkpoint, verify=not args.no_verify)
    except (ValueError, FileNotFoundError) as err:
        raise ConfigError("", str(err)) from None
    checks = read_check_texts(args.check_text)
    tok = write_gguf(model, args.checkpoint, args.out_file, args.dtype, checks)  # refusals: GGUFRefused, exit 2
    how = (
        f"pre-tokenizer {tok.pre}" if tok.pre else f"llama.cpp's algorithm replayed on {tok.replayed:,} texts, same ids"
    )
    print(f"wrote llama.cpp GGUF {args.out_file} (llama, {args.dtype}; tokenizer {tok.model}, {how})")
    return 0


def verify_hf_export(model, hf_dir: Path, seq_len: int = 16) -> float:
    """Run the exported directory in transformers and compare logits with skyloom's on random tokens."""
    import torch

    from skyloom.model.hf import require_transformers

    transformers = require_transformers("--verify")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(  # the directory just written: safetensors only
        str(hf_dir), torch_dtype=torch.float32, use_safetensors=True, local_files_only=True, trust_remote_code=False
    ).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, min(seq_len, model.config.max_seq_len)), generator=generator)
    with torch.no_grad():
        ours = model(ids)
        theirs = hf_model(ids).logits
    return float((ours - theirs).abs().max())


def cmd_import_hf(args: argparse.Namespace) -> int:
    from skyloom.model.checkpoint import save_model
    from skyloom.model.hf import TOKENIZER_FILES, load_hf_llama

    _paths_or_error(args.hf_dir, "HF_DIR", args.out_dir)
    if not (Path(args.hf_dir) / "config.json").is_file():
        raise ConfigError("", f"HF_DIR {args.hf_dir}: no config.json (not a Hugging Face model directory)")
    try:
        model = load_hf_llama(args.hf_dir)
    except (ValueError, KeyError, FileNotFoundError) as err:  # bad config.json, no safetensors, unknown weights
        raise ConfigError("", f"HF_DIR {args.hf_dir}: {err}") from None
    out = save_model(model, args.out_dir, metadata={"imported_from": str(args.hf_dir)})
    for name in TOKENIZER_FILES:
        src = Path(args.hf_dir) / name
        if src.is_file():
            (out / name).write_bytes(src.read_bytes())
    print(f"wrote skyloom checkpoint {out}")
    return 0


_MODEL_SPEC_HELP = f"a preset ({', '.join(PRESETS)}), a YAML config, or a checkpoint directory"


@dataclass
class ModelInfoConfig:
    """`skyloom model info`'s arguments; --print-config shows the resolved model config."""

    model: str = option(positional=True, metavar="PRESET_OR_CONFIG", help=_MODEL_SPEC_HELP)
    overrides: list[str] = option(
        [],
        positional=True,
        nargs="*",
        metavar="KEY=VALUE",
        help="model field overrides, e.g. n_layers=4 (or model.n_layers=4)",
    )
    seq_len: int | None = option(None, help="sequence length for the attention FLOPs (default: the model's)")
    tokens_per_sec: float | None = option(None, help="measured training throughput, all GPUs together")
    peak_tflops: float | None = option(None, help="hardware peak per GPU in TFLOP/s (A100/A800 bf16: 312)")
    gpus: int = option(1, help="number of GPUs the throughput was measured on")
    json: bool = option(False, help="print one JSON object instead of tables")
    dp: int = option(1, help="memory plan: data-parallel (DDP) replicas")
    dp_shard: int = option(1, help="memory plan: FSDP degree (weights, gradients, optimizer sharded)")
    pp: int = option(1, help="memory plan: pipeline stages (1F1B)")
    tp: int = option(1, help="memory plan: tensor-parallel degree (with sequence parallelism)")
    ep: int = option(1, help="memory plan: expert-parallel degree (MoE)")
    no_zero1: bool = option(False, help="memory plan: do not shard the optimizer state over the DDP replicas")
    micro_batch: int = option(1, help="memory plan: sequences per micro-batch")
    global_batch: int = option(4096, help="memory plan: sequences per optimizer step (sets PP's micro-batches)")
    activation_checkpointing: bool = option(False, help="memory plan: recompute each layer in the backward pass")
    memory_profile: str = option(
        "megatron-bf16",
        help="memory plan: bytes per parameter: megatron-bf16 (the "
        "report's Table 10), torch-amp (skyloom's bf16), fp32, "
        "zero-bf16",
    )
    gpu_mem: float = option(80.0, metavar="GB", help="memory plan: GPU memory for the OOM verdict ('80 GB' = 80 GiB)")


@dataclass
class ModelInitConfig:
    """`skyloom model init`'s arguments; --print-config shows the resolved model config."""

    model: str = option(positional=True, metavar="PRESET_OR_CONFIG", help=_MODEL_SPEC_HELP)
    out_dir: str = option(positional=True, metavar="OUT_DIR", help="directory to write")
    overrides: list[str] = option(
        [], positional=True, nargs="*", metavar="KEY=VALUE", help="model field overrides, e.g. n_layers=2"
    )
    seed: int = option(0, help="random seed for the initialisation")
    force: bool = option(False, help="allow models above 2B parameters")


@dataclass
class ExportHFConfig:
    """`skyloom export hf`'s arguments."""

    checkpoint: str = option(positional=True, metavar="CHECKPOINT", help="skyloom checkpoint directory")
    out_dir: str = option(
        positional=True, metavar="OUT_DIR", help="directory to write (config.json + model.safetensors)"
    )
    verify: bool = option(False, help="load the result in transformers and compare logits (needs skyloom[hf])")
    no_verify: bool = option(
        False,
        help="skip checking CHECKPOINT against its manifest.json (sizes + sha256) "
        "before exporting (--verify, by contrast, checks the exported result)",
    )


@dataclass
class ExportGGUFConfig:
    """`skyloom export gguf`'s arguments."""

    checkpoint: str = option(positional=True, metavar="CHECKPOINT", help="skyloom checkpoint directory")
    out_file: str = option(positional=True, metavar="OUT_FILE", help="the .gguf file to write")
    dtype: str = option("f32", help="weight type of the matrices: f32, f16 or bf16 (norms stay f32)")
    no_verify: bool = option(False, help="skip checking CHECKPOINT against its manifest.json before exporting")
    check_text: list[str] = option(
        [],
        nargs="*",
        metavar="FILE",
        help="text/JSONL files whose first 1,000 documents must also encode to skyloom's ids under llama.cpp's "
        "SentencePiece algorithm (replayed) before a 'llama' tokenizer is written",
    )


@dataclass
class ImportHFConfig:
    """`skyloom import hf`'s arguments."""

    hf_dir: str = option(positional=True, metavar="HF_DIR", help="directory with config.json and *.safetensors")
    out_dir: str = option(positional=True, metavar="OUT_DIR", help="skyloom checkpoint directory to write")


def _resolved_model(args: argparse.Namespace) -> ModelConfig:
    return resolve_model_config(args.model, args.overrides)


def register(sub) -> None:
    model = add_group(sub, "model", "inspect and create models")
    info = add_command(
        model,
        "info",
        "architecture table, parameter counts, FLOPs per token, memory and MFU",
        description=(
            "Print the architecture (like the report's Table 3), exact parameter counts, training FLOPs per\n"
            "token (6·N + 12·L·H·S), the memory needed for weights, gradients and AdamW state, and — given a\n"
            "throughput — the MFU it means. Nothing is allocated: 13B presets are counted from the config.\n"
            "Then the memory per GPU of a layout (--dp/--dp-shard/--pp/--tp/--ep, micro-batch, sequence length):\n"
            "weights, gradients, optimizer, activations, buffers, and an OOM verdict for --gpu-mem.\n\n"
            "examples:\n"
            "  skyloom model info skywork-13b --tokens-per-sec 1873 --peak-tflops 312\n"
            "  skyloom model info skywork-13b --dp 256 --pp 2 --gpu-mem 80     # Table 10's DP256+PP2+ZeRO-1"
        ),
    )
    add_config_arguments(info, ModelInfoConfig, resolve=_resolved_model)
    info.set_defaults(handler=cmd_info)

    init = add_command(model, "init", "write a freshly initialised checkpoint (safetensors + model.json)")
    add_config_arguments(init, ModelInitConfig, resolve=_resolved_model)
    init.set_defaults(handler=cmd_init)

    export = add_group(sub, "export", "export checkpoints to other formats")
    hf = add_command(
        export,
        "hf",
        "export a checkpoint as a Hugging Face directory (LlamaForCausalLM; MixtralForCausalLM for an MoE model)",
    )
    add_config_arguments(hf, ExportHFConfig)
    hf.set_defaults(handler=cmd_export_hf)
    gguf = add_command(
        export,
        "gguf",
        "export a dense LLaMA checkpoint and its tokenizer as one llama.cpp GGUF file (refuses what "
        "llama.cpp would tokenize or run differently)",
    )
    add_config_arguments(gguf, ExportGGUFConfig)
    gguf.set_defaults(handler=cmd_export_gguf)

    imp = add_group(sub, "import", "import checkpoints from other formats")
    ihf = add_command(imp, "hf", "import a Hugging Face Llama directory (safetensors) as a skyloom checkpoint")
    add_config_arguments(ihf, ImportHFConfig)
    ihf.set_defaults(handler=cmd_import_hf)
