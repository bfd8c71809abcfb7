"""Bilingual BPE tokenizer: training, Chinese vocabulary extension, statistics, loading."""

from skyloom.tokenizer.loading import TextTokenizer

__all__ = ["TextTokenizer"]
