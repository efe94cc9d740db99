"""Load models and tokenizers safely: safetensors only unless asked, no remote code unless asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ModelConfig
from tunelab.errors import ModelError
from tunelab.models import hub


def check_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuse pickle checkpoints (which can run code when loaded) unless the user allowed them."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles and not allow_pickle:
        raise ModelError(
            f"{folder}: only pickle weights ({', '.join(pickles[:3])}) and no .safetensors; pickle files can run "
            "code when loaded. Convert them to safetensors, or set model.allow_pickle: true if you trust the source"
        )
    if not pickles:
        raise ModelError(f"{folder}: no weight files (*.safetensors) found")


def load_tokenizer(folder: str | Path, trust_remote_code: bool = False):
    """Load a tokenizer and give it a pad token (the EOS token if it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    cfg: ModelConfig | str,
    *,
    dtype: torch.dtype = torch.float32,
    auto_class: Any = None,
    **kwargs: Any,
):
    """Load (model, tokenizer) for `cfg` (a ModelConfig or a model name).

    Args:
        dtype: weight dtype to load in.
        auto_class: transformers Auto class (default AutoModelForCausalLM).
        kwargs: passed to from_pretrained (for example a quantization_config).
    Raises:
        ModelError: the model cannot be found or is unsafe to load as configured.
    """
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    folder = hub.resolve(cfg.name, cfg.revision)
    check_weights(folder, cfg.allow_pickle)
    auto_class = auto_class or AutoModelForCausalLM
    try:
        model = auto_class.from_pretrained(
            str(folder),
            dtype=dtype,
            use_safetensors=None if cfg.allow_pickle else True,  # allowing pickle must not refuse safetensors
            trust_remote_code=cfg.trust_remote_code,
            **({"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}),
            **kwargs,
        )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"{cfg.name}: this model needs its own code to load; set model.trust_remote_code: true "
                "only if you trust its authors"
            ) from None
        raise
    tokenizer = load_tokenizer(folder, cfg.trust_remote_code)
    return model, tokenizer


def load_run(run_or_folder: str | Path, base: ModelConfig | str | None = None, dtype: torch.dtype = torch.float32):
    """Load the model a run produced: its adapter on the base, or its full model folder.

    `run_or_folder` is a run folder (runs/<name>) or an adapter/model folder inside one.
    The base defaults to the one recorded in the adapter's config.
    """
    path = Path(run_or_folder)
    folder = path / "adapter" if (path / "adapter").is_dir() else path / "model" if (path / "model").is_dir() else path
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        recorded = json.loads((folder / "adapter_config.json").read_text())
        base_cfg = base or ModelConfig(name=_recorded_base(folder, recorded))
        model, tokenizer = load_model(base_cfg, dtype=dtype)
        model = PeftModel.from_pretrained(model, str(folder))
        if (folder / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(folder)
        return model, tokenizer
    if (folder / "config.json").is_file():
        return load_model(ModelConfig(name=str(folder)), dtype=dtype)
    raise ModelError(f"{path}: no adapter/ or model/ found; is this a finished run folder?")


def _recorded_base(folder: Path, adapter_config: dict) -> str:
    meta = folder.parent / "config.yaml"
    if meta.is_file():  # the tunelab run config names the base as the user gave it (alias or path)
        import yaml

        name = (yaml.safe_load(meta.read_text()) or {}).get("model", {}).get("name")
        if name:
            return name
    name = adapter_config.get("base_model_name_or_path")
    if not name:
        raise ModelError(f"{folder}: adapter_config.json does not name its base model; pass --model")
    return name
