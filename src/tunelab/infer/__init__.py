"""Inference: batched generation, decoding options, interactive chat."""

from tunelab.infer.generate import DecodingConfig, generate, prompt_text

__all__ = ["DecodingConfig", "generate", "prompt_text"]
