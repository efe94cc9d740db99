"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290) through trl.

Data: pairs {prompt, chosen, rejected}. Losses: `sigmoid` (DPO), `ipo` (Azar et al.
2023, arXiv:2310.12036) and `hinge` (SLiC, Zhao et al. 2023). The reference is the model
before training; with a LoRA policy it is the base with the adapter disabled, not a
second copy in memory. Held-out reward accuracy and margin go to summary.json.
"""

from __future__ import annotations

from typing import Literal


from trl import DPOConfig, DPOTrainer

from tunelab.config import RunConfig
from tunelab.config.options import Options, opt
from tunelab.objectives import register
from tunelab.training.alignment import AlignmentSpec, run_alignment

class Config(Options):
    """DPO options (trl's DPOConfig)."""

    name: Literal["dpo"] = "dpo"
    loss: Literal["sigmoid", "ipo", "hinge"] = opt("sigmoid", "sigmoid (DPO), ipo or hinge (SLiC)", aka=("loss_type",))
    beta: float = opt(0.1, "strength of the pull toward the reference (IPO: its regulariser tau)", gt=0,
                      aka=("pref_beta",))
    label_smoothing: float = opt(0.0, "conservative DPO: assumed share of flipped labels", ge=0, lt=0.5)


def spec(cfg: RunConfig) -> AlignmentSpec:
    """trl's DPOTrainer with the configured loss."""
    o = cfg.objective
    return AlignmentSpec(DPOTrainer, DPOConfig,
                         {"loss_type": [o.loss], "beta": o.beta, "label_smoothing": o.label_smoothing}, beta=o.beta)


def run(cfg: RunConfig) -> dict:
    """Train a policy with DPO and return the summary."""
    return run_alignment(cfg, spec(cfg))


register("dpo", Config, run)
