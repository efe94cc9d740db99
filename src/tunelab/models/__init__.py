"""Models: resolve names (aliases, folders, GGUF, Hub ids), load safely, build tiny test models."""

from tunelab.models.hub import ALIASES, resolve
from tunelab.models.loading import load_model, load_run, load_tokenizer
from tunelab.models.tiny import byte_tokenizer, save_tiny, tiny_llama

__all__ = ["ALIASES", "resolve", "load_model", "load_run", "load_tokenizer", "byte_tokenizer", "save_tiny", "tiny_llama"]
