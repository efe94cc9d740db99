"""Odds Ratio Preference Optimization (Hong et al. 2024, arXiv:2403.07691) through trl.

No reference model: the loss is the SFT loss on `chosen` plus lambda times the log-sigmoid
of the log odds ratio between chosen and rejected. Data: pairs {prompt, chosen,
rejected}. Held-out reward accuracy compares each pair's log-likelihood change.
"""

from __future__ import annotations

from typing import Literal


from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from tunelab.config import RunConfig
from tunelab.config.options import Options, opt
from tunelab.objectives import register
from tunelab.training.alignment import AlignmentSpec, run_alignment


class Config(Options):
    """ORPO options (trl's ORPOConfig)."""

    name: Literal["orpo"] = "orpo"
    beta: float = opt(0.1, "lambda: weight of the odds-ratio term against the SFT term", gt=0)


def spec(cfg: RunConfig) -> AlignmentSpec:
    """trl's ORPOTrainer: no reference model."""
    return AlignmentSpec(ORPOTrainer, ORPOConfig, {"beta": cfg.objective.beta}, beta=cfg.objective.beta)


def run(cfg: RunConfig) -> dict:
    """Train a policy with ORPO and return the summary."""
    return run_alignment(cfg, spec(cfg))


register("orpo", Config, run)
