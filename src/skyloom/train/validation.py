"""Validation loss on held-out sets — one definition shared by training and `skyloom eval ppl`.

The convention (deterministic, so curves compare across runs and checkpoints):

1. A set's token stream: a token-shard directory read from its first token; or text files tokenized with the
   run's tokenizer — files in sorted order (globs expanded and sorted), a `.txt` file is one document (its
   whole text), a `.jsonl`/`.json` file one document per non-empty line (the `text_key` field; an empty
   string is no document, a null or non-string one is malformed), `.gz` decompressed; every document
   is followed by the tokenizer's EOS id; documents are concatenated in that order.
2. Windows: non-overlapping chunks of `seq_len + 1` tokens from the start of the stream — window i is tokens
   [i·(L+1), (i+1)·(L+1)); an incomplete tail is dropped. The budget `max_tokens` keeps the first
   ceil(max_tokens / L) windows.
3. Loss: inputs are a window's first L tokens, targets its last L (every position predicted, positions 0…L−1,
   plain causal attention). Mean loss = sum of token cross-entropies (natural log) over all targets of all
   windows / number of targets (a token-weighted mean); perplexity = exp(mean loss).
"""

from __future__ import annotations

import glob
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from skyloom.data.batch import IGNORE_INDEX
from skyloom.model.loss import token_loss


def expand_paths(patterns: Sequence[str] | str) -> list[Path]:
    """Globs and plain paths → sorted existing files (a directory means every file directly inside it)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files: set[Path] = set()
    for pattern in patterns:
        pattern = expand_placeholders(pattern)
        for hit in glob.glob(pattern, recursive=True):
            p = Path(hit)
            if p.is_dir():
                files.update(q for q in p.iterdir() if q.is_file())
            elif p.is_file():
                files.add(p)
    return sorted(files)


def expand_placeholders(pattern: str) -> str:
    """`${stdlib}` → the directory of Python's standard library sources (real text present everywhere)."""
    if "${stdlib}" in pattern:
        import sysconfig

        pattern = pattern.replace("${stdlib}", sysconfig.get_paths()["stdlib"])
    return str(Path(pattern).expanduser())


def iter_documents(path: Path, text_key: str | Sequence[str] = "text") -> Iterable[str]:
    """Documents of one text file, decompressed when its name ends in `.gz`: `.jsonl`/`.json` → one per line,
    from the first of the `text_key` field names (a name or a list of names) that the record has; any other file
    → its whole text. Malformed input raises `InputError` naming FILE:LINE (the rules of tokenizer/corpus.py):
    bad JSON or UTF-8, a record whose text is null or not a string, a damaged `.gz`. Empty text is left out."""
    from skyloom.tokenizer.corpus import InputError, iter_records, read_text_file, record_text

    keys = [text_key] if isinstance(text_key, str) else list(text_key)
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    if not name.endswith((".jsonl", ".json")):
        yield read_text_file(path, errors="replace")
        return
    for lineno, record in iter_records(path):
        key = next((k for k in keys if isinstance(record, dict) and k in record), None)
        if key is None:
            raise InputError(path, lineno, f"none of the fields {keys} (set text_key)")
        text = record_text(record, [key], path, lineno)  # null or not a string: malformed, never skipped
        if text:
            yield text


def tokenize_files(files: Sequence[Path], tokenizer, text_key: str = "text", batch: int = 512) -> np.ndarray:
    """The concatenated token stream of `files` (each document + EOS), as int64."""
    eos = tokenizer.eos_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.source} has no eos_token (tokenizer_config.json)")
    parts: list[np.ndarray] = []
    pending: list[str] = []

    def flush() -> None:
        for ids in tokenizer.encode_batch(pending):
            parts.append(np.asarray(ids + [eos], dtype=np.int64))
        pending.clear()

    for path in files:
        for doc in iter_documents(path, text_key):
            pending.append(doc)
            if len(pending) >= batch:
                flush()
    flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def make_windows(stream: np.ndarray, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping [n, seq_len+1] windows from the start of `stream`, limited to ceil(max_tokens/seq_len)."""
    n = len(stream) // (seq_len + 1)
    if max_tokens is not None:
        n = min(n, math.ceil(max_tokens / seq_len))
    return torch.from_numpy(np.asarray(stream[: n * (seq_len + 1)], dtype=np.int64).reshape(n, seq_len + 1))


def load_stream(
    path: str,
    tokenizer=None,
    text_key: str | Sequence[str] = "text",
    max_tokens: int | None = None,
    seq_len: int | None = None,
    fallback: Sequence[str] = (),
    vocab_size: int | None = None,
    what: str | None = None,
) -> np.ndarray:
    """A validation set's token stream: a token-shard directory, or text files tokenized on the fly. `fallback`
    stands in only when the data `path` points into is absent as a whole, with a note; a `path` that matches
    nothing while its directory exists is a typo, refused naming `WHAT.path` (train/prepare.py's rule for `raw:`).
    Shards packed with another tokenizer than `tokenizer`, or for more than the model's `vocab_size` entries, are
    refused (`TokenSource.check_model_fit`)."""
    p = Path(expand_placeholders(path))
    if p.is_dir() and (p / "index.json").is_file():
        from skyloom.data.shards import TokenSource

        source = TokenSource(p)
        limit = vocab_size if vocab_size is not None else getattr(tokenizer, "vocab_size", None)
        if limit is not None:
            source.check_model_fit(
                what or f"validation set {path}",
                limit,
                getattr(tokenizer, "tokenizer_id", None),
                str(getattr(tokenizer, "source", "") or ""),
            )
        n = len(source)
        if max_tokens is not None and seq_len is not None:
            n = min(n, math.ceil(max_tokens / seq_len) * (seq_len + 1))
        return np.asarray(source.read(0, n), dtype=np.int64)
    from skyloom.train.prepare import _resolve_files

    files = _resolve_files([path], list(fallback), f"{what}.path" if what else "")
    if tokenizer is None:
        raise ValueError(f"validation set {path} is raw text: the run needs data.tokenizer to tokenize it")
    return tokenize_files(files, tokenizer, text_key)


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    windows: torch.Tensor | Sequence[torch.Tensor],
    batch_size: int = 8,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, int]:
    """(token-weighted mean cross-entropy, number of predicted tokens) over [n, L+1] windows (module docstring).

    The model is put in eval mode for the call and restored afterwards. Targets equal to -100 are ignored.
    """
    total, count = _loss_sums(model, windows, batch_size, device, autocast_dtype)
    return (total / count if count else float("nan")), count


@torch.no_grad()
def _loss_sums(model, windows, batch_size, device, autocast_dtype) -> tuple[float, int]:
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if not isinstance(windows, torch.Tensor):
        windows = torch.stack(list(windows)) if len(windows) else torch.zeros(0, 2, dtype=torch.long)
    total, count = windowed_loss_sums(windows, batch_size, device, autocast_dtype, model, [model])
    return float(total), count


@torch.no_grad()
def windowed_loss_sums(
    windows: torch.Tensor,
    batch_size: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    logits_of: Callable[[torch.Tensor], torch.Tensor | None],
    modules: Sequence[torch.nn.Module],
) -> tuple[torch.Tensor, int]:
    """The loss loop of the convention (module docstring, step 3): (sum of token losses as a float64 tensor,
    target count) over [n, L+1] windows in batches of `batch_size`. `logits_of(inputs)` gives a batch's logits —
    or None on a process that does not compute them (a pipeline's non-last stage, which only counts): one loop for
    a whole model and for pipeline stages. `modules` are in eval mode for the call and restored afterwards; the
    forward runs under autocast, the loss outside it."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    try:
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size].to(device)
            inputs, targets = chunk[:, :-1], chunk[:, 1:]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = logits_of(inputs)
            if logits is not None:
                total += token_loss(logits, targets).double()
            count += int((targets != IGNORE_INDEX).sum())
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return total, count


class ValidationMonitor:
    """The run's named held-out sets, tokenized once; `evaluate()` → {name: (loss, ppl, tokens)}.

    With several data-parallel ranks each evaluates windows rank::world and the sums are added, so the result is
    the same as one process up to float summation order. Under FSDP every rank evaluates every window (the
    sharded forward needs all ranks in step).
    """

    def __init__(self, sets: dict, seq_len: int, tokenizer=None, batch_size: int = 8, vocab_size: int | None = None):
        self.batch_size = batch_size
        self.windows: dict[str, torch.Tensor] = {}
        for name, cfg in sets.items():
            stream = load_stream(
                cfg.path,
                tokenizer,
                cfg.text_key,
                cfg.max_tokens,
                seq_len,
                cfg.fallback,
                vocab_size=vocab_size,
                what=f"validation.sets.{name}",
            )
            windows = make_windows(stream, seq_len, cfg.max_tokens)
            if len(windows) == 0:
                raise ValueError(
                    f"validation set '{name}' ({cfg.path}): {len(stream)} tokens, fewer than one "
                    f"window of seq_len+1 = {seq_len + 1}"
                )
            self.windows[name] = windows

    def evaluate(
        self, model, device, autocast_dtype=None, rank: int = 0, world_size: int = 1, split: bool = True, loss_sums=None
    ) -> dict[str, dict]:
        """`loss_sums(windows, batch_size, device, autocast_dtype) → (total, count)` replaces the plain forward
        (a pipeline's, `Pipeline.loss_sums`); it must return the sums of all the windows it is given."""
        from skyloom.train.distributed import all_reduce_sum

        out = {}
        for name, windows in self.windows.items():
            part = windows[rank::world_size] if split else windows
            if loss_sums is not None:
                total, count = loss_sums(part, self.batch_size, device, autocast_dtype)
            else:
                total, count = _loss_sums(model, part, self.batch_size, device, autocast_dtype)
            if split and world_size > 1:
                t = all_reduce_sum(torch.tensor([total, float(count)], dtype=torch.float64, device=device))
                total, count = float(t[0]), int(t[1])
            loss = total / count
            out[name] = {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "eval_tokens": count}
        return out
