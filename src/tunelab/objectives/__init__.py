"""Objectives: what training optimises.

Each module defines a `Config` (an `Options` class whose `name` field is `Literal["its name"]`,
every option with its type, default, bounds and help) and a `run(cfg) -> dict` that reads
top to bottom from setup to save, and registers both with one line; a rule that spans
sections (the batch size GRPO needs) is the optional `check(run_config)` beside them.
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
    check: Callable[[Any], None] | None = None  # (RunConfig) -> None: rules across sections, run when it is read


OBJECTIVES: dict[str, Objective] = {}


def register(name: str, config: type, run: Callable, check: Callable | None = None) -> None:
    """Add an objective to the table; `config` is an Options class whose `name` is Literal[name]."""
    OBJECTIVES[name] = Objective(name, config, run, check)


def run(cfg) -> dict:
    """Run the objective a resolved RunConfig names; returns its summary, with the plan's
    prediction beside the measured costs when `train.predict` is on."""
    from tunelab.compare.record import predict, record_prediction

    prediction = predict(cfg) if cfg.train.predict else None
    summary = OBJECTIVES[cfg.objective_name].run(cfg)
    return record_prediction(cfg, summary, prediction)


for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
