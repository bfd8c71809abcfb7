"""Language-model loss and perplexity per domain — the report's Table 6 (§4.3) and its §2.2 monitoring.

Which tokens are predicted, and with what context, is a *window convention*; three are supported:

`report` (default) — the report authors' script (SkyworkAI/Skywork `eval/eval_loss.py`, run by
    `bash_scripts/skywork_eval_loss.sh` with `--max-tokens 4096`): each document's text is cut to its
    first `max_tokens // 3` characters, tokenised without special tokens (no BOS), cut to `max_tokens`
    tokens, and scored in one window: tokens 2 … n are predicted from everything before them; the first
    token is context only. A document contributes n − 1 predicted tokens. (The authors' batched script
    additionally scores one padding token after every document shorter than the longest of its batch while
    not counting it in the token total — a batch-dependent artefact not reproduced here.)
`rolling` — the whole document, as lm-evaluation-harness `loglikelihood_rolling`: a prefix token (BOS,
    else EOS: `prefix`) is placed before the text so that every text token is predicted; windows of
    `max_tokens` inputs each predict the next `stride` not-yet-predicted tokens, with the preceding tokens
    (up to the window size) as context. `stride = max_tokens` (default) gives disjoint windows and is
    exactly lm-eval's convention; a smaller stride gives every prediction more context.
`packed` — how a training run's validation monitor reads a held-out set (the same definition as
    `skyloom.train.validation`): the documents concatenated, each followed by EOS (token-shard documents
    already end with it; empty texts are skipped), cut from the first token into non-overlapping windows of
    `max_tokens + 1` tokens, an incomplete tail dropped; a window's first `max_tokens` tokens are the input
    and its last `max_tokens` the targets (the first token of each window is context only). A token budget
    (`budget`, the monitor's per-set `max_tokens`) keeps the first ceil(budget / max_tokens) windows.

Loss of a domain = Σ NLL (nats) / number of predicted tokens (token-weighted mean); ppl = exp(loss).
Bits per byte = Σ NLL / (ln 2 · UTF-8 bytes of the text the windows cover), comparable across tokenizers.
The Table-6 "Average" column = exp(mean of the per-domain losses), the geometric mean of the perplexities.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from skyloom.data.shards import check_token_ids
from skyloom.eval.lm import LanguageModel
from skyloom.eval.textdata import Documents

CONVENTIONS = ("report", "rolling", "packed")
PREFIXES = ("auto", "bos", "eos", "none")

# The six Chinese domain sets of Table 6 (the authors' release), in the table's column order.
TABLE6_DOMAINS = [
    ("Tech", "skywork/zh_tech.jsonl"),
    ("Movie", "skywork/zh_movie.jsonl"),
    ("Gov.", "skywork/zh_government.jsonl"),
    ("Game", "skywork/zh_game.jsonl"),
    ("Finance", "skywork/zh_finance.jsonl"),
    ("General", "skywork/zh_general.jsonl"),
]


@dataclass(frozen=True)
class Window:
    """Tokens `ids` (the model reads ids[:-1] and predicts ids[1:]); the last `n_predict` predictions count."""

    ids: tuple[int, ...]
    n_predict: int


@dataclass(frozen=True)
class WindowConvention:
    kind: Literal["report", "rolling", "packed"] = "report"
    max_tokens: int = 4096
    stride: int | None = None  # rolling: tokens newly predicted per window (default max_tokens)
    prefix: Literal["auto", "bos", "eos", "none"] = "auto"  # rolling: token placed before the text
    budget: int | None = None  # packed: predicted-token budget, ceil(budget / max_tokens) windows

    def __post_init__(self) -> None:
        if self.kind not in CONVENTIONS:
            raise ValueError(f"unknown window convention {self.kind!r}; choose {', '.join(CONVENTIONS)}")
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must be ≥ 2, got {self.max_tokens}")
        if self.stride is not None and not 1 <= self.stride <= self.max_tokens:
            raise ValueError(f"stride must be in [1, max_tokens={self.max_tokens}], got {self.stride}")
        if self.prefix not in PREFIXES:
            raise ValueError(f"unknown prefix {self.prefix!r}; choose {', '.join(PREFIXES)}")
        if self.budget is not None and (self.kind != "packed" or self.budget < 1):
            raise ValueError("a token budget applies to the packed convention only and must be positive")

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        if self.kind == "rolling":
            d["stride"] = self.stride or self.max_tokens
        else:
            d.pop("stride")
            d.pop("prefix")
        if self.budget is None:
            d.pop("budget")
        return d


def report_text(text: str, max_tokens: int) -> str:
    """The authors' character cut: the first max_tokens // 3 characters."""
    return text[: max_tokens // 3]


def report_windows(ids: Sequence[int], max_tokens: int) -> list[Window]:
    """One window over the first `max_tokens` tokens; all but the first token predicted."""
    ids = tuple(ids[:max_tokens])
    return [Window(ids, len(ids) - 1)] if len(ids) >= 2 else []


def rolling_windows(
    ids: Sequence[int], max_tokens: int, stride: int | None = None, prefix_id: int | None = None
) -> list[Window]:
    """Windows that predict every token of `ids` once (all but the first when there is no prefix token).

    s = [prefix] + ids. The first window predicts s[1 : max_tokens + 1] from s[: max_tokens]; each later
    window predicts the next `stride` tokens from up to `max_tokens` tokens before each of them.
    """
    stride = stride or max_tokens
    s = ([prefix_id] if prefix_id is not None else []) + list(ids)
    windows: list[Window] = []
    if len(s) < 2:
        return windows
    end = min(len(s), max_tokens + 1)  # s[1:end] are predicted by the first window
    windows.append(Window(tuple(s[:end]), end - 1))
    while end < len(s):
        new_end = min(len(s), end + stride)
        begin = max(0, new_end - 1 - max_tokens)  # the model input s[begin:new_end-1] is ≤ max_tokens
        windows.append(Window(tuple(s[begin:new_end]), new_end - end))
        end = new_end
    return windows


def packed_windows(stream: Sequence[int], max_tokens: int, budget: int | None = None) -> list[Window]:
    """Non-overlapping windows of max_tokens + 1 tokens from the stream's start; the tail is dropped;
    with a token budget only the first ceil(budget / max_tokens) windows."""
    size = max_tokens + 1
    n = len(stream) // size
    if budget is not None:
        n = min(n, math.ceil(budget / max_tokens))
    return [Window(tuple(stream[i * size : (i + 1) * size]), max_tokens) for i in range(n)]


def window_losses(lm: LanguageModel, windows: Sequence[Window], desc: str = "scoring") -> np.ndarray:
    """Σ NLL (nats) of each window's counted predictions."""
    logprobs = lm.score([w.ids for w in windows], desc=desc, last=[w.n_predict for w in windows])
    return np.array(
        [-float(lp[len(lp) - w.n_predict :].sum()) if w.n_predict else 0.0 for lp, w in zip(logprobs, windows)],
        dtype=np.float64,
    )


@dataclass
class DocumentScores:
    """Per-document totals: NLL in nats, predicted tokens, UTF-8 bytes of the covered text."""

    nll: np.ndarray
    tokens: np.ndarray
    bytes: np.ndarray

    @property
    def loss(self) -> float:
        total = int(self.tokens.sum())
        return float(self.nll.sum() / total) if total else float("nan")


def resolve_prefix(lm: LanguageModel, prefix: str) -> int | None:
    if prefix == "none":
        return None
    if prefix == "bos" or (prefix == "auto" and lm.bos_id is not None):
        if lm.bos_id is None:
            raise ValueError(f"{lm.name}: the tokenizer has no BOS token (use --prefix eos or none)")
        return lm.bos_id
    if lm.eos_id is None:
        raise ValueError(f"{lm.name}: the tokenizer has neither BOS nor EOS for the rolling prefix (use --prefix none)")
    return lm.eos_id


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def check_data_fits(lm: LanguageModel, docs: Documents, ids: Sequence[Sequence[int]], name: str) -> None:
    """Refuse an evaluation set the model cannot read correctly, naming the set and its file: token shards packed
    with another tokenizer or for a bigger vocabulary (the check training runs too), and any id outside the
    model's vocabulary (an IndexError, or a device assert on GPU, otherwise)."""
    vocab = lm.vocab_size
    if vocab is None:
        return
    if docs.shards is not None:
        docs.shards.check_model_fit(f"set '{name}'", vocab, lm.tokenizer_id, lm.name)
    for i, doc in enumerate(ids):
        if len(doc) and (max(doc) >= vocab or min(doc) < 0):
            if docs.shards is not None:
                docs.shards.document(i)  # reads again under the vocabulary limit: the error names the shard file
            check_token_ids(np.asarray(doc), vocab, f"set '{name}' ({docs.source}), document {i}")


def unscorable_reason(
    ids: Sequence[Sequence[int]], texts: Sequence[str] | None, convention: WindowConvention, prefixed: bool
) -> str:
    """Why a set yields no predicted token under `convention` (its loss would be 0/0 = NaN)."""
    n = len(ids)
    if n == 0:
        return "no documents"
    docs = f"{n:,} document{'s' if n != 1 else ''}"
    empty = sum(1 for d in ids if len(d) == 0)
    if convention.kind == "packed":
        if texts is None:
            stream, eos = sum(len(d) for d in ids), ""
        else:  # empty texts are skipped, every other document gets its EOS
            stream, eos = sum(len(d) + 1 for d, t in zip(ids, texts) if t), " with EOS"
        return (
            f"{docs} make {stream:,} tokens{eos}, fewer than one window of max_tokens + 1 = "
            f"{convention.max_tokens + 1:,}"
        )
    if prefixed:
        return f"{docs}, all empty"
    return (
        f"{docs}, all shorter than 2 tokens"
        + (f" ({empty:,} empty)" if empty else "")
        + " (a document's first token is context only)"
    )


def score_documents(
    lm: LanguageModel, docs: Documents, convention: WindowConvention, desc: str = "scoring", name: str | None = None
) -> DocumentScores:
    """Score every document of one evaluation set under `convention`.

    A set the model cannot read (`check_data_fits`), with nothing to score, or on which the model gives a
    non-finite loss is an error naming the set (`name`, default its file), never a NaN in a results table.
    """
    if convention.max_tokens > lm.max_length:
        raise ValueError(
            f"max_tokens={convention.max_tokens} exceeds {lm.name}'s maximum length {lm.max_length}; "
            f"pass --max-tokens {lm.max_length} or less"
        )
    name = name or str(docs.source)
    kind, L = convention.kind, convention.max_tokens
    if docs.texts is not None:
        texts = [report_text(t, L) for t in docs.texts] if kind == "report" else list(docs.texts)
        ids = lm.encode_batch(texts)
    else:
        ids = [list(d) for d in docs.token_ids or []]
        texts = None
    check_data_fits(lm, docs, ids, name)
    prefix_id = resolve_prefix(lm, convention.prefix) if kind == "rolling" else None
    scores = _score(lm, ids, texts, convention, desc, prefix_id)
    if int(scores.tokens.sum()) == 0:
        reason = unscorable_reason(ids, texts, convention, prefix_id is not None)
        raise ValueError(f"set '{name}' ({docs.source}) has no scorable tokens: {reason}")
    bad = np.flatnonzero(~np.isfinite(scores.nll))
    if len(bad):
        raise ValueError(
            f"set '{name}' ({docs.source}): {lm.name} gave a non-finite loss ({scores.nll[bad[0]]}) on "
            f"{len(bad):,} document(s), the first is document {int(bad[0])}; the weights are broken or "
            "the dtype overflows (try --dtype float32)"
        )
    return scores


def _score(
    lm: LanguageModel,
    ids: list[list[int]],
    texts: list[str] | None,
    convention: WindowConvention,
    desc: str,
    prefix_id: int | None,
) -> DocumentScores:
    kind, L = convention.kind, convention.max_tokens

    def covered_bytes(i: int, kept: Sequence[int], full: bool) -> int:
        if texts is not None and full:
            return _utf8_len(texts[i])
        return _utf8_len(lm.decode(kept))

    n = len(ids)
    if kind == "packed":
        return _score_packed(lm, ids, texts, L, desc, convention.budget)

    per_doc: list[list[Window]] = []
    sizes = np.zeros(n, dtype=np.int64)
    for i, doc in enumerate(ids):
        if kind == "report":
            per_doc.append(report_windows(doc, L))
            sizes[i] = covered_bytes(i, doc[:L], len(doc) <= L)
        else:
            per_doc.append(rolling_windows(doc, L, convention.stride, prefix_id))
            sizes[i] = covered_bytes(i, doc, True)
    flat = [w for ws in per_doc for w in ws]
    losses = window_losses(lm, flat, desc=desc)
    nll = np.zeros(n)
    tokens = np.zeros(n, dtype=np.int64)
    k = 0
    for i, ws in enumerate(per_doc):
        nll[i] = losses[k : k + len(ws)].sum()
        tokens[i] = sum(w.n_predict for w in ws)
        k += len(ws)
    return DocumentScores(nll, tokens, sizes)


def _score_packed(
    lm: LanguageModel,
    ids: list[list[int]],
    texts: list[str] | None,
    max_tokens: int,
    desc: str,
    budget: int | None = None,
) -> DocumentScores:
    """The `packed` convention; each prediction is credited to the document its target token belongs to."""
    eos = lm.eos_id
    if texts is not None and eos is None:
        raise ValueError(f"{lm.name}: the packed convention needs an EOS token between documents")
    stream: list[int] = []
    owner: list[int] = []
    for i, doc in enumerate(ids):
        if texts is not None:
            if not texts[i]:
                continue
            doc = list(doc) + [eos]
        stream += doc
        owner += [i] * len(doc)
    windows = packed_windows(stream, max_tokens, budget)
    logprobs = lm.score([w.ids for w in windows], desc=desc)
    n = len(ids)
    nll = np.zeros(n)
    tokens = np.zeros(n, dtype=np.int64)
    size = max_tokens + 1
    for k, lp in enumerate(logprobs):
        targets = np.asarray(owner[k * size + 1 : (k + 1) * size])
        np.add.at(nll, targets, -lp)
        np.add.at(tokens, targets, 1)
    covered = len(windows) * size
    sizes = np.zeros(n, dtype=np.int64)
    start = 0
    for i, doc in enumerate(ids):
        if texts is not None and not texts[i]:
            continue
        end = start + len(doc) + (1 if texts is not None else 0)
        if start < covered:
            if end <= covered and texts is not None:
                sizes[i] = _utf8_len(texts[i])
            else:
                sizes[i] = _utf8_len(lm.decode([t for t in stream[start : min(end, covered)] if t != eos]))
        start = end
    return DocumentScores(nll, tokens, sizes)


def domain_result(scores: DocumentScores, name: str = "the set") -> dict[str, Any]:
    """The per-domain JSON entry: loss, ppl, bpb, tokens, documents, bytes; every number finite or an error."""
    total_tokens = int(scores.tokens.sum())
    total_nll = float(scores.nll.sum())
    total_bytes = int(scores.bytes.sum())
    if not total_tokens or not math.isfinite(total_nll):
        raise ValueError(f"{name}: no finite loss ({total_tokens:,} predicted tokens, total NLL {total_nll})")
    if not total_bytes:
        raise ValueError(
            f"{name}: the {total_tokens:,} scored tokens decode to no text (only special tokens?), "
            "so bits per byte is undefined"
        )
    loss = total_nll / total_tokens
    if loss > 700:
        raise ValueError(f"{name}: loss {loss:.1f} nats/token, perplexity overflows (broken weights?)")
    return {
        "loss": loss,
        "ppl": math.exp(loss),
        "bpb": total_nll / (math.log(2) * total_bytes),
        "tokens": total_tokens,
        "documents": int(len(scores.tokens)),
        "bytes": total_bytes,
        "nll": total_nll,
    }


def average(losses: Iterable[float]) -> dict[str, float]:
    """Table 6's Average column: exp(mean of per-domain losses) = geometric mean of the perplexities."""
    values = [float(x) for x in losses]
    if not values:
        raise ValueError("no domains to average")
    mean = sum(values) / len(values)
    return {"loss": mean, "ppl": math.exp(mean)}


def average_of_perplexities(ppls: Iterable[float]) -> float:
    """The same average computed from a table row of perplexities (e.g. the report's Table 6)."""
    return average(math.log(p) for p in ppls)["ppl"]


def format_table(rows: dict[str, dict[str, Any]], domains: Sequence[str]) -> str:
    """Markdown Table 6: one row per model, one perplexity column per domain, and the Average."""
    header = "| Model | " + " | ".join(domains) + " | Average |"
    lines = [header, "|" + "---|" * (len(domains) + 2)]
    for model, result in rows.items():
        cells = [f"{result['domains'][d]['ppl']:.2f}" for d in domains]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {result['average']['ppl']:.2f} |")
    return "\n".join(lines)


def format_details(result: dict[str, Any]) -> str:
    """Markdown table of every number behind the perplexities."""
    lines = ["| Domain | loss (nats/token) | ppl | bits/byte | tokens | documents |", "|---|---|---|---|---|---|"]
    for name, d in result["domains"].items():
        lines.append(
            f"| {name} | {d['loss']:.4f} | {d['ppl']:.2f} | {d['bpb']:.4f} | {d['tokens']:,} | {d['documents']:,} |"
        )
    a = result["average"]
    lines.append(f"| Average | {a['loss']:.4f} | {a['ppl']:.2f} | {a['bpb']:.4f} | | |")
    return "\n".join(lines)


def evaluate_perplexity(
    lm: LanguageModel, datasets: dict[str, Documents], convention: WindowConvention
) -> dict[str, Any]:
    """Table-6 results for one model: {"domains": {name: {...}}, "average": {...}, ...}."""
    domains = {}
    for name, docs in datasets.items():
        scores = score_documents(lm, docs, convention, desc=f"ppl {name}", name=name)
        domains[name] = domain_result(scores, f"set '{name}' ({docs.source})")
        domains[name]["source"] = str(docs.source)
    avg = average(d["loss"] for d in domains.values())
    avg["bpb"] = float(np.mean([d["bpb"] for d in domains.values()]))
    return {"model": lm.describe(), "convention": convention.describe(), "domains": domains, "average": avg}
