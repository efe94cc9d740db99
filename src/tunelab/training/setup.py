"""Steps every objective shares: load the model for a method, count parameters, save the result."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import set_seed

from tunelab.config import RunConfig
from tunelab.data.templates import ensure_chat_template, eos_ids_for_generation
from tunelab.methods import METHODS
from tunelab.models.loading import load_model
from tunelab.training.precision import adapters_follow_autocast, compute_dtype, store_frozen_in

log = logging.getLogger(__name__)


def load_for_training(cfg: RunConfig, auto_class=None):
    """Load the base model, apply the method, and store frozen weights in the compute dtype.

    Returns (model, tokenizer).
    """
    # Methods initialise new weights (LoRA's A) here, before the Trainer seeds: seed now, or
    # the same config trains differently depending on what ran before in this process.
    set_seed(cfg.train.seed)
    method = METHODS[cfg.method_name]
    extra = method.load_kwargs(cfg.method) if method.load_kwargs else {}
    model, tokenizer = load_model(cfg.model, dtype=torch.float32, auto_class=auto_class, **extra)
    ensure_chat_template(tokenizer)
    model.config.use_cache = False
    model = method.apply(model, cfg.method)
    dtype = compute_dtype(cfg.train.precision)
    if method.freezes_base and dtype != torch.float32:
        store_frozen_in(model, dtype)
        adapters_follow_autocast(model)
    if cfg.train.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input when embeddings are frozen
    return model, tokenizer


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}


def save_result(trainer, tokenizer, cfg: RunConfig, run_dir: Path) -> Path:
    """Save the adapter (adapter/) or the whole model (model/) with tokenizer and stop tokens.

    The folder loads with plain transformers / peft, without tunelab.
    """
    method = METHODS[cfg.method_name]
    folder = run_dir / ("adapter" if method.saves == "adapter" else "model")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if method.saves == "model":
        model = model.float()  # frozen parts were kept in the compute dtype during training
    gen = model.generation_config
    gen.eos_token_id = eos_ids_for_generation(tokenizer, gen.eos_token_id)
    gen.pad_token_id = tokenizer.pad_token_id
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        gen.save_pretrained(str(folder))
        if method.saves == "adapter":
            _record_base(folder, model)
    trainer.accelerator.wait_for_everyone()
    return folder


def _record_base(folder: Path, model) -> None:
    """Point adapter_config.json at the local base folder, so peft alone can reload it."""
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    base = model.get_base_model().config.name_or_path
    if base and Path(base).is_dir():
        data["base_model_name_or_path"] = str(Path(base).resolve())
        path.write_text(json.dumps(data, indent=2))
