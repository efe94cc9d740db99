"""Partial fine-tuning: train only the last N transformer blocks and/or the output head.

With tied input/output embeddings (SmolLM2, many small models) training the head also
trains the input embeddings: they are one tensor.
"""

from dataclasses import dataclass

from torch import nn

from tunelab.errors import ConfigError
from tunelab.methods import register


@dataclass
class Config:
    name: str = "freeze"
    last_n_layers: int = 2  # blocks counted from the output end; 0 trains none
    train_head: bool = True
    train_final_norm: bool = True


def transformer_blocks(model) -> nn.ModuleList:
    """The model's list of transformer blocks (the ModuleList as long as num_hidden_layers)."""
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"method freeze: cannot find the {n} transformer blocks of {type(model).__name__}")


def apply(model, cfg: Config):
    """Freeze everything, then unfreeze the last `last_n_layers` blocks, final norm and head."""
    blocks = transformer_blocks(model)
    if not 0 <= cfg.last_n_layers <= len(blocks):
        raise ConfigError(f"method.last_n_layers: must be between 0 and {len(blocks)}, got {cfg.last_n_layers}")
    model.requires_grad_(False)
    for block in list(blocks)[len(blocks) - cfg.last_n_layers :]:
        block.requires_grad_(True)
    if cfg.train_head and model.get_output_embeddings() is not None:
        model.get_output_embeddings().requires_grad_(True)
    if cfg.train_final_norm:
        norm = getattr(model.get_decoder(), "norm", None)
        if norm is not None:
            norm.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("method freeze: nothing left to train; raise last_n_layers or set train_head: true")
    return model


register("freeze", Config, apply, saves="model")
