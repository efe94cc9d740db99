"""LoRA: low-rank adapters beside frozen weights (Hu et al. 2021, arXiv:2106.09685), through peft."""

from dataclasses import dataclass, field

from peft import LoraConfig, get_peft_model

from tunelab.methods import register


@dataclass
class Config:
    name: str = "lora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"  # "all-linear" or module names such as [q_proj, v_proj]
    bias: str = "none"
    modules_to_save: list[str] = field(default_factory=list)  # extra modules trained in full (e.g. a head)


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
    )


def apply(model, cfg: Config):
    """Wrap `model` in a PeftModel with LoRA adapters; only the adapters train."""
    return get_peft_model(model, peft_config(cfg))


register("lora", Config, apply)
