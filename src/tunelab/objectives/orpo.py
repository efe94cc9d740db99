"""Odds Ratio Preference Optimization (Hong et al. 2024, arXiv:2403.07691) through trl.

No reference model: the loss is the SFT loss on `chosen` plus lambda times the log-sigmoid
of the log odds ratio between chosen and rejected. Data: pairs {prompt, chosen,
rejected}. Held-out reward accuracy compares each pair's log-likelihood change.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl.experimental.orpo import ORPOConfig, ORPOTrainer

from tunelab.config import RunConfig
from tunelab.errors import ConfigError
from tunelab.objectives import register
from tunelab.training.alignment import AlignmentSpec, run_alignment


@dataclass
class Config:
    name: str = "orpo"
    beta: float = 0.1  # lambda: weight of the odds-ratio term against the SFT term


def spec(cfg: RunConfig) -> AlignmentSpec:
    """trl's ORPOTrainer: no reference model."""
    if cfg.objective.beta <= 0:
        raise ConfigError(f"objective.beta: must be above 0, got {cfg.objective.beta}")
    return AlignmentSpec(ORPOTrainer, ORPOConfig, {"beta": cfg.objective.beta}, beta=cfg.objective.beta)


def run(cfg: RunConfig) -> dict:
    """Train a policy with ORPO and return the summary."""
    return run_alignment(cfg, spec(cfg))


register("orpo", Config, run)
