"""One language-model interface for every evaluation: score tokens, score continuations, generate text.

Evaluations (perplexity, leakage, benchmarks) talk only to `LanguageModel`; a backend (skyloom's own
`Transformer`, or a Hugging Face `transformers` model) supplies three hooks:

    _logits(ids)            right-padded [B, T] → logits [B, T, V] under a plain causal mask
    _start(ids, valid)      left-padded prompts → (logits of the last position [B, V], decoding state)
    _step(state, next_ids)  one token per row → (logits [B, V], new state)

and optionally `_hidden(ids)` / `_head(rows)` (final hidden states, then the output projection of some rows), with
which scoring projects only the positions it scores, a cache-sized chunk at a time, never [B, T, V] at once.

Everything else lives here once, so both backends batch, truncate, sample and stop identically:

* Batching sorts requests by length (longest first, so memory trouble shows up in the first batch),
  packs them under a token budget, pads, runs, and restores the caller's order. With right padding
  and a causal mask, real tokens never see pads, so padding/batching does not change any score
  (up to float rounding of different matrix shapes).
* Determinism: no randomness in scoring or greedy decoding; sampling uses one generator per request
  seeded from (seed, request index), so a request's sample does not depend on its batch-mates.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from skyloom.data.batch import IGNORE_INDEX
from skyloom.model.loss import token_loss

HEAD_CHUNK_ELEMENTS = 1 << 21  # float32 logits per output-projection chunk on a CPU: 8 MiB, cache-sized
HEAD_CHUNK_ELEMENTS_ACCELERATOR = 1 << 25  # on a GPU: large, so kernel launches stay few


def progress_bar(total: int, desc: str, enabled: bool):
    """Progress on stderr when enabled (a bar on a terminal, log lines elsewhere); a no-op object otherwise."""
    from skyloom.progress import Progress

    return Progress(total, desc, "seq", enabled=enabled, leave=False)


def length_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped into batches, longest first; a batch's padded size (rows × longest) stays within
    `batch_tokens` (a single over-long request still gets its own batch)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and ((len(current) + 1) * max(longest, 1) > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class Sampling:
    """How `generate` picks tokens: temperature 0 is greedy (argmax); otherwise top-k / top-p sampling."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0, got {self.top_k}")

    def pick(self, logits: torch.Tensor, generator: torch.Generator | None) -> int:
        """Next token for one row of logits [V]."""
        if self.temperature == 0.0:
            return int(torch.argmax(logits))
        scores = logits.float().cpu() / self.temperature
        if self.top_k:
            kth = torch.topk(scores, min(self.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, -math.inf)
        probs = torch.softmax(scores, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            drop = cumulative - sorted_probs >= self.top_p  # keep the smallest prefix reaching top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=generator))


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the earliest stop string, and whether one was found."""
    cut = min((pos for s in stop if s and (pos := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class LanguageModel(ABC):
    """A causal LM with its tokenizer; see the module docstring for what backends implement."""

    name: str
    max_length: int
    device: torch.device
    backend: str = "?"
    dtype: torch.dtype = torch.float32

    def __init__(self, batch_tokens: int = 8192, max_batch_size: int = 64, progress: bool = True):
        if batch_tokens <= 0 or max_batch_size <= 0:
            raise ValueError("batch_tokens and max_batch_size must be positive")
        self.batch_tokens = batch_tokens
        self.max_batch_size = max_batch_size
        self.progress = progress

    # ---- tokenizer -------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens kept, no clean-up of spaces."""

    @property
    @abstractmethod
    def eos_id(self) -> int | None: ...

    @property
    @abstractmethod
    def bos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int:
        """Filler for padded positions (never scored, never attended to by real tokens)."""
        return self.eos_id if self.eos_id is not None else 0

    @property
    def vocab_size(self) -> int | None:
        """Rows of the input embedding: ids from data files at or above it cannot be scored (None: unknown)."""
        return None

    @property
    def tokenizer_id(self) -> str | None:
        """The tokenizer's fingerprint as token shards record it (`TextTokenizer.tokenizer_id`); None: unknown."""
        return None

    def describe(self) -> dict[str, Any]:
        """What was evaluated, for results files."""
        return {
            "name": self.name,
            "backend": self.backend,
            "max_length": self.max_length,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    # ---- backend hooks ---------------------------------------------------------------------------
    @abstractmethod
    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] for right-padded ids [B, T] under a plain causal mask."""

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor | None:
        """Final hidden states [B, T, D] such that `_head` of a row gives that row of `_logits`, or None when the
        backend has no such split. With it, scoring projects only the positions it scores, a few rows at a time,
        instead of materialising [B, T, V] logits (the output projection and its softmax dominate small models)."""
        return None

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] of hidden-state rows [N, D] (backends whose `_hidden` returns a tensor)."""
        raise NotImplementedError

    @abstractmethod
    def _start(self, ids: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Left-padded prompts ids [B, P] with valid [B, P] (False = pad): last-position logits + state."""

    @abstractmethod
    def _step(self, state: Any, next_ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Feed one token per row [B]; logits [B, V] for the new position and the new state."""

    # ---- scoring ---------------------------------------------------------------------------------
    def _check_length(self, n: int, what: str) -> None:
        if n > self.max_length:
            raise ValueError(f"{what} of {n} tokens exceeds the model's maximum length {self.max_length}")

    @torch.inference_mode()
    def score(
        self, sequences: Sequence[Sequence[int]], desc: str = "scoring", last: Sequence[int] | None = None
    ) -> list[np.ndarray]:
        """Per-token log-probabilities: element t-1 of the result is log p(x_t | x_<t), t = 1 … n-1.

        The model reads x_0 … x_{n-2} (so a sequence may be max_length + 1 tokens long); the first token
        is context only. Cut longer documents into windows first (`perplexity.py`). With `last`, only the last
        last[i] log-probabilities of sequence i are computed (the context-only positions of overlapping windows
        cost no output projection) and the earlier elements are NaN.
        """
        inputs = [len(s) - 1 for s in sequences]
        for i, n in enumerate(inputs):
            self._check_length(n, f"sequence {i} (model input)")
        skip = [0] * len(sequences) if last is None else [max(n - k, 0) for n, k in zip(inputs, last)]
        out: list[np.ndarray] = [np.zeros(0, dtype=np.float64)] * len(sequences)
        bar = progress_bar(len(sequences), desc, self.progress)
        for batch in length_batches(inputs, self.batch_tokens, self.max_batch_size):
            longest = inputs[batch[0]]
            if longest < 1:
                bar.update(len(batch))
                continue
            ids = torch.full((len(batch), longest + 1), self.pad_id, dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : inputs[i] + 1] = torch.as_tensor(list(sequences[i]), dtype=torch.long)
            targets = ids[:, 1:].clone()
            for row, i in enumerate(batch):
                targets[row, max(inputs[i], 0) :] = IGNORE_INDEX  # padding: not scored
                targets[row, : skip[i]] = IGNORE_INDEX  # context only: not asked for
            nll = self._target_nll(ids[:, :-1].to(self.device), targets).cpu().double().numpy()
            for row, i in enumerate(batch):
                if inputs[i] >= 1:
                    out[i] = -nll[row, : inputs[i]]
                    out[i][: skip[i]] = np.nan
            bar.update(len(batch))
        bar.close()
        return out

    @torch.inference_mode()
    def loglikelihood(
        self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], desc: str = "log-likelihood"
    ) -> list[tuple[float, bool]]:
        """log p(continuation | context) and whether the continuation is the greedy one, per request.

        Contexts too long for the model lose their oldest tokens (left truncation). Requests whose model
        input is identical (e.g. single-token answer letters after the same prompt) share one forward pass.
        """
        inputs: dict[tuple[int, ...], list[int]] = {}
        plans: list[tuple[tuple[int, ...], int, list[int]]] = []
        for i, (context, continuation) in enumerate(requests):
            continuation = list(continuation)
            if not continuation:
                raise ValueError(f"request {i}: empty continuation")
            self._check_length(len(continuation), f"request {i}: continuation")
            if not context:
                raise ValueError(f"request {i}: needs at least one context token before the continuation")
            whole = list(context) + continuation
            model_input = tuple(whole[:-1][-self.max_length :])
            inputs.setdefault(model_input, []).append(i)
            plans.append((model_input, len(continuation), continuation))
        unique = list(inputs)
        lengths = [len(u) for u in unique]
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        bar = progress_bar(len(unique), desc, self.progress)
        for batch in length_batches(lengths, self.batch_tokens, self.max_batch_size):
            longest = lengths[batch[0]]
            ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
            for row, u in enumerate(batch):
                ids[row, : lengths[u]] = torch.as_tensor(unique[u], dtype=torch.long)
            # only the rows a continuation is scored at: the last k positions of each input (k: its longest one)
            spans = [(row, lengths[u], max(plans[i][1] for i in inputs[unique[u]])) for row, u in enumerate(batch)]
            positions = torch.cat([torch.arange(row * longest + n - k, row * longest + n) for row, n, k in spans])
            logprobs = torch.log_softmax(self._logits_at(ids.to(self.device), positions.to(self.device)).float(), -1)
            sums, greedy = [], []
            start = 0
            for (_, _, k_max), u in zip(spans, batch):
                for i in inputs[unique[u]]:
                    _, k, continuation = plans[i]
                    rows = logprobs[start + k_max - k : start + k_max]
                    target = torch.as_tensor(continuation, device=rows.device)
                    sums.append(rows.gather(-1, target[:, None]).sum())
                    greedy.append((rows.argmax(-1) == target).all())
                start += k_max
            # one host transfer per batch, not two per request
            for i, ll, hit in zip(
                (i for u in batch for i in inputs[unique[u]]), torch.stack(sums).tolist(), torch.stack(greedy).tolist()
            ):
                results[i] = (ll, hit)
            bar.update(len(batch))
        bar.close()
        return results

    def _target_nll(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """−log p(target) [B, T] float32 for right-padded ids [B, T] on the device and targets [B, T] on the host
        (0 where the target is IGNORE_INDEX): `token_loss` of the logits, through `_hidden` when the backend has it
        (then only the scored positions are projected, `head_chunk_elements` logits at a time; equal up to float
        rounding, tests/test_eval_lm.py)."""
        hidden = self._hidden(ids)
        if hidden is None:
            return token_loss(self._logits(ids), targets.to(ids.device), reduction="none")
        flat = targets.reshape(-1)
        positions = torch.nonzero(flat != IGNORE_INDEX).squeeze(1)
        nll = torch.zeros(flat.shape, dtype=torch.float32, device=ids.device)
        rows = self._head_rows()
        rows_of = hidden.reshape(-1, hidden.shape[-1])
        positions, flat = positions.to(ids.device), flat.to(ids.device)
        for start in range(0, len(positions), rows):
            at = positions[start : start + rows]
            nll[at] = F.cross_entropy(self._head(rows_of.index_select(0, at)).float(), flat[at], reduction="none")
        return nll.view(targets.shape)

    def _logits_at(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [N, V] at flat positions (row × T + t) of right-padded ids [B, T]."""
        hidden = self._hidden(ids)
        if hidden is None:
            logits = self._logits(ids)
            return logits.reshape(-1, logits.shape[-1]).index_select(0, positions)
        return self._head(hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions))

    def _head_rows(self) -> int:
        """Rows per output-projection chunk: small enough for the float32 logits to stay in cache on a CPU."""
        elements = HEAD_CHUNK_ELEMENTS if self.device.type == "cpu" else HEAD_CHUNK_ELEMENTS_ACCELERATOR
        return max(1, elements // (self.vocab_size or 32768))

    # ---- generation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int = 256,
        stop: Sequence[str] = (),
        sampling: Sampling | None = None,
        desc: str = "generating",
    ) -> list[str]:
        """Continue each prompt until EOS, a stop string (excluded from the result) or `max_new_tokens`.

        Prompts longer than `max_length - max_new_tokens` keep their last tokens (left truncation).
        """
        sampling = sampling or Sampling()
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        room = self.max_length - max_new_tokens
        if room < 1:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt (model maximum length {self.max_length})"
            )
        prompts = [list(p)[-room:] for p in prompts]
        if any(not p for p in prompts):
            raise ValueError("empty prompt: generation needs at least one token of context")
        lengths = [len(p) + max_new_tokens for p in prompts]
        outputs: list[str] = [""] * len(prompts)
        bar = progress_bar(len(prompts), desc, self.progress)
        for batch in length_batches(lengths, self.batch_tokens, self.max_batch_size):
            for i, text in zip(
                batch, self._generate_batch([prompts[i] for i in batch], batch, max_new_tokens, list(stop), sampling)
            ):
                outputs[i] = text
            bar.update(len(batch))
        bar.close()
        return outputs

    def _generate_batch(
        self, prompts: list[list[int]], indices: list[int], max_new_tokens: int, stop: list[str], sampling: Sampling
    ) -> list[str]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        valid = torch.zeros((len(prompts), width), dtype=torch.bool)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.as_tensor(p, dtype=torch.long)
            valid[row, width - len(p) :] = True
        generators = None
        if sampling.temperature > 0:
            generators = [torch.Generator().manual_seed(sampling.seed * 1_000_003 + i) for i in indices]
        logits, state = self._start(ids.to(self.device), valid.to(self.device))
        generated: list[list[int]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        done = [False] * len(prompts)
        for step in range(max_new_tokens):
            next_ids = []
            for row in range(len(prompts)):
                if done[row]:
                    next_ids.append(self.pad_id)
                    continue
                token = sampling.pick(logits[row], generators[row] if generators else None)
                next_ids.append(token)
                if token == self.eos_id:
                    done[row] = True
                    continue
                generated[row].append(token)
                if stop:
                    texts[row], hit = cut_at_stop(self.decode(generated[row]), stop)
                    done[row] = hit
            if all(done) or step == max_new_tokens - 1:
                break
            logits, state = self._step(state, torch.as_tensor(next_ids, dtype=torch.long, device=self.device))
        return [cut_at_stop(self.decode(g), stop)[0] for g in generated]
