"""Prompt tuning: trained virtual-token embeddings prepended to every input, through peft
(Lester et al. 2021, arXiv:2104.08691).

Initialised at random or from the embeddings of a text (`init_text`, cycled to fill the
virtual tokens), which usually trains faster and more stably.

Trainable parameters: num_virtual_tokens * hidden_size.
"""

from __future__ import annotations

from typing import Literal

from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

from tunelab.config.options import Options, opt
from tunelab.methods import register
from tunelab.models.families import peft_task_type


class Config(Options):
    """Prompt tuning options (peft's PromptTuningConfig)."""

    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = opt(20, "virtual tokens put before the input", ge=1)
    init_text: str | None = opt(None, "start the tokens from this text's embeddings, e.g. \"Classify the sentiment "
                                "of this review:\"; unset: random", aka=("prompt_tuning_init_text",))


def apply(model, cfg: Config):
    """Wrap `model` in a PeftModel whose only trainable weights are the virtual tokens."""
    text = {}
    if cfg.init_text:
        text = {"prompt_tuning_init": PromptTuningInit.TEXT, "prompt_tuning_init_text": cfg.init_text,
                "tokenizer_name_or_path": model.config.name_or_path}
    config = PromptTuningConfig(task_type=peft_task_type(model), num_virtual_tokens=cfg.num_virtual_tokens,
                                **(text or {"prompt_tuning_init": PromptTuningInit.RANDOM}))
    return get_peft_model(model, config)


register("prompt", Config, apply, tasks=("causal_lm", "seq2seq"), packing=False)
