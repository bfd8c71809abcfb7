"""`--model skyloom` for lm-evaluation-harness: lm-eval's three request types answered by skyloom's own scoring.

lm-eval hands over strings; this adapter tokenises and scores them exactly as `skyloom eval bench` / `eval ppl`
do, by calling the same code (`skyloom.eval.lm.LanguageModel` over `load_lm`, so a skyloom checkpoint or a
Hugging Face directory):

* `loglikelihood` — context and context + continuation encoded, the continuation's tokens taken from the joint
  encoding (`multiple_choice.split_pair`, lm-eval's rule), scored by `LanguageModel.loglikelihood`.
* `loglikelihood_rolling` — `perplexity.rolling_windows` (BOS, else EOS, before the text; disjoint windows of
  `max_tokens`, default min(4096, the model's length) as in `eval ppl --window rolling`) and `window_losses`.
* `generate_until` — `LanguageModel.generate` with lm-eval's `until` as stop strings (greedy unless
  `do_sample`), the decoding `eval bench --task gsm8k` uses.

lm-eval 0.4.13 discovers models only through its own registry (no entry-point group), so the adapter is
registered by `skyloom.eval.lm_eval_run.register_model()`; `python -m skyloom.eval.lm_eval_run …` does that,
then runs lm-eval's own CLI.

Model arguments (`--model_args checkpoint=DIR,backend=auto,dtype=auto,…`): `checkpoint` (or `pretrained`),
`backend`, `dtype`, `tokenizer`, `max_length`, `max_tokens` (rolling window), `batch_tokens`, `max_batch_size`,
`allow_pickle`, `progress`. lm-eval's `--device` is honoured (its default `cuda:0` falls back to the CPU when no
GPU is present, as lm-eval's own HF model does); its `--batch_size` is not: skyloom batches by a token budget.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM

from skyloom.eval.backends import load_lm
from skyloom.eval.lm import LanguageModel, Sampling
from skyloom.eval.multiple_choice import split_pair
from skyloom.eval.perplexity import resolve_prefix, rolling_windows, window_losses

log = logging.getLogger(__name__)


def _flag(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


def _device(device: str | None) -> str:
    """lm-eval's CLI asks for cuda:0 by default; on a machine without a GPU that means the CPU."""
    if device and str(device).startswith("cuda") and not torch.cuda.is_available():
        log.warning("skyloom: device %s requested but no GPU is available; running on the CPU", device)
        return "cpu"
    return device or "auto"


class SkyloomEvalLM(LM):
    """A skyloom checkpoint (or Hugging Face directory) as an lm-eval model."""

    def __init__(
        self,
        checkpoint: str | None = None,
        pretrained: str | None = None,
        backend: str = "auto",
        device: str | None = None,
        dtype: str = "auto",
        tokenizer: str | None = None,
        max_length: int | None = None,
        max_tokens: int | None = None,
        batch_tokens: int = 8192,
        max_batch_size: int | None = None,
        batch_size: Any = None,
        allow_pickle: Any = False,
        progress: Any = True,
        lm: LanguageModel | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        if unused:
            log.warning("skyloom: ignoring model arguments %s", ", ".join(sorted(unused)))
        if lm is None:
            path = checkpoint or pretrained
            if not path:
                raise ValueError(
                    "--model skyloom needs --model_args checkpoint=DIR (a skyloom checkpoint or HF directory)"
                )
            lm = load_lm(
                path,
                backend=backend,
                device=_device(device),
                dtype=dtype,
                tokenizer=tokenizer,
                max_length=int(max_length) if max_length else None,
                allow_pickle=_flag(allow_pickle),
                batch_tokens=int(batch_tokens),
                max_batch_size=int(max_batch_size or 64),
                progress=_flag(progress),
            )
        self.lm = lm
        self.max_tokens = int(max_tokens) if max_tokens else min(4096, lm.max_length)
        if not 2 <= self.max_tokens <= lm.max_length:
            raise ValueError(f"max_tokens={self.max_tokens} must be in [2, the model's length {lm.max_length}]")

    # ---- lm-eval's request types ------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is greedy) per request, tokenised as `eval bench` tokenises."""
        pairs = [tuple(r.args) for r in requests]
        contexts = sorted({c for c, _ in pairs if c})
        context_ids = dict(zip(contexts, self.lm.encode_batch(contexts)))
        whole_ids = self.lm.encode_batch([c + k for c, k in pairs])
        prefix = None
        encoded = []
        for (context, continuation), whole in zip(pairs, whole_ids):
            if not context:  # nothing to condition on: the rolling prefix token (BOS, else EOS) stands in
                prefix = prefix if prefix is not None else resolve_prefix(self.lm, "auto")
                encoded.append(([prefix], self.lm.encode(continuation)))
                continue
            ids = context_ids[context]
            encoded.append((ids, split_pair(ids, whole, lambda k=continuation: self.lm.encode(k))))
        results = self.lm.loglikelihood(encoded, desc="lm-eval loglikelihood")
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, every token predicted once (`eval ppl --window rolling`)."""
        texts = [r.args[0] for r in requests]
        prefix = resolve_prefix(self.lm, "auto")
        per_doc = [rolling_windows(ids, self.max_tokens, None, prefix) for ids in self.lm.encode_batch(texts)]
        losses = window_losses(self.lm, [w for ws in per_doc for w in ws], desc="lm-eval rolling")
        results, k = [], 0
        for request, windows in zip(requests, per_doc):
            total = -float(losses[k : k + len(windows)].sum())
            k += len(windows)
            if not math.isfinite(total):
                raise ValueError(f"{self.lm.name}: non-finite log-likelihood on a document (try dtype=float32)")
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return results

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Completions stopped at lm-eval's `until` strings, EOS or `max_gen_toks`; requests sharing settings run
        together."""
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        outputs: list[str] = [""] * len(requests)
        for members in groups.values():
            kwargs = dict(requests[members[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            prompts = self.lm.encode_batch([requests[i].args[0] for i in members])
            texts = self.lm.generate(prompts, max_new_tokens=max_new, stop=until, sampling=self._sampling(kwargs))
            for i, text in zip(members, texts):
                outputs[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return outputs

    @staticmethod
    def _sampling(kwargs: dict[str, Any]) -> Sampling:
        """Greedy unless `do_sample` (lm-eval's convention); then temperature / top_k / top_p / seed."""
        if not _flag(kwargs.get("do_sample", False)):
            return Sampling()
        return Sampling(
            temperature=float(kwargs.get("temperature", 1.0)),
            top_k=int(kwargs.get("top_k") or 0),
            top_p=float(kwargs.get("top_p") or 1.0),
            seed=int(kwargs.get("seed") or 0),
        )

    # ---- what lm-eval records -------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return f"skyloom:{self.lm.tokenizer_id or self.lm.name}"

    def get_model_info(self) -> dict[str, Any]:
        return {"skyloom": self.lm.describe(), "rolling_max_tokens": self.max_tokens}
