"""The Skywork dense decoder (and its GPT baseline), presets, accounting and checkpoint formats.

`Transformer` is imported on first use: `skyloom.model.config` and `skyloom.model.presets` are plain
dataclasses, and `skyloom --help` (whose commands read them) must not import torch.
"""

from skyloom.model.config import ModelConfig
from skyloom.model.presets import PRESETS

__all__ = ["ModelConfig", "PRESETS", "Transformer"]


def __getattr__(name: str):
    if name == "Transformer":
        from skyloom.model.transformer import Transformer

        return Transformer
    raise AttributeError(f"module 'skyloom.model' has no attribute {name!r}")
