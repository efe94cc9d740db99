"""Prefix tuning: trained key/value vectors prepended at every layer's attention, through
peft (Li & Liang 2021, arXiv:2101.00190).

With `projection: true` the prefixes come from a small MLP over a short embedding (the
reparameterisation the paper trains with); it folds into plain prefixes afterwards.

Trainable parameters, without projection: num_virtual_tokens * num_layers * 2 * kv_dim,
kv_dim = num_key_value_heads * head_dim (the model's key/value width). With projection:
num_virtual_tokens * kv_dim + (kv_dim + 1) * encoder_hidden
+ (encoder_hidden + 1) * num_layers * 2 * kv_dim.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import PrefixTuningConfig, get_peft_model

from tunelab.errors import ConfigError
from tunelab.methods import register
from tunelab.models.families import peft_task_type


@dataclass
class Config:
    name: str = "prefix"
    num_virtual_tokens: int = 20
    projection: bool = False
    encoder_hidden: int = 512  # width of the projection MLP (with projection: true)


def apply(model, cfg: Config):
    """Wrap `model` in a PeftModel whose only trainable weights are the prefixes."""
    if cfg.num_virtual_tokens < 1:
        raise ConfigError(f"method.num_virtual_tokens: must be at least 1, got {cfg.num_virtual_tokens}")
    config = PrefixTuningConfig(task_type=peft_task_type(model), num_virtual_tokens=cfg.num_virtual_tokens,
                                prefix_projection=cfg.projection, encoder_hidden_size=cfg.encoder_hidden)
    return get_peft_model(model, config)


register("prefix", Config, apply, tasks=("causal_lm", "seq2seq"), packing=False)
