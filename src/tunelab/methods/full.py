"""Full fine-tuning: every parameter trains."""

from dataclasses import dataclass

from tunelab.methods import register


@dataclass
class Config:
    name: str = "full"


def apply(model, cfg: Config):
    """Make every parameter trainable."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


register("full", Config, apply, freezes_base=False, saves="model")
