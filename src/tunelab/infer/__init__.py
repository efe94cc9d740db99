"""Inference: the engine (continuous batching, decoding options, streaming, structured output,
speculative decoding) with one backend per file, batched generation and terminal chat."""

from tunelab.infer.decoding import DecodingConfig
from tunelab.infer.engine import Completion, Delta, Engine, Request, stream
from tunelab.infer.generate import generate, prompt_text
from tunelab.infer.structured import Constraint

__all__ = ["Completion", "Constraint", "DecodingConfig", "Delta", "Engine", "Request", "generate", "prompt_text",
           "stream"]
