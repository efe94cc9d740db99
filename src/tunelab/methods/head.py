"""Head only: a classification head trained on a frozen model (the sequence-classification
model of the family, everything but its head frozen). Saves only the head.

Trainable parameters: the head's, hidden_size * num_labels (+ num_labels where the head
has a bias, as BERT's does; Llama-style `score` has none).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from safetensors.torch import load_file, save_file

from tunelab.config.options import Options
from tunelab.errors import ConfigError, ModelError
from tunelab.methods import register
from tunelab.models.families import classifier_head

WEIGHTS = "head.safetensors"
CONFIG = "head_config.json"


class Config(Options):
    """A classification head has no options of its own."""

    name: Literal["head"] = "head"


def apply(model, cfg: Config):
    """Freeze everything except the classification head."""
    head = classifier_head(model)
    if head is None:
        raise ConfigError("method head trains a classification head: use it with objective classify "
                          f"({type(model).__name__} has no classification head)")
    model.requires_grad_(False)
    head.requires_grad_(True)
    return model


def save(model, folder: Path) -> None:
    """Write the head's weights (safetensors) and the shape they belong to."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in classifier_head(model).state_dict().items()}
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, folder / WEIGHTS)
    shapes = {k: list(v.shape) for k, v in state.items()}
    (folder / CONFIG).write_text(json.dumps({"method": "head", "shapes": shapes,
                                                 "base_model_name_or_path": model.config.name_or_path}, indent=2))


def load(base, folder: Path):
    """Put the saved head on `base`, a freshly loaded classification model with as many labels."""
    head = classifier_head(base)
    if head is None:
        raise ModelError(f"{folder}: a head-only result loads onto a classification model; "
                         f"{type(base).__name__} has none")
    state = load_file(str(folder / WEIGHTS))
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    if {k: tuple(v.shape) for k, v in state.items()} != expected:
        raise ModelError(f"{folder / WEIGHTS}: head weights {sorted(state)} do not fit the base's head {expected}; "
                         "load it on the base model and label set it was trained with")
    head.load_state_dict({k: v.to(next(head.parameters()).dtype) for k, v in state.items()})
    return base.requires_grad_(False)


register("head", Config, apply, tasks=("classify",), save=save, load=load, marker=CONFIG)
