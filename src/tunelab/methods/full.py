"""Full fine-tuning: every parameter trains."""

from typing import Literal

from tunelab.config.options import Options

from tunelab.methods import register


class Config(Options):
    """Full fine-tuning has no options of its own."""

    name: Literal["full"] = "full"


def apply(model, cfg: Config):
    """Make every parameter trainable."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


register("full", Config, apply, freezes_base=False, saves="model", marker="config.json")
