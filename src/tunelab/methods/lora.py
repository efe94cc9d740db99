"""LoRA and its variants, through peft.

* LoRA: low-rank adapters beside frozen weights, W + (alpha/r) B A (Hu et al. 2021, arXiv:2106.09685).
* DoRA (`dora: true`): the weight split into magnitude and direction; LoRA adapts the
  direction, a trained vector the magnitude (Liu et al. 2024, arXiv:2402.09353).
* rsLoRA (`rslora: true`): scale alpha/sqrt(r) instead of alpha/r, so higher ranks keep
  learning (Kalajdzievski 2023, arXiv:2312.03732).
* PiSSA (`init: pissa`): A and B start as the top-r singular vectors of W and the base
  keeps the residual (Meng et al. 2024, arXiv:2404.02948). `pissa_niter_K` uses a fast
  randomised SVD. Saved as a plain LoRA of rank 2r on the original base, so the result
  loads anywhere LoRA does.
* LoRA+ (`lora_plus_ratio: 16`): B learns `ratio` times faster than A (Hayou et al. 2024,
  arXiv:2402.12354).

Trainable parameters: sum over adapted Linear(in, out) of r * (in + out), plus `out` per
layer with DoRA; the task head too for classification (peft keeps it trainable).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from pydantic import model_validator
from safetensors.torch import load_file, save_file

from tunelab.config.options import Options, fail, opt
from tunelab.methods import register
from tunelab.models.families import peft_task_type

INITIAL_LORA = "_tunelab_initial_lora"  # attribute holding A and B as PiSSA/OLoRA initialised them


class Config(Options):
    """LoRA options (peft's LoraConfig under the names its users know)."""

    name: Literal["lora"] = "lora"
    r: int = opt(16, "rank of the low-rank update", ge=1, aka=("lora_r", "rank"))
    alpha: int = opt(32, "scaling numerator: the update is scaled by alpha / r", ge=1, aka=("lora_alpha",))
    dropout: float = opt(0.0, "dropout on the adapter's input", ge=0, lt=1, aka=("lora_dropout",))
    target_modules: list[str] | str = opt("all-linear", "all-linear, or module names such as [q_proj, v_proj]",
                                          aka=("lora_target", "target"))
    bias: Literal["none", "all", "lora_only"] = opt("none", "which biases train")
    modules_to_save: list[str] = opt([], "extra modules trained in full (e.g. a head)")
    dora: bool = opt(False, "DoRA: adapt direction and magnitude separately", aka=("use_dora",))
    rslora: bool = opt(False, "rsLoRA: scale by alpha / sqrt(r)", aka=("use_rslora",))
    init: str = opt("default", "default | gaussian | pissa | pissa_niter_<K> | olora", aka=("init_lora_weights",),
                    pattern=r"^(default|gaussian|pissa|pissa_niter_[0-9]+|olora)$")
    lora_plus_ratio: float = opt(0.0, "LoRA+: B learns this many times faster than A (16 in the paper); 0 is off",
                                 ge=0, aka=("loraplus_lr_ratio",))

    @model_validator(mode="after")
    def _init_and_dora(self) -> Config:
        if is_svd_init(self) and self.dora:
            fail("init", f"{self.init} (an SVD start) cannot be combined with dora: true; choose one")
        return self


def peft_config(cfg: Config, task_type: str = "CAUSAL_LM") -> LoraConfig:
    """The peft LoraConfig this method's options describe."""
    return LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        bias=cfg.bias,
        modules_to_save=cfg.modules_to_save or None,
        task_type=task_type,
        use_dora=cfg.dora,
        use_rslora=cfg.rslora,
        init_lora_weights=True if cfg.init == "default" else cfg.init,
    )


def apply(model, cfg: Config):
    """Wrap `model` in a PeftModel with LoRA adapters; only the adapters (and a task head) train."""
    model = get_peft_model(model, peft_config(cfg, peft_task_type(model)))
    if is_svd_init(cfg):
        remember_initial_adapter(model)
    return model


def is_svd_init(cfg: Config) -> bool:
    return cfg.init.startswith("pissa") or cfg.init == "olora"


def remember_initial_adapter(model) -> None:
    """Keep A and B as initialised: PiSSA/OLoRA moved them out of the base weights, and the
    saved adapter is expressed against the original base through them (see `save`)."""
    state = get_peft_model_state_dict(model)
    setattr(model, INITIAL_LORA, {k: v.detach().clone() for k, v in state.items() if ".lora_" in k})


def save(model, folder: Path) -> None:
    """Save the adapter; a PiSSA/OLoRA adapter is saved as the plain LoRA it amounts to on
    the original base: W_res + B A = W + [B | -B0] [A ; A0] (rank 2r, same scaling)."""
    model.save_pretrained(str(folder), safe_serialization=True)
    initial = getattr(model, INITIAL_LORA, None)
    if initial is None:
        return
    weights = Path(folder) / "adapter_model.safetensors"
    state = load_file(str(weights))
    for key, init in initial.items():
        if ".lora_A." in key:
            state[key] = torch.cat([state[key], init.to(state[key].dtype)], dim=0)  # (2r, in)
        elif ".lora_B." in key:
            state[key] = torch.cat([state[key], -init.to(state[key].dtype)], dim=1)  # (out, 2r)
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, weights)
    config_path = Path(folder) / "adapter_config.json"
    config = json.loads(config_path.read_text())
    # scaling alpha/r (or alpha/sqrt(r) with rsLoRA) must not change when r doubles
    config["lora_alpha"] = config["lora_alpha"] * (math.sqrt(2) if config.get("use_rslora") else 2)
    config["r"], config["init_lora_weights"] = 2 * config["r"], True
    config_path.write_text(json.dumps(config, indent=2))


def make_optimizer(model, cfg: Config, optimizer_cls, optimizer_kwargs: dict):
    """LoRA+: an optimizer with B's learning rate `lora_plus_ratio` times A's; None otherwise."""
    if not cfg.lora_plus_ratio:
        return None
    from peft.optimizers import create_loraplus_optimizer

    kwargs = dict(optimizer_kwargs)
    lr = kwargs.pop("lr")
    return create_loraplus_optimizer(model, optimizer_cls, lr=lr, loraplus_lr_ratio=cfg.lora_plus_ratio, **kwargs)


register("lora", Config, apply, mergeable=True, save=save, optimizer=make_optimizer)
