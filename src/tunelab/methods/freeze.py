"""Partial fine-tuning: train only the last N transformer blocks and/or the output head.

With tied input/output embeddings (SmolLM2, many small models) training the head also
trains the input embeddings: they are one tensor. A classification model's new head
always trains.

Trainable parameters: the parameters of the last N blocks + the head (+ the final norm).
"""

from typing import Literal

from torch import nn

from tunelab.config.options import Options, opt
from tunelab.errors import ConfigError
from tunelab.methods import register
from tunelab.models.families import classifier_head, transformer_blocks


class Config(Options):
    """Which blocks train."""

    name: Literal["freeze"] = "freeze"
    last_n_layers: int = opt(2, "blocks counted from the output end; 0 trains none", ge=0,
                             aka=("freeze_trainable_layers", "num_layers"))
    train_head: bool = opt(True, "the output head trains too")
    train_final_norm: bool = opt(True, "the final norm trains too")


def apply(model, cfg: Config):
    """Freeze everything, then unfreeze the last `last_n_layers` blocks, final norm and head."""
    blocks = transformer_blocks(model)
    if not 0 <= cfg.last_n_layers <= len(blocks):
        raise ConfigError(f"method.last_n_layers: must be between 0 and {len(blocks)}, got {cfg.last_n_layers}")
    model.requires_grad_(False)
    for block in list(blocks)[len(blocks) - cfg.last_n_layers :]:
        block.requires_grad_(True)
    head = classifier_head(model)
    if head is not None:
        head.requires_grad_(True)  # a new classification head always trains
    elif cfg.train_head and model.get_output_embeddings() is not None:
        model.get_output_embeddings().requires_grad_(True)
    if cfg.train_final_norm:
        norm = getattr(model.get_decoder(), "norm", None) if hasattr(model, "get_decoder") else None
        if isinstance(norm, nn.Module):
            norm.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("method freeze: nothing left to train; raise last_n_layers or set train_head: true")
    return model


register("freeze", Config, apply, saves="model", marker="config.json")
