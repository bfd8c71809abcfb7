"""The Skywork dense decoder (and its GPT baseline), presets, accounting and checkpoint formats."""

from skyloom.model.config import ModelConfig
from skyloom.model.presets import PRESETS
from skyloom.model.transformer import Transformer

__all__ = ["ModelConfig", "PRESETS", "Transformer"]
