"""Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306) through trl.

KTO learns from single completions labelled desirable or not: records {prompt,
completion, label: true|false}, or preference pairs, each split into a desirable
(chosen) and an undesirable (rejected) completion. Like DPO it keeps a reference (the
base with a LoRA adapter disabled); held-out pairs, when the data has them, give
reward accuracy and margin.
"""

from __future__ import annotations

from typing import Literal


from trl import KTOConfig, KTOTrainer

from tunelab.config import RunConfig
from tunelab.config.options import Options, opt
from tunelab.objectives import register
from tunelab.training.alignment import AlignmentSpec, run_alignment


class Config(Options):
    """KTO options (trl's KTOConfig)."""

    name: Literal["kto"] = "kto"
    beta: float = opt(0.1, "strength of the pull toward the reference", gt=0)
    desirable_weight: float = opt(1.0, "weight of good answers; raise the rarer side's when counts differ", gt=0)
    undesirable_weight: float = opt(1.0, "weight of bad answers", gt=0)


def spec(cfg: RunConfig) -> AlignmentSpec:
    """trl's KTOTrainer on unpaired completions."""
    o = cfg.objective
    return AlignmentSpec(KTOTrainer, KTOConfig,
                         {"beta": o.beta, "desirable_weight": o.desirable_weight,
                          "undesirable_weight": o.undesirable_weight,
                          # the KL term pairs each completion with its batch neighbour's prompt: a fixed order
                          "train_sampling_strategy": "sequential"}, beta=o.beta, unpaired=True)


def run(cfg: RunConfig) -> dict:
    """Train a policy with KTO and return the summary."""
    return run_alignment(cfg, spec(cfg))


register("kto", Config, run)
