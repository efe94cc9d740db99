"""Objectives: what training optimises.

Each module defines a `Config` dataclass (with a `name` field) and a `run(cfg) -> dict`
that reads top to bottom from setup to save, and registers both with one line.
Modules are discovered automatically.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Objective:
    name: str
    config: type
    run: Callable[[Any], dict]  # (RunConfig) -> summary dict


OBJECTIVES: dict[str, Objective] = {}


def register(name: str, config: type, run: Callable) -> None:
    OBJECTIVES[name] = Objective(name, config, run)


def run(cfg) -> dict:
    """Run the objective a resolved RunConfig names; returns its summary."""
    return OBJECTIVES[cfg.objective_name].run(cfg)


for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
