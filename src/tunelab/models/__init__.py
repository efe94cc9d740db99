"""Models: resolve names (aliases, folders, GGUF, Hub ids), load safely, build tiny test models."""

from tunelab.models.hub import ALIASES, resolve
from tunelab.models.loading import load_adapters, load_model, load_run, load_tokenizer
from tunelab.models.tiny import (
           byte_tokenizer,
           save_tiny,
           tiny_bert,
           tiny_llama,
           tiny_t5,
)

__all__ = [
           "ALIASES",
           "byte_tokenizer",
           "load_adapters",
           "load_model",
           "load_run",
           "load_tokenizer",
           "resolve",
           "save_tiny",
           "tiny_bert",
           "tiny_llama",
           "tiny_t5",
]
