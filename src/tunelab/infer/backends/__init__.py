"""Inference backends, one file each: transformers (default), llama.cpp (GGUF), vLLM (GPU).

Each module defines an `open_engine` function, which builds its engine from `load_engine`'s
arguments, and registers it with one `register(...)` line at its bottom. Modules are
discovered automatically: adding a file adds a backend. Optional dependencies (llama_cpp,
vllm) are imported inside the engines, so listing the backends needs neither.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunelab.errors import ConfigError


@dataclass(frozen=True)
class Backend:
    name: str
    # (model, *, adapters, named, dtype, quantize, draft, max_batch_size, use) -> Engine; see load_engine
    open: Callable[..., Any]


BACKENDS: dict[str, Backend] = {}


def register(name: str, open: Callable[..., Any]) -> None:
    """Add a backend to the table; called once at the bottom of each backend module."""
    BACKENDS[name] = Backend(name, open)


def backend_names() -> list[str]:
    """The registered backends, for option schemas and error messages."""
    return list(BACKENDS)


DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # --dtype -> torch's name


def dtype_name(name: str) -> str:
    """torch's name for a --dtype value ("auto" stays "auto")."""
    if name == "auto":
        return name
    if name not in DTYPES:
        raise ConfigError(f"--dtype {name}: expected auto, bf16, fp16 or fp32")
    return DTYPES[name]


def refuse(backend: str, **options) -> None:
    """Refuse the transformers-backend options given to another backend."""
    given = [k for k, v in options.items() if v not in (None, "", "none", [], {})]
    if given:
        raise ConfigError(f"--backend {backend} does not take --{given[0]}; it is a transformers-backend option")


for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
