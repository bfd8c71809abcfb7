"""`skyloom export gguf`: a checkpoint as one llama.cpp GGUF file (architecture `llama`), or a refusal that says why.

A GGUF carries no tokenizer.json: llama.cpp re-implements a few tokenizer families in C++ and picks one by name
(`tokenizer.ggml.model`, and for byte-level BPE a pre-tokenizer name, `tokenizer.ggml.pre`, standing for a fixed
regex). A vocabulary is exported only where one of those reproduces skyloom's ids exactly:

* byte-level BPE (`ByteLevel` pre-tokenizer, the recipes' small tokenizers) → `gpt2` with its merges; the
  pre-tokenizer maps to `gpt-2` (GPT-2's regex) or, with single digits split off first, `starcoder`
  (llama.cpp's `\\p{N}` split, then GPT-2's regex).
* SentencePiece-style BPE with byte fallback (a converted LLaMA/Mistral `.model`, extended or not) → `llama`:
  llama.cpp merges the adjacent pair whose concatenation is the best-scored token (not a merge list), so every
  token's score is the rank of its merges, and the file is written only after a replay of llama.cpp's algorithm
  (`spm_encode`) gives skyloom's ids on every vocabulary entry, a mixed probe text and the user's `--check-text`.

Everything else is refused (`skyloom tokenizer train`'s own bilingual pre-tokenizer has no llama.cpp name; MoE;
the GPT baseline), never written silently wrong. Q and K rows are permuted as llama.cpp's `convert_hf_to_gguf.py`
does for HF Llama weights (our RoPE is HF's rotate-half layout); `transformers` undoes it when it loads the file.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skyloom.config import ConfigError
from skyloom.model.arch import arch_spec

SPACE = "\u2581"  # ▁
SPM_SPLIT = f"{SPACE}*[^{SPACE}]+|{SPACE}+"  # skyloom's exact cut before runs of ▁ (tokenizer/spm.py)
GGUF_TYPES = ("f32", "f16", "bf16")
# Text every exported SentencePiece-style vocabulary must encode identically in skyloom and in llama.cpp's
# algorithm (besides every vocabulary entry itself): English, Chinese, digits, emoji, whitespace runs, markup.
PROBE_TEXTS = (
    "Hello world! The quick brown fox jumps over the lazy dog; it's 2024-06-01, isn't it? x=3.14159",
    "我们在北京大学学习自然语言处理。今天天气很好，我们去公园散步吧！中华人民共和国成立于1949年。",
    "Mixed 中文 and English: 模型 model 训练 training 🚀🎉 emoji, café naïve Ω ∑ → ← 😀👍🏽",
    "    indented code:\n\tdef f(x):\n\t\treturn x ** 2  # comment\n\n\n"
    + "".join(" " * n + "x" for n in range(1, 24)),
    "<s> </s> <unk> <pad> [SEP] <0x41> <|endoftext|> \u200b\u00a0\u3000 ２０２４ ＡＢＣ",
)


class GGUFRefused(ConfigError):
    """What cannot be written as a GGUF that llama.cpp would read the same way; the CLI prints it, exit 2."""

    def __init__(self, message: str):
        super().__init__("", message)


@dataclass
class GGUFTokenizer:
    """Everything `tokenizer.ggml.*` holds for one vocabulary."""

    model: str  # "llama" (SentencePiece-style) or "gpt2" (byte-level BPE)
    tokens: list[str]
    token_types: list[int]
    pre: str | None = None
    scores: list[float] | None = None
    merges: list[str] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos / eos / unk / pad → id
    chat_template: str | None = None
    add_space_prefix: bool | None = None
    replayed: int = 0  # texts on which llama.cpp's algorithm was replayed and agreed


# --- the model -----------------------------------------------------------------------------------------------


def refuse_model(cfg) -> None:
    """Refuse what llama.cpp's `llama` architecture cannot run as skyloom runs it."""
    if cfg.moe is not None:
        raise GGUFRefused(
            "an MoE checkpoint is not exported to GGUF (only dense LLaMA models are); "
            "use `skyloom export hf` (MixtralForCausalLM) instead"
        )
    if arch_spec(cfg).hf_architecture != "LlamaForCausalLM" or cfg.bias:  # what llama.cpp's `llama` runs
        raise GGUFRefused(
            f"only the LLaMA architecture without biases exports to GGUF (got arch={cfg.arch!r}, bias={cfg.bias}): "
            "llama.cpp's `llama` has RMSNorm, RoPE and SwiGLU, not the GPT baseline's LayerNorm, learned positions "
            "and GELU"
        )


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF Llama's rotate-half q/k rows → llama.cpp's interleaved rope layout (convert_hf_to_gguf.py's permute)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def unpermute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `permute_qk` (what transformers' GGUF loader applies)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.wq.weight": "attn_q.weight",
    "attn.wk.weight": "attn_k.weight",
    "attn.wv.weight": "attn_v.weight",
    "attn.wo.weight": "attn_output.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn.w1.weight": "ffn_gate.weight",
    "ffn.w3.weight": "ffn_up.weight",
    "ffn.w2.weight": "ffn_down.weight",
}
_TOP_NAMES = {
    "tok_emb.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}


def gguf_name(name: str) -> str:
    """skyloom parameter name → llama.cpp tensor name (`layers.3.attn.wq.weight` → `blk.3.attn_q.weight`)."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    _, index, rest = name.split(".", 2)
    return f"blk.{index}.{_LAYER_NAMES[rest]}"


def gguf_tensors(model) -> Iterator[tuple[str, np.ndarray]]:
    """The model's weights as float32 arrays under llama.cpp's names, q/k permuted; no `output` when tied. One at a
    time (an f32 CPU weight is a view, not a copy), so a 13B model is not held twice in memory."""
    cfg = model.config
    for name, tensor in model.state_dict().items():
        if cfg.tie_embeddings and name == "output.weight":
            continue
        array = tensor.detach().float().cpu().numpy()
        if name.endswith("attn.wq.weight"):
            array = permute_qk(array, cfg.n_heads)
        elif name.endswith("attn.wk.weight"):
            array = permute_qk(array, cfg.kv_heads)
        yield gguf_name(name), np.ascontiguousarray(array)


# --- the tokenizer -------------------------------------------------------------------------------------------


def _components(node: dict | None) -> list[dict]:
    if not node:
        return []
    children = node.get("pretokenizers") or node.get("normalizers") or []
    return [node] if not children else [c for child in children for c in _components(child)]


def _describe(node: dict | None) -> str:
    parts = _components(node)
    return " + ".join(p.get("type", "?") for p in parts) or "none"


def _tokens_by_id(doc: dict, source: str) -> tuple[list[str], dict[int, dict]]:
    """Token strings in id order (vocabulary + added tokens) and the added-token entries by id."""
    by_id: dict[int, str] = {i: t for t, i in doc["model"]["vocab"].items()}
    added = {t["id"]: t for t in doc.get("added_tokens") or []}
    for token_id, entry in added.items():
        if by_id.get(token_id, entry["content"]) != entry["content"]:
            raise GGUFRefused(f"{source}: id {token_id} is both {by_id[token_id]!r} and {entry['content']!r}")
        by_id[token_id] = entry["content"]
    missing = [i for i in range(max(by_id) + 1) if i not in by_id]
    if missing:
        raise GGUFRefused(f"{source}: token ids are not contiguous ({len(missing)} missing, first {missing[0]})")
    tokens = [by_id[i] for i in range(len(by_id))]
    if len(set(tokens)) != len(tokens):
        twice = next(t for t, n in Counter(tokens).items() if n > 1)
        raise GGUFRefused(f"{source}: {twice!r} has two ids; llama.cpp maps each token text to one id")
    return tokens, added


def _merges(model: dict) -> list[tuple[str, str]]:
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]


def _byte_level_pre(doc: dict, source: str) -> str:
    """llama.cpp's name for a byte-level tokenizer's pre-tokenizer, or a refusal."""
    pre = doc.get("pre_tokenizer") or {}
    parts = _components(pre)
    shape = [p.get("type") for p in parts]
    byte_level = parts[-1] if parts else {}
    plain_regex = byte_level.get("use_regex", True) and not byte_level.get("add_prefix_space", False)
    if plain_regex and shape == ["ByteLevel"]:
        return "gpt-2"
    if plain_regex and shape == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "starcoder"
    raise GGUFRefused(
        f"{source}: the byte-level pre-tokenizer {_describe(pre)} has no llama.cpp name (known: ByteLevel with "
        "GPT-2's regex → 'gpt-2', Digits(individual) + ByteLevel → 'starcoder'); llama.cpp would cut text "
        "differently and the GGUF would give other ids than skyloom"
    )


def _spm_normalizer_ok(doc: dict) -> bool:
    parts = _components(doc.get("normalizer"))
    prepend = {"type": "Prepend", "prepend": SPACE}
    escape = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    return parts == [prepend, escape]


def _spm_pre_ok(doc: dict) -> bool:
    pre = doc.get("pre_tokenizer")
    return pre is None or (pre.get("type") == "Split" and pre.get("pattern") == {"Regex": SPM_SPLIT})


def _own_pre_tokenizer_refusal(doc: dict, source: str) -> GGUFRefused:
    return GGUFRefused(
        f"{source}: this vocabulary (normalizer {_describe(doc.get('normalizer'))}, pre-tokenizer "
        f"{_describe(doc.get('pre_tokenizer'))}, byte fallback) cannot be reproduced by llama.cpp: its "
        "SentencePiece tokenizer ('llama') has no regex pre-tokenizer and puts '▁' for spaces, and its byte-level "
        "BPE ('gpt2') knows only a fixed list of pre-tokenizer names — skyloom's bilingual split (Han runs apart, "
        "single digits) is not one of them. A `skyloom tokenizer train` vocabulary is therefore not exported to "
        "GGUF; use `skyloom export hf` for transformers/vLLM, or, for llama.cpp, a tokenizer extended from a "
        "SentencePiece .model (`skyloom tokenizer train --extend X.model`) or a byte-level BPE"
    )


def _type_ids():
    import gguf

    return gguf.TokenType


def read_specials(directory: Path, tokens: list[str]) -> tuple[dict[str, int], str | None]:
    """bos/eos/unk/pad (and a chat template's turn-end, eot) ids and the chat template of tokenizer_config.json."""
    cfg_file = directory / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
    index = {t: i for i, t in enumerate(tokens)}
    ids = {}
    for key in ("bos", "eos", "unk", "pad"):
        value = cfg.get(f"{key}_token")
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and value in index:
            ids[key] = index[value]
    template = cfg.get("chat_template")
    if template is None and (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    template = template if isinstance(template, str) else None
    from skyloom.tokenizer.chat import chat_stop_tokens

    stops = chat_stop_tokens(template, index.get)
    if stops and stops[0] in index:  # the turn end (`[SEP]` after `skyloom sft`): llama.cpp stops generating there
        ids["eot"] = index[stops[0]]
    return ids, template


def gguf_tokenizer(directory: str | Path, vocab_size: int, check_texts: Sequence[str] = ()) -> GGUFTokenizer:
    """The `tokenizer.ggml.*` content for the tokenizer directory next to a checkpoint, or a GGUFRefused."""
    directory = Path(directory)
    file = directory / "tokenizer.json"
    if not file.is_file():
        raise GGUFRefused(
            f"{directory}: no tokenizer.json next to the checkpoint; a GGUF must carry its tokenizer "
            "(copy the tokenizer files into the checkpoint directory)"
        )
    doc = json.loads(file.read_text(encoding="utf-8"))
    model = doc.get("model") or {}
    source = str(file)
    if model.get("type") != "BPE":
        raise GGUFRefused(
            f"{source}: a {model.get('type')} tokenizer is not exported: only BPE vocabularies map exactly onto "
            "llama.cpp's tokenizers (its SentencePiece one merges by score, which is not a Unigram's segmentation)"
        )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise GGUFRefused(f"{source}: BPE with subword prefixes/suffixes has no llama.cpp tokenizer")
    tokens, added = _tokens_by_id(doc, source)
    if len(tokens) > vocab_size:
        raise GGUFRefused(f"{source}: {len(tokens)} tokens, more than the model's vocab_size {vocab_size}")
    types = _type_ids()
    kinds = [
        (types.CONTROL if added[i].get("special", True) else types.USER_DEFINED) if i in added else types.NORMAL
        for i in range(len(tokens))
    ]
    byte_level = any(p.get("type") == "ByteLevel" for p in _components(doc.get("pre_tokenizer")))
    special_ids, template = read_specials(directory, tokens)
    if byte_level:
        if model.get("byte_fallback") or doc.get("normalizer"):
            raise GGUFRefused(f"{source}: a byte-level BPE with byte fallback or a normalizer has no llama.cpp name")
        from skyloom.tokenizer.extend import bytes_to_unicode

        absent = sorted(b for b, ch in bytes_to_unicode().items() if ch not in model["vocab"])
        if absent:  # skyloom gives <unk> for such a byte, llama.cpp silently drops it
            raise GGUFRefused(f"{source}: byte-level vocabulary without a token for byte 0x{absent[0]:02X}")
        result = GGUFTokenizer(
            "gpt2",
            tokens,
            [int(k) for k in kinds],
            pre=_byte_level_pre(doc, source),
            merges=[f"{a} {b}" for a, b in _merges(model)],
        )
    elif model.get("byte_fallback") and _spm_normalizer_ok(doc) and _spm_pre_ok(doc):
        result = _sentencepiece_style(doc, tokens, kinds, special_ids, source)
    else:
        raise _own_pre_tokenizer_refusal(doc, source)
    pads = vocab_size - len(tokens)
    result.tokens = result.tokens + [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    result.token_types = result.token_types + [int(types.UNUSED)] * pads
    if result.scores is not None:
        result.scores = result.scores + [-float(len(result.scores))] * pads  # the replay below sees them too
    result.special_ids, result.chat_template = special_ids, template
    if result.model == "llama":
        check_spm_replay(result, doc, source, len(tokens), check_texts)
    return result


# --- SentencePiece-style vocabularies: scores from merge ranks, checked against llama.cpp's algorithm -------


def _sentencepiece_style(doc: dict, tokens: list[str], kinds: list, specials: dict, source: str) -> GGUFTokenizer:
    types = _type_ids()
    merges = _merges(doc["model"])
    first_rank: dict[str, int] = {}
    order: list[str] = []
    for rank, (left, right) in enumerate(merges):
        product = left + right
        if product not in first_rank:
            first_rank[product] = rank
            order.append(product)
        elif order[-1] != product:
            raise GGUFRefused(
                f"{source}: the merges producing {product!r} are not consecutive (rank {first_rank[product]} and "
                f"{rank}); llama.cpp ranks a token by one score, so its merge order would differ"
            )
    index = {t: i for i, t in enumerate(tokens)}
    # Earlier merges win: a token's score is minus its position in merge order (atoms and specials: below all).
    position = {t: i for i, t in enumerate(order)}
    scores = [-float(position[t]) if t in position else -float(len(order)) for t in tokens]
    byte_token = {f"<0x{b:02X}>" for b in range(256)}
    missing_bytes = sorted(byte_token - set(index))
    if missing_bytes:
        raise GGUFRefused(
            f"{source}: byte fallback without the byte token {missing_bytes[0]} (llama.cpp needs all 256)"
        )
    kinds = list(kinds)
    for i, token in enumerate(tokens):
        if token in byte_token:
            kinds[i] = types.BYTE
    unk = specials.get("unk")
    if unk is not None:
        kinds[unk] = types.UNKNOWN
    result = GGUFTokenizer("llama", tokens, [int(k) for k in kinds], scores=scores, add_space_prefix=True)
    return result


class SpmReplay:
    """llama.cpp's SentencePiece tokenizer (`llm_tokenizer_spm_session`) re-implemented, to check an export before
    writing it: characters are symbols; the adjacent pair whose concatenation is the best-scored token merges first
    (ties: leftmost); a final symbol that is no token falls back to its bytes `<0xNN>`."""

    def __init__(self, tokens: Sequence[str], scores: Sequence[float], add_space_prefix: bool = True):
        self.index: dict[str, int] = {}
        for i, t in enumerate(tokens):
            self.index.setdefault(t, i)
        self.scores = scores
        self.add_space_prefix = add_space_prefix

    def encode(self, text: str) -> list[int]:
        index, scores = self.index, self.scores
        text = (" " + text if self.add_space_prefix else text).replace(" ", SPACE)
        symbols = list(text)
        alive = [True] * len(symbols)
        nxt = list(range(1, len(symbols))) + [-1]
        prv = list(range(-1, len(symbols) - 1))
        queue: list[tuple[float, int, int, int]] = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            token = index.get(symbols[left] + symbols[right])
            if token is not None:
                heapq.heappush(queue, (-scores[token], left, right, len(symbols[left]) + len(symbols[right])))

        for i in range(1, len(symbols)):
            push(i - 1, i)
        while queue:
            _, left, right, size = heapq.heappop(queue)
            if not (alive[left] and alive[right]) or len(symbols[left]) + len(symbols[right]) != size:
                continue  # stale: one side was merged elsewhere since
            symbols[left] += symbols[right]
            alive[right] = False
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            push(prv[left], left)
            push(left, nxt[left])
        out: list[int] = []
        i = 0 if symbols else -1
        while i != -1:
            token = index.get(symbols[i])
            if token is not None:
                out.append(token)
            else:
                out.extend(index[f"<0x{b:02X}>"] for b in symbols[i].encode("utf-8"))
            i = nxt[i]
        return out


def spm_encode(text: str, tokens: Sequence[str], scores: Sequence[float]) -> list[int]:
    """One text through `SpmReplay` (llama.cpp's SentencePiece algorithm)."""
    return SpmReplay(tokens, scores).encode(text)


def check_spm_replay(tok: GGUFTokenizer, doc: dict, source: str, n_real: int, extra_texts: Sequence[str] = ()) -> None:
    """Refuse unless llama.cpp's algorithm (replayed) gives skyloom's ids on every vocabulary entry, the probes
    and the user's own texts (`--check-text`).

    llama.cpp merges any two adjacent symbols whose concatenation is a token, skyloom only its listed merges. An
    extension makes such extra pairs (its word 模型 beside the base's 模型训 = 模 + 型训); they are harmless where
    skyloom's earlier merges always take one half first (型训 before 模型), which the replay checks."""
    from tokenizers import Tokenizer

    pipeline = Tokenizer.from_str(json.dumps(doc))
    pipeline.encode_special_tokens = True  # skyloom's TextTokenizer: text is text
    texts = list(PROBE_TEXTS) + [t.replace(SPACE, " ") for t in tok.tokens[:n_real]] + list(extra_texts)
    ours = [e.ids for e in pipeline.encode_batch(texts, add_special_tokens=False)]
    replay = SpmReplay(tok.tokens, tok.scores)
    for text, expected in zip(texts, ours):
        theirs = replay.encode(text)
        if theirs != expected:
            at = next((i for i, (a, b) in enumerate(zip(theirs, expected)) if a != b), min(len(theirs), len(expected)))
            raise GGUFRefused(
                f"{source}: llama.cpp's SentencePiece tokenizer would encode {text[:60]!r} differently from skyloom "
                f"(from token {at}: {[tok.tokens[i] for i in theirs[at : at + 4]]} instead of "
                f"{[tok.tokens[i] for i in expected[at : at + 4]]}); a GGUF would change the model's input, "
                "so none is written (use `skyloom export hf`)"
            )
    tok.replayed = len(texts)


def read_check_texts(paths: Sequence[str], limit: int = 1000) -> list[str]:
    """The first `limit` documents of the `--check-text` files (text, JSONL, … as `tokenizer train` reads them)."""
    from itertools import islice

    from skyloom.tokenizer.corpus import iter_texts

    try:
        return list(islice(iter_texts(list(paths)), limit))
    except (OSError, ValueError) as err:
        raise ConfigError("--check-text", str(err)) from None


# --- the file ------------------------------------------------------------------------------------------------


def _file_type(dtype: str):
    import gguf

    return {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }[dtype]


def _add_tensor(writer, name: str, array: np.ndarray, dtype: str) -> None:
    import gguf

    if array.ndim == 1 or dtype == "f32":  # norms stay f32, as llama.cpp's converter keeps them
        writer.add_tensor(name, array.astype(np.float32))
    elif dtype == "f16":
        writer.add_tensor(name, array.astype(np.float16))
    else:
        packed = gguf.quants.quantize(array.astype(np.float32), gguf.GGMLQuantizationType.BF16)
        writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.BF16)


def write_gguf(
    model, tokenizer_dir: str | Path, out_file: str | Path, dtype: str = "f32", check_texts: Sequence[str] = ()
) -> GGUFTokenizer:
    """Write `model` and the tokenizer in `tokenizer_dir` as a llama.cpp GGUF; refuses (GGUFRefused) before
    writing anything when llama.cpp could not run it as skyloom does."""
    try:
        import gguf
    except ImportError:
        raise ConfigError("", "export gguf needs the gguf package: pip install 'skyloom[all]' (or gguf)") from None
    if dtype not in GGUF_TYPES:
        raise ConfigError("--dtype", f"one of {', '.join(GGUF_TYPES)}, got {dtype!r}")
    cfg = model.config
    refuse_model(cfg)
    tok = gguf_tokenizer(tokenizer_dir, cfg.vocab_size, check_texts)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(out.stem)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.hidden_ffn_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(_file_type(dtype))
    writer.add_tokenizer_model(tok.model)
    if tok.pre is not None:
        writer.add_tokenizer_pre(tok.pre)
    writer.add_token_list(tok.tokens)
    writer.add_token_types(tok.token_types)
    if tok.scores is not None:
        writer.add_token_scores(tok.scores)
    if tok.merges is not None:
        writer.add_token_merges(tok.merges)
    for key, add in (
        ("bos", writer.add_bos_token_id),
        ("eos", writer.add_eos_token_id),
        ("unk", writer.add_unk_token_id),
        ("pad", writer.add_pad_token_id),
        ("eot", writer.add_eot_token_id),
    ):
        if key in tok.special_ids:
            add(tok.special_ids[key])
    # skyloom never adds BOS/EOS when it encodes a prompt (packing appends EOS between documents itself).
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if tok.add_space_prefix is not None:
        writer.add_add_space_prefix(tok.add_space_prefix)
    if tok.chat_template:
        writer.add_chat_template(tok.chat_template)
    for tensor_name, array in gguf_tensors(model):
        _add_tensor(writer, tensor_name, array, dtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)  # a partly written file never carries the final name
    finally:
        tmp.unlink(missing_ok=True)
    return tok
