"""P-tuning: virtual tokens produced by a trained prompt encoder (an MLP or LSTM over
trainable embeddings), prepended to the input, through peft (Liu et al. 2021, arXiv:2103.10385).

Trainable parameters (MLP encoder, e = encoder_hidden, h = hidden_size):
num_virtual_tokens * h + (h * e + e) + (e * e + e) + (e * h + h).
"""

from __future__ import annotations

from typing import Literal

from peft import PromptEncoderConfig, get_peft_model

from tunelab.config.options import Options, opt
from tunelab.methods import register
from tunelab.models.families import peft_task_type


class Config(Options):
    """P-tuning options (peft's PromptEncoderConfig)."""

    name: Literal["ptuning"] = "ptuning"
    num_virtual_tokens: int = opt(20, "virtual tokens put before the input", ge=1)
    encoder_hidden: int = opt(128, "width of the prompt encoder", ge=1, aka=("encoder_hidden_size",))
    encoder: Literal["MLP", "LSTM"] = opt("MLP", "the prompt encoder", aka=("encoder_reparameterization_type",))


def apply(model, cfg: Config):
    """Wrap `model` in a PeftModel whose trainable weights are the prompt encoder's."""
    config = PromptEncoderConfig(task_type=peft_task_type(model), num_virtual_tokens=cfg.num_virtual_tokens,
                                 encoder_hidden_size=cfg.encoder_hidden, encoder_reparameterization_type=cfg.encoder)
    return get_peft_model(model, config)


register("ptuning", Config, apply, tasks=("causal_lm", "seq2seq"), packing=False)
