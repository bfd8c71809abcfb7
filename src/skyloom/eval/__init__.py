"""The report's evaluations on any model (docs/evaluation.md).

lm.py               LanguageModel: score tokens, score continuations, generate (batched, deterministic)
backends.py         SkyloomLM, HuggingFaceLM, load_lm(path) picking one
textdata.py         evaluation inputs (JSONL/JSON/text files, token-shard directories)
perplexity.py       Table 6: per-domain loss / perplexity / bits per byte, window conventions
leakage.py          Table 8: L_train, L_test, L_ref, Δ1, Δ2, bootstrap intervals, verdict
tasks.py            the Task protocol (load → requests → score → aggregate) and the registry of task names
multiple_choice.py  MMLU / C-Eval / CMMLU by log-likelihood
gsm8k.py            GSM8K by generation and answer extraction
math.py             zero-shot math in a chat template (gsm8k-chat, math-zh), annotation checking
bench.py            `eval bench`: any registered task by NAME[:PATH], results tables
evaluator.py        Evaluator callback: registered tasks inside training, scores as metrics
correlate.py        Figure 1: validation loss vs benchmark score across a run's checkpoints
stats.py            Pearson, Spearman, bootstrap
commands.py         `skyloom eval ppl|leakage|bench|correlate`
"""

from __future__ import annotations

__all__ = ["load_lm"]


def load_lm(path, **kwargs):
    """Open a skyloom checkpoint or Hugging Face model directory as a `LanguageModel` (see backends.load_lm)."""
    from skyloom.eval.backends import load_lm as _load_lm

    return _load_lm(path, **kwargs)
