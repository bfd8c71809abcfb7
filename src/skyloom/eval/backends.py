"""The two `LanguageModel` backends and `load_lm`, which picks one for a model directory.

* `SkyloomLM` — skyloom's own `Transformer` (a skyloom checkpoint, or a Llama directory imported on the
  fly) with a `TextTokenizer`; generation through the model's own key/value cache (model/kv_cache.py).
* `HuggingFaceLM` — any causal LM `transformers` can load from a local directory (the optional `hf`
  extra), never downloading and never running repository code.

`load_lm(path)` chooses: a skyloom checkpoint (`model.json` + `model.safetensors`) → skyloom; a Hugging
Face directory (`config.json`) → transformers. `backend=` forces one (a Llama directory runs in either,
which is how the two are checked against each other).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skyloom.eval.lm import LanguageModel
from skyloom.model.kv_cache import KVCache, left_padded_positions, padded_causal_mask

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BACKENDS = ("auto", "skyloom", "hf")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that supports it, float32 otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


class SkyloomLM(LanguageModel):
    """skyloom's `Transformer` plus a tokenizer with `encode`/`decode`/`eos_id`/`bos_id`."""

    backend = "skyloom"

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        name: str = "model",
        kv_cache: bool = True,
        max_length: int | None = None,
        split_head: bool = True,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.max_length = min(max_length or model.config.max_seq_len, model.config.max_seq_len)
        self.kv_cache = kv_cache and hasattr(model, "build_kv_cache")
        self.split_head = split_head and returns_hidden(model)
        vocab = getattr(tokenizer, "vocab_size", None)
        if vocab is not None and vocab > model.config.vocab_size:
            raise ValueError(f"{name}: tokenizer has {vocab} entries but the model only {model.config.vocab_size}")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if hasattr(self.tokenizer, "encode_batch"):
            return self.tokenizer.encode_batch(list(texts))
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_id

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_id

    @property
    def pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_id", None)
        return pad if pad is not None else super().pad_id

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    @property
    def tokenizer_id(self) -> str | None:
        return getattr(self.tokenizer, "tokenizer_id", None)

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor | None:
        return self.model(ids, return_hidden=True) if self.split_head else None

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.output(hidden)

    def _start(self, ids: torch.Tensor, valid: torch.Tensor):
        if not self.kv_cache:
            logits = self.model(ids, position_ids=left_padded_positions(valid), attn_mask=padded_causal_mask(valid))
            return logits[:, -1], (ids, valid)
        cache = self.model.build_kv_cache(ids.shape[0], ids.shape[1] + 64, self.device, self.dtype)
        logits = self.model(ids, cache=cache, valid=valid)
        return logits[:, -1], cache

    def _step(self, state, next_ids: torch.Tensor):
        if not self.kv_cache:
            ids, valid = state
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
            logits = self.model(ids, position_ids=left_padded_positions(valid), attn_mask=padded_causal_mask(valid))
            return logits[:, -1], (ids, valid)
        cache: KVCache = state
        return self.model(next_ids[:, None], cache=cache)[:, -1], cache


def returns_hidden(model: torch.nn.Module) -> bool:
    """Whether `model(ids, return_hidden=True)` followed by `model.output` gives its logits: a plain local
    `Transformer` (not a wrapper, not sharded: a sharded output projection only gathers its weight inside forward)."""
    from skyloom.model.transformer import Transformer

    return (
        isinstance(model, Transformer)
        and isinstance(getattr(model, "output", None), torch.nn.Linear)
        and not any(type(p).__name__ == "DTensor" for p in model.parameters())
    )


def require_transformers(purpose: str):
    try:
        import transformers
    except ImportError:
        raise ImportError(
            f"{purpose} needs Hugging Face transformers: pip install 'skyloom[hf]' "
            "(a Llama directory also runs without it: --backend skyloom)"
        ) from None
    return transformers


class HuggingFaceLM(LanguageModel):
    """A `transformers` causal LM and its tokenizer, loaded from local files only, without remote code."""

    backend = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str = "model",
        max_length: int | None = None,
        tokenizer_id: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self._tokenizer_id = tokenizer_id
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        config_max = getattr(model.config, "max_position_embeddings", None) or 2048
        self.max_length = min(max_length or config_max, config_max)

    @classmethod
    def from_dir(
        cls,
        path: str | Path,
        device: torch.device,
        dtype: torch.dtype,
        tokenizer_dir: str | Path | None = None,
        allow_pickle: bool = False,
        **kwargs: Any,
    ) -> HuggingFaceLM:
        """Load from local files. Weights must be safetensors unless `allow_pickle` (unsafe: a pickle can run code
        when loaded, and transformers' weights-only unpickler is a mitigation, not a guarantee)."""
        transformers = require_transformers(f"evaluating {path} with the Hugging Face backend")
        if not allow_pickle:
            refuse_pickled_weights(Path(path))
        tok = transformers.AutoTokenizer.from_pretrained(
            str(tokenizer_dir or path), local_files_only=True, trust_remote_code=False
        )
        tok.model_max_length = 1 << 40  # windows are cut by the evaluator; silence the length warning
        major = int(transformers.__version__.split(".")[0])
        dtype_kw = {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, use_safetensors=not allow_pickle, **dtype_kw
        ).to(device)
        return cls(
            model, tok, name=Path(path).name, tokenizer_id=tokenizer_fingerprint(Path(tokenizer_dir or path)), **kwargs
        )

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().num_embeddings)

    @property
    def tokenizer_id(self) -> str | None:
        return self._tokenizer_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    @property
    def eos_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else super().pad_id

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits

    def _start(self, ids: torch.Tensor, valid: torch.Tensor):
        mask = valid.long()
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=left_padded_positions(valid), use_cache=True)
        return out.logits[:, -1], (out.past_key_values, mask, mask.sum(-1))

    def _step(self, state, next_ids: torch.Tensor):
        past, mask, position = state
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = self.model(
            input_ids=next_ids[:, None],
            attention_mask=mask,
            position_ids=position[:, None],
            past_key_values=past,
            use_cache=True,
        )
        return out.logits[:, -1], (out.past_key_values, mask, position + 1)


def refuse_pickled_weights(path: Path) -> None:
    """A Hugging Face directory without safetensors weights is refused before transformers would unpickle its
    `pytorch_model.bin` (the README's promise: pickles are never loaded unless asked for)."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    found = f" (found {', '.join(pickles)}: pickled weights)" if pickles else ""
    raise ValueError(
        f"{path}: no safetensors weights{found}; convert them to safetensors, or pass --allow-pickle "
        "to load pickled weights anyway (unsafe: unpickling can run code)"
    )


def tokenizer_fingerprint(directory: Path) -> str | None:
    """The fingerprint `TextTokenizer.tokenizer_id` gives (and token shards record): sha256 of tokenizer.json,
    first 16 hex digits; None when the directory has no tokenizer.json (e.g. a SentencePiece-only model)."""
    file = directory / "tokenizer.json"
    return hashlib.sha256(file.read_bytes()).hexdigest()[:16] if file.is_file() else None


def detect_backend(path: Path) -> str:
    from skyloom.model.checkpoint import is_skyloom_checkpoint

    if is_skyloom_checkpoint(path):
        return "skyloom"
    if (path / "config.json").is_file():
        return "hf"
    raise ValueError(
        f"{path}: neither a skyloom checkpoint (model.json + model.safetensors) "
        "nor a Hugging Face model directory (config.json)"
    )


def load_skyloom_tokenizer(path: Path):
    from skyloom.tokenizer import TextTokenizer

    try:
        return TextTokenizer.from_dir(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no tokenizer.json next to the model; copy the tokenizer files into the checkpoint "
            "(TextTokenizer.copy_files_to) or pass --tokenizer DIR"
        ) from None


def load_lm(
    path: str | Path,
    backend: str = "auto",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    tokenizer: str | Path | None = None,
    max_length: int | None = None,
    allow_pickle: bool = False,
    verify: bool = True,
    **kwargs: Any,
) -> LanguageModel:
    """Open a model directory for evaluation (`kwargs`: batch_tokens, max_batch_size, progress); `allow_pickle`
    lets the transformers backend load pickled weights (unsafe; safetensors only by default). With `verify`, a
    directory holding a manifest.json (a training checkpoint) is checked against it first, for either backend."""
    from skyloom.model.manifest import ensure_intact

    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"no such model directory: {p}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    ensure_intact(p, verify)
    chosen = detect_backend(p) if backend == "auto" else backend
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if chosen == "hf":
        if not (p / "config.json").is_file():
            raise ValueError(f"{p}: the hf backend needs a Hugging Face directory (config.json)")
        return HuggingFaceLM.from_dir(
            p, dev, dt, tokenizer_dir=tokenizer, max_length=max_length, allow_pickle=allow_pickle, **kwargs
        )
    from skyloom.model.checkpoint import load_model

    model = load_model(p, device=dev, dtype=dt, verify=False)  # verified above
    tok = load_skyloom_tokenizer(Path(tokenizer) if tokenizer else p)
    return SkyloomLM(model, tok, name=p.name, max_length=max_length, **kwargs)


def model_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identify the evaluated weights in results files (path, size and mtime of the weight files)."""
    p = Path(path)
    files = sorted(p.glob("*.safetensors"))
    info: dict[str, Any] = {"path": str(p.resolve())}
    info["weights"] = {f.name: {"bytes": f.stat().st_size} for f in files}
    meta = p / "model.json"
    if meta.is_file():
        try:
            payload = json.loads(meta.read_text(encoding="utf-8"))
            info["metadata"] = {k: v for k, v in payload.items() if k not in ("model",)}
        except json.JSONDecodeError:
            pass
    return info
