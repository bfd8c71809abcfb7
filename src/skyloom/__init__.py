"""skyloom: build bilingual (English–Chinese) foundation models the way the Skywork reports describe."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(path, device="cpu", dtype=None, verify=True):
    """Load a skyloom checkpoint directory (or a Hugging Face Llama directory) in eval mode.

    `model(input_ids)` then returns logits of shape [batch, seq, vocab]. A directory with a manifest.json (a
    training checkpoint) is first checked against it — sizes and sha256 — unless `verify=False`.
    """
    from skyloom.model.checkpoint import load_model as _load

    return _load(path, device=device, dtype=dtype, verify=verify)
