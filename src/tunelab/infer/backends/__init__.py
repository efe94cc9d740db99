"""Inference backends, one file each: transformers (default), llama.cpp (GGUF), vLLM (GPU)."""
