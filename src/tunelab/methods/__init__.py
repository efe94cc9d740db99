"""Methods: how a model's parameters are allowed to change.

Each module in this package defines a `Config` dataclass (with a `name` field), an
`apply(model, cfg) -> model` function, and registers both with one `register(...)` line.
Modules are discovered automatically: adding a file adds a method.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Method:
    name: str
    config: type  # dataclass with the method's options
    apply: Callable[[Any, Any], Any]  # (model, cfg) -> model with the right parameters trainable
    load_kwargs: Callable[[Any], dict] | None = None  # extra from_pretrained kwargs (e.g. 4-bit loading)
    freezes_base: bool = True  # frozen weights may be stored in the compute dtype to save time and memory
    saves: str = "adapter"  # "adapter" (peft folder) or "model" (full transformers folder)


METHODS: dict[str, Method] = {}


def register(name: str, config: type, apply: Callable, **kwargs: Any) -> None:
    """Add a method to the table; called once at the bottom of each method module."""
    METHODS[name] = Method(name, config, apply, **kwargs)


for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
