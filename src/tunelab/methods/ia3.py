"""IA3: trained vectors that rescale keys, values and the feed-forward activations, through
peft (Liu et al. 2022, arXiv:2205.05638). The fewest parameters of any method here;
mergeable into the base weights.

Trainable parameters: for each adapted attention Linear(in, out), `out`; for each adapted
feed-forward Linear(in, out), `in` (the scale acts on its input). peft's defaults per
architecture choose the layers (Llama: k_proj, v_proj, down_proj); plus the task head
for classification.
"""

from __future__ import annotations

from typing import Literal

from peft import IA3Config, get_peft_model

from tunelab.config.options import Options, opt
from tunelab.methods import register
from tunelab.models.families import peft_task_type


class Config(Options):
    """IA3 options (peft's IA3Config)."""

    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = opt(None, "modules whose activations are scaled; unset: peft's default for "
                                           "the architecture")
    feedforward_modules: list[str] | None = opt(None, "the subset of target_modules scaled on their input")


def apply(model, cfg: Config):
    """Wrap `model` in a PeftModel with IA3 scaling vectors (initialised to 1: the base exactly)."""
    config = IA3Config(task_type=peft_task_type(model), target_modules=cfg.target_modules,
                       feedforward_modules=cfg.feedforward_modules)
    return get_peft_model(model, config)


register("ia3", Config, apply, mergeable=True)
