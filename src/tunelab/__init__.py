"""tunelab: turn a general pretrained language model into a specialist for one task.

The public API is small; everything else lives in its subpackage.
"""

import tunelab.compare as _compare_package  # loaded first: `tunelab.compare` below then names the function
from tunelab.config import RunConfig, load_config
from tunelab.errors import TunelabError
from tunelab.infer import DecodingConfig, generate
from tunelab.infer.load import load_engine
from tunelab.models import load_adapters, load_model, load_run

__version__ = "0.1.0"


def train(config: str | RunConfig | None = None, overrides: list[str] | None = None) -> dict:
    """Run the objective a config names (a YAML path or a RunConfig) and return its summary."""
    from tunelab.objectives import run

    cfg = config if isinstance(config, RunConfig) else load_config(config, overrides)
    return run(cfg)


def compare(task, overrides: list[str] | None = None, **options):
    """One task (a YAML path or a CompareTask) through its ladder of routes; returns the Report
    (`report.routes`, `report.recommendation`, `report.folder`). Options: resume, ray, search."""
    from tunelab.compare.runner import compare as run_comparison

    return run_comparison(task, overrides, **options)


def plan(config, overrides: list[str] | None = None, device: str | None = None, probe: bool = True):
    """The predicted cost of training `config` (a YAML path or a RunConfig): a Plan
    (`plan.table()`, `plan.to_dict()`, `plan.fits`, `plan.advice`)."""
    return _compare_package.plan(config, overrides, device=device, probe=probe)


__all__ = [
    "DecodingConfig",
    "RunConfig",
    "TunelabError",
    "__version__",
    "compare",
    "generate",
    "load_adapters",
    "load_config",
    "load_engine",
    "load_model",
    "load_run",
    "plan",
    "train",
]
