"""P-tuning: virtual tokens produced by a trained prompt encoder (an MLP or LSTM over
trainable embeddings), prepended to the input, through peft (Liu et al. 2021, arXiv:2103.10385).

Trainable parameters (MLP encoder, e = encoder_hidden, h = hidden_size):
num_virtual_tokens * h + (h * e + e) + (e * e + e) + (e * h + h).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import PromptEncoderConfig, get_peft_model

from tunelab.errors import ConfigError
from tunelab.methods import register
from tunelab.models.families import peft_task_type


@dataclass
class Config:
    name: str = "ptuning"
    num_virtual_tokens: int = 20
    encoder_hidden: int = 128
    encoder: str = "MLP"  # MLP | LSTM


def apply(model, cfg: Config):
    """Wrap `model` in a PeftModel whose trainable weights are the prompt encoder's."""
    if cfg.num_virtual_tokens < 1:
        raise ConfigError(f"method.num_virtual_tokens: must be at least 1, got {cfg.num_virtual_tokens}")
    if cfg.encoder not in ("MLP", "LSTM"):
        raise ConfigError(f"method.encoder: expected MLP or LSTM, got {cfg.encoder!r}")
    config = PromptEncoderConfig(task_type=peft_task_type(model), num_virtual_tokens=cfg.num_virtual_tokens,
                                 encoder_hidden_size=cfg.encoder_hidden, encoder_reparameterization_type=cfg.encoder)
    return get_peft_model(model, config)


register("ptuning", Config, apply, tasks=("causal_lm", "seq2seq"), packing=False)
