"""Simple Preference Optimization (Meng et al. 2024, arXiv:2405.14734) through trl's CPO trainer.

No reference model: the implicit reward is beta times the length-normalised
log-likelihood, and the loss asks chosen to beat rejected by a margin gamma. Data: pairs
{prompt, chosen, rejected}.
"""

from __future__ import annotations

from typing import Literal


from trl.experimental.cpo import CPOConfig, CPOTrainer

from tunelab.config import RunConfig
from tunelab.config.options import Options, opt
from tunelab.objectives import register
from tunelab.training.alignment import AlignmentSpec, run_alignment


class Config(Options):
    """SimPO options."""

    name: Literal["simpo"] = "simpo"
    beta: float = opt(2.0, "reward scale (the paper uses 2.0-2.5)", gt=0)
    gamma: float = opt(0.5, "target reward margin between chosen and rejected", ge=0, aka=("simpo_gamma",))


def spec(cfg: RunConfig) -> AlignmentSpec:
    """trl's CPOTrainer with the SimPO loss (no reference model)."""
    o = cfg.objective
    return AlignmentSpec(CPOTrainer, CPOConfig,
                         {"loss_type": "simpo", "cpo_alpha": 0.0, "beta": o.beta, "simpo_gamma": o.gamma},
                         beta=o.beta)


def run(cfg: RunConfig) -> dict:
    """Train a policy with SimPO and return the summary."""
    return run_alignment(cfg, spec(cfg))


register("simpo", Config, run)
