"""Build an engine from names: the model, its adapters, the backend, precision and draft."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from tunelab.config.groups import Dtype
from tunelab.config.options import Options, opt
from tunelab.config.run import DEFAULT_MODEL
from tunelab.errors import ConfigError
from tunelab.hardware import llamacpp_decode
from tunelab.infer.backends import BACKENDS

BackendName = Literal[("auto", *BACKENDS)]  # the registered backends, found when the package was imported


class LoadConfig(Options):
    """Which model answers, with which adapters, on which backend and in what precision."""

    model: str | None = opt(None, f"alias, folder, .gguf or Hub id; default {DEFAULT_MODEL}")
    adapter: list[str] = opt([], "a run folder (runs/NAME) whose adapter or model to use; repeat as NAME=RUN to "
                             "load several adapters on one base", aka=("adapters", "lora_modules"))
    use: str | None = opt(None, "with several named adapters: the one to answer with by default")
    backend: BackendName = opt("auto", "auto (llamacpp for a .gguf file, or for the GGUF default model when "
                               "decoding a few streams on a CPU, when llama-cpp-python is installed; else "
                               "transformers), transformers (CPU or GPU), llamacpp (a GGUF file) or vllm (GPU)")
    dtype: Dtype = opt("auto", "weights: auto is bfloat16 where the hardware computes it natively")
    quantize: Literal["auto", "int8", "int4", "none"] = opt(
        "auto", "auto: int8 weights on x86 CPUs while a step has under 17 rows (1.5-2.5x faster decoding, "
        "+0.2% perplexity; `tunelab env` says where); int8; int4 (a sixth of float32's memory, +5% perplexity); "
        "none (exact weights)")
    draft: str | None = opt(None, "speculative decoding for greedy requests: ngram, layers:N or a draft model with "
                            "the same tokenizer")
    max_batch_size: int = opt(16, "answers decoded together", ge=1, flags=("--batch-size",),
                              aka=("batch_size", "max_num_seqs"))

    def engine(self):
        """The engine these options describe."""
        return load_engine(self.model, adapters=self.adapter or None, backend=self.backend, dtype=self.dtype,
                           quantize=None if self.quantize == "none" else self.quantize, draft=self.draft,
                           max_batch_size=self.max_batch_size, use=self.use)


def load_engine(model: str | None = None, *, adapters: list[str] | dict[str, str] | None = None,
                backend: str = "auto", dtype: str = "auto", quantize: str | None = "auto",
                draft: str | None = None, max_batch_size: int = 16, use: str | None = None):
    """An engine for `model` (alias, folder, .gguf, Hub id; default the packaged SmolLM2).

    Args:
        adapters: one run folder, or NAME=RUN pairs (a list of "NAME=RUN" or a dict) to load
            several LoRA adapters on the one base; requests pick them by name.
        backend: auto, transformers (CPU or GPU), llamacpp (a GGUF file) or vllm (GPU); see
            `tunelab.infer.backends`. auto serves a .gguf file through llama.cpp, as it was exported,
            and a GGUF-backed alias (the default model) too when it decodes a few streams on a CPU
            with nothing only transformers does (adapters, a draft, a dtype or quantize setting):
            there llama.cpp decodes fastest (bench/cpu_paths.py).
        dtype: auto (bfloat16 where the hardware computes it natively, else float32), bf16, fp16 or fp32.
        quantize: "auto", "int8", "int4" or None. auto is int8 while a step has fewer rows than
            `tunelab.hardware.int8_decode` says the int8 kernel wins for (on AVX2 and AVX-512 CPUs;
            none on GPUs); int4 always decodes from packed 4-bit weights.
        draft: speculative decoding: "ngram", "layers:N" or a draft model (transformers backend).
        use: with several adapters, the one a request naming none gets (default: the first).
    """
    named = _named(adapters)
    if backend == "auto":
        as_exported = _gguf_file(model) and importlib.util.find_spec("llama_cpp")
        fastest = (_gguf_alias(model) and llamacpp_decode(max_batch_size)
                   and not draft and dtype == "auto" and quantize == "auto")
        backend = "llamacpp" if not adapters and (as_exported or fastest) else "transformers"
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    return BACKENDS[backend].open(model, adapters=adapters, named=named, dtype=dtype, quantize=quantize, draft=draft,
                                  max_batch_size=max_batch_size, use=use)


def _gguf_alias(model: str | None) -> bool:
    """A built-in alias stored as a GGUF file (the default model is one)."""
    from tunelab.models.hub import ALIASES

    alias = ALIASES.get(model or DEFAULT_MODEL)
    return alias is not None and alias.filename.endswith(".gguf")


def _gguf_file(model: str | None) -> bool:
    return bool(model) and str(model).endswith(".gguf") and Path(str(model)).expanduser().is_file()


def _named(adapters) -> dict[str, str]:
    if isinstance(adapters, dict):
        return dict(adapters)
    items = [adapters] if isinstance(adapters, str) else list(adapters or [])
    named = dict(a.split("=", 1) for a in items if "=" in a)
    if named and len(named) != len(items):
        raise ConfigError("--adapter: with several adapters give each as NAME=RUN_FOLDER")
    return named
