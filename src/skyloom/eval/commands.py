"""`skyloom eval ppl|leakage|bench|correlate` — the report's evaluations on any model directory."""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from skyloom.commandline import add_command, add_config_arguments, add_group, option

MODEL_HELP = (
    "a skyloom checkpoint directory (model.json + model.safetensors + tokenizer files) or a "
    "Hugging Face model directory (config.json + safetensors + tokenizer)"
)


_LOADING = "model loading"
_WINDOW = "window convention (see docs/evaluation.md)"


@dataclass(kw_only=True)
class LoadingOptions:
    """How the evaluated model is loaded and batched (every eval command)."""

    backend: Literal["auto", "skyloom", "hf"] = option(
        "auto",
        choices=("auto", "skyloom", "hf"),
        group=_LOADING,
        help="auto: skyloom for a skyloom checkpoint, transformers (skyloom[hf]) for a Hugging Face directory; "
        "a Llama directory runs in either",
    )
    tokenizer: str | None = option(
        None, metavar="DIR", group=_LOADING, help="tokenizer directory (default: the model directory)"
    )
    device: str = option("auto", group=_LOADING, help="auto (cuda if available), cpu, cuda, cuda:1 …")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = option(
        "auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        group=_LOADING,
        help="auto: bfloat16 on a GPU that supports it, float32 on CPU",
    )
    batch_tokens: int = option(8192, group=_LOADING, help="padded tokens per forward pass (batch rows × longest row)")
    max_batch_size: int = option(64, group=_LOADING, help="rows per forward pass at most")
    no_progress: bool = option(False, group=_LOADING, help="no progress bars")
    no_verify: bool = option(
        False,
        group=_LOADING,
        help="skip checking a training checkpoint against its manifest.json (sizes + sha256) "
        "before loading it (faster; a corrupt file then gives other numbers instead of an "
        "error)",
    )
    allow_pickle: bool = option(
        False,
        group=_LOADING,
        help="UNSAFE: let the transformers backend load pickled weights (pytorch_model.bin) "
        "when a directory has no safetensors; unpickling an untrusted file can run code",
    )


@dataclass(kw_only=True)
class WindowOptions:
    """How documents are cut into scored windows (ppl, leakage, correlate)."""

    window: Literal["report", "rolling", "packed"] = option(
        "report",
        choices=("report", "rolling", "packed"),
        group=_WINDOW,
        help="report: the authors' eval_loss.py (first max_tokens//3 characters, one window of at most max_tokens "
        "tokens, first token not predicted); rolling: whole documents in windows, lm-evaluation-harness style; "
        "packed: documents joined with EOS, cut like training batches",
    )
    max_tokens: int | None = option(
        None, group=_WINDOW, help="window size in tokens (default: 4096, capped at the model's maximum length)"
    )
    stride: int | None = option(
        None, group=_WINDOW, help="rolling: tokens newly predicted per window (default: max-tokens, disjoint windows)"
    )
    prefix: Literal["auto", "bos", "eos", "none"] = option(
        "auto",
        choices=("auto", "bos", "eos", "none"),
        group=_WINDOW,
        help="rolling: token placed before each document so its first token is predicted (auto: BOS, else EOS)",
    )
    token_budget: int | None = option(
        None,
        group=_WINDOW,
        help="packed: score only the first ceil(N / max-tokens) windows (a validation "
        "set's max_tokens in a training config)",
    )


_TASK_HELP = (
    "mmlu:DIR, ceval[:DIR], cmmlu[:DIR], gsm8k[:DIR] (repeatable); without a path the copy in "
    "$SKYLOOM_SHARED_DATA (default ../shared/data) is used"
)


@dataclass(kw_only=True)
class BenchOptions:
    """Which benchmark questions are asked, and how (bench, correlate)."""

    task: list[str] | None = option(None, append=True, metavar="NAME[:PATH]", help=_TASK_HELP)
    shots: int | None = option(
        None, help="few-shot exemplars (default: 5 for MMLU/C-Eval/CMMLU from each subject's dev file, 8 for GSM8K)"
    )
    limit: int | None = option(None, help="score only the first N questions of each subject")
    format: Literal["letter", "text"] = option(
        "letter",
        choices=("letter", "text"),
        help="multiple choice: score the answer letters after listed options (the report's setting) or the option "
        "texts as cloze continuations",
    )
    split: str | None = option(
        None, help="split folder to score (default: test, or val when test has no answers, as C-Eval)"
    )


_MODELS_HELP = MODEL_HELP + "; repeat for one table row per model"


@dataclass(kw_only=True)
class EvalPplConfig(WindowOptions, LoadingOptions):
    """`skyloom eval ppl`'s arguments."""

    model: list[str] = option(append=True, required=True, metavar="DIR", help=_MODELS_HELP)
    data: list[str] | None = option(
        None,
        append=True,
        metavar="NAME=PATH",
        help="an evaluation set (repeatable; default: Table 6's Tech/Movie/Gov./Game/Finance/General)",
    )
    field: str | None = option(None, help="JSON field holding the text (default: text, or question+answer)")
    limit: int | None = option(None, help="only the first N documents of each set")
    output: str | None = option(None, metavar="FILE", help="write the results as JSON")


@dataclass(kw_only=True)
class EvalLeakageConfig(WindowOptions, LoadingOptions):
    """`skyloom eval leakage`'s arguments."""

    model: list[str] = option(append=True, required=True, metavar="DIR", help=_MODELS_HELP)
    train: str | None = option(None, help="train split (default: $SKYLOOM_SHARED_DATA/gsm8k/train.jsonl)")
    test: str | None = option(None, help="test split (default: $SKYLOOM_SHARED_DATA/gsm8k/test.jsonl)")
    ref: str | None = option(
        None, help="reference set (default: $SKYLOOM_SHARED_DATA/skywork/mock_gsm8k_test_public.jsonl)"
    )
    field: str | None = option(
        None, help="JSON field holding the sample text (default: text, or question + ' ' + answer)"
    )
    limit: int | None = option(None, help="only the first N samples of each set")
    n_boot: int = option(1000, help="bootstrap replicates")
    confidence: float = option(0.95, help="interval coverage")
    seed: int = option(0, help="bootstrap seed")
    output: str | None = option(None, metavar="FILE", help="write the results as JSON")


@dataclass(kw_only=True)
class EvalBenchConfig(BenchOptions, LoadingOptions):
    """`skyloom eval bench`'s arguments."""

    model: str = option(required=True, metavar="DIR", help=MODEL_HELP)
    task: list[str] = option(append=True, required=True, metavar="NAME[:PATH]", help=_TASK_HELP)
    subjects: str | None = option(None, help="comma-separated subjects to score (default: all)")
    max_new_tokens: int = option(256, help="GSM8K: generation budget")
    temperature: float = option(0.0, help="GSM8K: 0 = greedy (the report's setting)")
    top_p: float = option(1.0, help="GSM8K sampling: nucleus mass")
    top_k: int = option(0, help="GSM8K sampling: keep the k best tokens (0: all)")
    seed: int = option(0, help="GSM8K sampling seed")
    log_samples: str | None = option(None, metavar="DIR", help="write every prompt and prediction to DIR/<task>.jsonl")
    overall_only: bool = option(False, help="print no per-subject table")
    output: str | None = option(None, metavar="FILE", help="write the results as JSON")
    allow_code_execution: bool = option(
        False,
        help="humaneval: EXECUTE model-generated code (each program in a separate process with a timeout, memory, "
        "file-size and process limits and no network where the kernel allows; NOT a security sandbox — use a "
        "container or VM). Code tasks refuse to run without it",
    )
    samples: int = option(1, help="humaneval: completions per problem (n of pass@k; sample with --temperature)")
    pass_k: str = option("1", metavar="K[,K…]", help="humaneval: the k of pass@k, each ≤ --samples")
    code_timeout: float = option(3.0, help="humaneval: wall-clock seconds per program")


@dataclass(kw_only=True)
class EvalCorrelateConfig(WindowOptions, LoadingOptions, BenchOptions):
    """`skyloom eval correlate`'s arguments."""

    run_dir: str = option(positional=True, metavar="RUN_DIR", help="a training run directory")
    metric: Literal["acc", "acc_norm", "acc_micro"] = option(
        "acc", choices=("acc", "acc_norm", "acc_micro"), help="which overall score to correlate"
    )
    data: list[str] | None = option(
        None,
        append=True,
        metavar="NAME=PATH",
        help="compute validation losses with `eval ppl` on these sets instead of reading metrics.jsonl",
    )
    field: str | None = option(None, help="JSON field holding the text (with --data)")
    limit_docs: int | None = option(None, help="only the first N documents of each --data set")
    recompute: bool = option(False, help="ignore recorded scores and losses")
    plot: str | None = option(None, metavar="PNG", help="plot file (default: RUN_DIR/eval/correlation.png)")
    output: str | None = option(None, metavar="FILE", help="JSON file (default: RUN_DIR/eval/correlation.json)")


def _friendly(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (missing files, malformed records, a missing optional extra) → one clear line, exit 2."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (ValueError, FileNotFoundError, ImportError) as err:
            print(f"skyloom: error: {err}", file=sys.stderr)
            return 2

    return run


def _load(args: argparse.Namespace, path: str):
    from skyloom.eval.backends import load_lm

    return load_lm(
        path,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        tokenizer=args.tokenizer,
        batch_tokens=args.batch_tokens,
        max_batch_size=args.max_batch_size,
        progress=not args.no_progress,
        allow_pickle=args.allow_pickle,
        verify=not args.no_verify,
    )


def _convention(args: argparse.Namespace, lm):
    from skyloom.eval.perplexity import WindowConvention

    max_tokens = args.max_tokens or min(4096, lm.max_length)
    if args.max_tokens is None and max_tokens < 4096 and args.window == "report":
        print(
            f"note: {lm.name} reads at most {lm.max_length} tokens, so windows are {max_tokens} tokens "
            f"(the report used 4096)",
            file=sys.stderr,
        )
    return WindowConvention(args.window, max_tokens, args.stride, args.prefix, args.token_budget)


def _parse_data(specs: list[str] | None, field: str | None, limit: int | None) -> dict[str, Any]:
    from skyloom.eval.textdata import read_documents, shared_data_dir

    if not specs:
        from skyloom.eval.perplexity import TABLE6_DOMAINS

        base = shared_data_dir()
        specs = [f"{name}={base / rel}" for name, rel in TABLE6_DOMAINS]
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).stem, spec
        if name in out:
            raise ValueError(f"--data: domain name {name!r} given twice")
        out[name] = read_documents(path, field=field, limit=limit)
    return out


def _write_json(path: str | None, payload: Any) -> None:
    if not path:
        return
    out = Path(path)
    bad = non_finite_key(payload)
    if bad is not None:  # json.dumps would write a bare NaN/Infinity, which is not JSON
        raise ValueError(f"cannot write {out}: the results hold a non-finite number at {bad}")
    text = json.dumps(payload, ensure_ascii=False, indent=2, default=_json_default, allow_nan=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out}", file=sys.stderr)


def non_finite_key(value: Any, where: str = "$") -> str | None:
    """The path (e.g. `$.domains.Tech.loss`) of the first NaN/±inf in a JSON-bound value, or None."""
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy / torch scalar
        value = value.item()
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} ({value})"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite_key(item, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}")
        if found is not None:
            return found
    return None


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _row_names(paths: list[str]) -> list[str]:
    names = [Path(p).name or p for p in paths]
    return names if len(set(names)) == len(names) else paths


def cmd_ppl(args: argparse.Namespace) -> int:
    from skyloom.eval.perplexity import evaluate_perplexity, format_details, format_table

    data = _parse_data(args.data, args.field, args.limit)
    results = {}
    for name, path in zip(_row_names(args.model), args.model):
        lm = _load(args, path)
        results[name] = evaluate_perplexity(lm, data, _convention(args, lm))
        results[name]["model"]["path"] = str(Path(path).resolve())
        conv = ", ".join(f"{k}={v}" for k, v in results[name]["convention"].items())
        print(f"\n{name} ({conv})\n\n{format_details(results[name])}")
    print("\n" + format_table(results, list(data)))
    _write_json(args.output, next(iter(results.values())) if len(results) == 1 else {"models": results})
    return 0


def cmd_leakage(args: argparse.Namespace) -> int:
    from skyloom.eval.leakage import format_table8, leakage
    from skyloom.eval.textdata import read_documents, shared_data_dir

    base = shared_data_dir()
    files = {
        "train": args.train or base / "gsm8k" / "train.jsonl",
        "test": args.test or base / "gsm8k" / "test.jsonl",
        "ref": args.ref or base / "skywork" / "mock_gsm8k_test_public.jsonl",
    }
    docs = {k: read_documents(v, field=args.field, limit=args.limit) for k, v in files.items()}
    results = {}
    for name, path in zip(_row_names(args.model), args.model):
        lm = _load(args, path)
        results[name] = leakage(
            lm,
            docs["train"],
            docs["test"],
            docs["ref"],
            _convention(args, lm),
            n_boot=args.n_boot,
            seed=args.seed,
            confidence=args.confidence,
        )
        results[name]["model"]["path"] = str(Path(path).resolve())
    print(format_table8(results))
    for name, r in results.items():
        print(
            f"{name}: {r['verdict']}  (samples train/test/ref: {r['samples']['train']:,}/"
            f"{r['samples']['test']:,}/{r['samples']['ref']:,}; {100 * r['confidence']:.0f}% bootstrap intervals)"
        )
    _write_json(args.output, next(iter(results.values())) if len(results) == 1 else {"models": results})
    return 0


def _sampling(args: argparse.Namespace):
    from skyloom.eval.lm import Sampling

    return Sampling(args.temperature, args.top_k, args.top_p, args.seed) if args.temperature > 0 else None


def _code_task(args: argparse.Namespace, spec):
    """A task that runs model-written code (humaneval), set up from the flags; refused without
    --allow-code-execution (lm-eval's convention), before any model is loaded."""
    from skyloom.eval.code_exec import CodeExecutionRefused, Limits
    from skyloom.eval.humaneval import parse_pass_k

    if not args.allow_code_execution:
        raise CodeExecutionRefused()
    task = spec.task
    task.allow_code_execution, task.samples = True, args.samples
    task.pass_k, task.limits = parse_pass_k(args.pass_k), Limits(timeout_s=args.code_timeout)
    return task


def cmd_bench(args: argparse.Namespace) -> int:
    from skyloom.eval.bench import format_results, parse_task, run_task, write_records
    from skyloom.eval.tasks import TaskOptions

    specs = [parse_task(t) for t in args.task]
    code_tasks = {s.name: _code_task(args, s) for s in specs if getattr(s.task, "executes_code", False)}
    lm = _load(args, args.model)  # after the refusal above: nothing is loaded for a run that cannot start
    results, all_records = {}, {}
    for spec in specs:
        if spec.name in code_tasks:
            options = TaskOptions(limit=args.limit, max_new_tokens=args.max_new_tokens, sampling=_sampling(args))
            result, records = code_tasks[spec.name].evaluate(lm, spec.path, options)
        else:
            result, records = run_task(
                lm,
                spec,
                shots=args.shots,
                limit=args.limit,
                fmt=args.format,
                split=args.split,
                subjects=args.subjects.split(",") if args.subjects else None,
                max_new_tokens=args.max_new_tokens,
                sampling=_sampling(args),
            )
        results[spec.name] = result
        all_records[spec.name] = records
        for line in result.get("warnings", []):
            print(f"warning: {line}", file=sys.stderr)
        if args.log_samples:
            write_records(Path(args.log_samples) / f"{spec.name}.jsonl", records)
    print(format_results(results, per_subject=not args.overall_only))
    payload = {"model": {**lm.describe(), "path": str(Path(args.model).resolve())}, "tasks": results}
    _write_json(args.output, payload)
    return 0


def cmd_correlate(args: argparse.Namespace) -> int:
    from skyloom.eval.bench import parse_task, run_task
    from skyloom.eval.correlate import collect, correlations, format_correlations, plot
    from skyloom.eval.perplexity import evaluate_perplexity

    run_dir = Path(args.run_dir)
    specs = [parse_task(t) for t in (args.task or [])]
    data = _parse_data(args.data, args.field, args.limit_docs) if args.data else None
    bench_settings = {
        "shots": args.shots,
        "limit": args.limit,
        "format": args.format,
        "split": args.split,
        "metric_source": "overall",
    }
    ppl_settings = {
        "data": args.data,
        "window": args.window,
        "max_tokens": args.max_tokens,
        "stride": args.stride,
        "prefix": args.prefix,
        "token_budget": args.token_budget,
        "field": args.field,
        "limit": args.limit_docs,
    }

    def run_bench(spec, ckpt: Path) -> dict[str, Any]:
        lm = _load(args, str(ckpt))
        return run_task(lm, spec, shots=args.shots, limit=args.limit, fmt=args.format, split=args.split)[0]

    def run_ppl(ckpt: Path) -> dict[str, Any]:
        lm = _load(args, str(ckpt))
        return evaluate_perplexity(lm, data, _convention(args, lm))

    val, scores, checkpoints = collect(
        run_dir,
        specs,
        bench_settings,
        run_bench,
        data,
        ppl_settings,
        run_ppl,
        metric=args.metric,
        recompute=args.recompute,
        progress=not args.no_progress,
    )
    if not val:
        raise ValueError(f"{run_dir}: no validation losses (no 'val' lines in metrics.jsonl); pass --data NAME=PATH")
    rows = correlations(val, scores, list(checkpoints))
    print(format_correlations(rows))
    out_dir = run_dir / "eval"
    png = plot(val, scores, rows, Path(args.plot) if args.plot else out_dir / "correlation.png", args.metric)
    print(f"wrote {png}", file=sys.stderr)
    payload = {
        "run_dir": str(run_dir.resolve()),
        "metric": args.metric,
        "steps": list(checkpoints),
        "val_loss": {k: {str(s): v for s, v in d.items()} for k, d in val.items()},
        "scores": {k: {str(s): v for s, v in d.items()} for k, d in scores.items()},
        "correlations": [
            {
                **r,
                "pearson": None if math.isnan(r["pearson"]) else r["pearson"],
                "spearman": None if math.isnan(r["spearman"]) else r["spearman"],
            }
            for r in rows
        ],
        "plot": str(png),
    }
    _write_json(args.output or str(out_dir / "correlation.json"), payload)
    return 0


def register(sub) -> None:
    group = add_group(sub, "eval", "evaluate a model: domain perplexity, leakage, few-shot benchmarks, correlation")

    ppl = add_command(
        group,
        "ppl",
        "language-model loss, perplexity and bits per byte per domain (the report's Table 6)",
        description=(
            "Loss (token-weighted mean nats/token), perplexity, bits per byte, tokens and documents per domain;\n"
            "the Average column is exp(mean of the domain losses). Default data: the authors' six Chinese\n"
            "domain sets (skywork/zh_*.jsonl). Inputs: JSONL/JSON with a text field, .txt (one document), or a\n"
            "skyloom token-shard directory.\n\n"
            "example: skyloom eval ppl --model runs/demo/checkpoints/step_00001000 --output ppl.json\n"
            "         skyloom eval ppl --model ckpt --data wiki=../shared/data/wikitext2/test.jsonl --window rolling"
        ),
    )
    add_config_arguments(ppl, EvalPplConfig)
    ppl.set_defaults(handler=_friendly(cmd_ppl))

    leak = add_command(
        group,
        "leakage",
        "train/test/reference losses and Δ1, Δ2 with bootstrap intervals (the report's Table 8)",
        description=(
            "L_train, L_test, L_ref = mean LM loss over each set's samples (question + ' ' + answer, or a\n"
            "'text' field); Δ1 = L_test − L_ref (clearly negative: test leaked), Δ2 = L_test − L_train (clearly\n"
            "positive: train split seen), seeded bootstrap intervals and a verdict (thresholds ±0.15 nats with\n"
            "the interval excluding 0; see docs/evaluation.md). Defaults: GSM8K train/test and the authors'\n"
            "GPT-4-written reference set.\n\n"
            "example: skyloom eval leakage --model ckpt --output leakage.json"
        ),
    )
    add_config_arguments(leak, EvalLeakageConfig)
    leak.set_defaults(handler=_friendly(cmd_leakage))

    bench = add_command(
        group,
        "bench",
        "few-shot benchmarks: MMLU/C-Eval/CMMLU by log-likelihood, GSM8K by generation",
        description=(
            "Multiple choice (MMLU-format CSVs: question, A-D, answer; K-shot from each subject's dev file):\n"
            "acc and length-normalised acc_norm, per subject and overall (mean over subjects; micro too).\n"
            "GSM8K: K-shot greedy generation, answer from '#### N', 'answer is N', else the last number.\n"
            "math:PATH (MATH): minerva_math 4-shot; the last \\boxed{} answer, equal as LaTeX or under sympy.\n"
            "humaneval:FILE: pass@k of completions run in a limited subprocess; EXECUTES MODEL CODE, so it\n"
            "refuses to start without --allow-code-execution (not a security sandbox: see docs/evaluation.md).\n"
            "The exact prompts are hashed (prompt_sha256) and can be written with --log-samples.\n\n"
            "example: skyloom eval bench --model ckpt --task ceval --task cmmlu --task gsm8k --output bench.json\n"
            "         skyloom eval bench --model hf_dir --task mmlu:data/mmlu --shots 5"
        ),
    )
    add_config_arguments(bench, EvalBenchConfig)
    bench.set_defaults(handler=_friendly(cmd_bench))

    corr = add_command(
        group,
        "correlate",
        "validation loss vs benchmark score across a run's checkpoints (the report's Figure 1)",
        description=(
            "For every RUN_DIR/checkpoints/step_XXXXXXXX: the benchmark score (recorded before, or evaluated and\n"
            "recorded under RUN_DIR/eval/) and the validation losses (metrics.jsonl 'val' lines at that step, or\n"
            "`eval ppl` on --data). Prints Pearson and Spearman coefficients per (validation set, task) and\n"
            "writes RUN_DIR/eval/correlation.json and correlation.png.\n\n"
            "example: skyloom eval correlate runs/demo --task ceval --limit 20"
        ),
    )
    add_config_arguments(corr, EvalCorrelateConfig)
    corr.set_defaults(handler=_friendly(cmd_correlate))
