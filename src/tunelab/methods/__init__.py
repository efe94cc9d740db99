"""Methods: how a model's parameters are allowed to change.

Each module in this package defines a `Config` (an `Options` class whose `name` field is
`Literal["its name"]`, every option with its type, default, bounds and help), an
`apply(model, cfg) -> model` function, and registers both with one `register(...)` line.
Modules are discovered automatically: adding a file adds a method.

Three kinds of method share the table:
* saves="model": the model's own weights train (full, freeze); the result is a whole
  transformers folder.
* saves="adapter": small new weights beside a frozen base (LoRA, prompt tuning, IA3,
  bottleneck adapters, a classification head); the result is only those weights. They
  save and load through `save_adapter` / `load_adapter` below, and `adapter_disabled`
  gives back the base model exactly.
* kind="features": a separate small model on frozen features (the linear probe); it
  does not train through the Trainer (see tunelab.methods.probe).
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

TASKS = ("causal_lm", "classify", "seq2seq")


@dataclass(frozen=True)
class Method:
    name: str
    config: type  # dataclass with the method's options
    apply: Callable[[Any, Any], Any]  # (model, cfg) -> model with the right parameters trainable
    load_kwargs: Callable[[Any], dict] | None = None  # extra from_pretrained kwargs (e.g. 4-bit loading)
    freezes_base: bool = True  # frozen weights may be stored in the compute dtype to save time and memory
    saves: str = "adapter"  # "adapter" (only the new weights) or "model" (a full transformers folder)
    marker: str = "adapter_config.json"  # the config file its saved folder holds (peft's by default)
    kind: str = "weights"  # "weights" (trains through the Trainer) or "features" (a separate small model)
    tasks: tuple[str, ...] = TASKS  # model heads the method works with
    mergeable: bool = False  # merge_and_unload() folds the adapter into plain weights
    packing: bool = True  # False: the method prepends virtual tokens and drops position ids
    save: Callable[[Any, Path], None] | None = None  # (model, folder); default: peft/transformers save_pretrained
    load: Callable[[Any, Path], Any] | None = None  # (base model, folder) -> model; default: PeftModel
    disabled: Callable[[Any], ContextManager] | None = None  # (model) -> context with the adapter off
    optimizer: Callable[[Any, Any, type, dict], Any] | None = None  # (model, cfg, cls, kwargs) -> optimizer or None


METHODS: dict[str, Method] = {}


def register(name: str, config: type, apply: Callable, **kwargs: Any) -> None:
    """Add a method to the table; called once at the bottom of each method module."""
    METHODS[name] = Method(name, config, apply, **kwargs)


def save_adapter(method: Method, model, folder: Path) -> None:
    """Write what `method` trained to `folder` (safetensors + a config file)."""
    if method.save:
        method.save(model, Path(folder))
    else:
        model.save_pretrained(str(folder), safe_serialization=True)


def load_adapter(method: Method, base, folder: Path):
    """Put the weights saved in `folder` back on `base` (a freshly loaded base model)."""
    if method.load:
        return method.load(base, Path(folder))
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder))


def adapter_disabled(method: Method, model) -> ContextManager:
    """A context in which `model` computes exactly what its base model computes."""
    if method.disabled:
        return method.disabled(model)
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return contextlib.nullcontext()


for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
