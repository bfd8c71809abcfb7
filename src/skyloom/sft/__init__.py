"""Supervised fine-tuning (chat templates, prompt-masked packed samples) and SkyMath self-compare rounds."""
