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

from typing import Literal

from peft import PrefixTuningConfig, get_peft_model

from tunelab.config.options import Options, opt
from tunelab.methods import register
from tunelab.models.families import peft_task_type


class Config(Options):
    """Prefix tuning options (peft's PrefixTuningConfig)."""

    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = opt(20, "prefix length at every layer", ge=1)
    projection: bool = opt(False, "learn the prefixes through an MLP (more stable, more parameters)",
                           aka=("prefix_projection",))
    encoder_hidden: int = opt(512, "width of the projection MLP (with projection: true)", ge=1,
                              aka=("encoder_hidden_size",))


def apply(model, cfg: Config):
    """Wrap `model` in a PeftModel whose only trainable weights are the prefixes."""
    config = PrefixTuningConfig(task_type=peft_task_type(model), num_virtual_tokens=cfg.num_virtual_tokens,
                                prefix_projection=cfg.projection, encoder_hidden_size=cfg.encoder_hidden)
    return get_peft_model(model, config)


register("prefix", Config, apply, tasks=("causal_lm", "seq2seq"), packing=False)
