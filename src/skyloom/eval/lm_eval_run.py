"""`python -m skyloom.eval.lm_eval_run [lm-eval arguments]` — lm-evaluation-harness's own CLI, plus skyloom.

lm-eval 0.4.13 finds models only in its own registry (no plug-in entry points), so a plain `lm_eval --model
skyloom` cannot know the adapter. This runs lm-eval's CLI unchanged after two additions:

* `--model skyloom` is registered (lazily: skyloom's model code loads only when that model is asked for);
* `--include_path` defaults to skyloom's task folder (`skyloom.eval.lm_eval_tasks`) when not given, so
  `--tasks skyloom_ceval,skyloom_table6,…` resolve (a folder of your own replaces it: lm-eval takes one path).

    python -m skyloom.eval.lm_eval_run --model skyloom --model_args checkpoint=runs/x/checkpoints/step_00001000 \\
        --tasks skyloom_ceval --metadata ceval_dir=data/ceval --output_path out/
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from skyloom.eval.lm_eval_tasks import tasks_dir

ADAPTER = "skyloom.eval.lm_eval_model:SkyloomEvalLM"


def register_model() -> None:
    """`--model skyloom` in lm-eval's registry, after its built-in models (lm-eval loads those only into an empty
    registry, so registering first would hide `hf`, `vllm` …)."""
    import lm_eval.models  # noqa: F401
    from lm_eval.api.registry import model_registry

    if "skyloom" not in model_registry:
        model_registry.register("skyloom", target=ADAPTER)


def with_task_folder(argv: Sequence[str]) -> list[str]:
    """`argv` plus `--include_path <skyloom's tasks>` unless it names one (or asks for help)."""
    args = list(argv)
    if any(a == "--include_path" or a.startswith("--include_path=") for a in args):
        return args
    if not args or args[0] in ("-h", "--help") or args == ["run"]:
        return args
    return [*args, "--include_path", str(tasks_dir())]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError:
        print("skyloom: error: lm-evaluation-harness is not installed: pip install 'skyloom[bench]'", file=sys.stderr)
        return 2
    register_model()
    sys.argv = ["lm-eval", *with_task_folder(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except (OSError, ValueError) as err:  # a missing data folder, an unknown task or model: named, not a traceback
        print(f"skyloom: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
