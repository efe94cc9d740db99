"""tunelab: turn a general pretrained language model into a specialist for one task.

The public API is small; everything else lives in its subpackage.
"""

from tunelab import compare  # callable: tunelab.compare(task) runs a comparison
from tunelab.compress import export, merge, quantize
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


def plan(config, overrides: list[str] | None = None, device: str | None = None, probe: bool = True):
    """The predicted cost of training `config` (a YAML path or a RunConfig): a Plan
    (`plan.table()`, `plan.to_dict()`, `plan.fits`, `plan.advice`)."""
    return compare.plan(config, overrides, device=device, probe=probe)


__all__ = [
    "DecodingConfig",
    "RunConfig",
    "TunelabError",
    "__version__",
    "compare",
    "export",
    "generate",
    "load_adapters",
    "load_config",
    "load_engine",
    "load_model",
    "load_run",
    "merge",
    "plan",
    "quantize",
    "train",
]
