"""QLoRA: LoRA on a 4-bit NF4 base (Dettmers et al. 2023, arXiv:2305.14314), through bitsandbytes + peft.

Trainable parameters: as lora (the 4-bit base is frozen).
"""

from __future__ import annotations

from typing import Literal

import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from pydantic import model_validator

from tunelab.config.options import fail, opt
from tunelab.methods import lora, register
from tunelab.models.families import peft_task_type


class Config(lora.Config):
    """LoRA options plus how the base is quantized."""

    name: Literal["qlora"] = "qlora"
    quant_type: Literal["nf4", "fp4"] = opt("nf4", "4-bit number format of the base", aka=("bnb_4bit_quant_type",))
    double_quant: bool = opt(True, "quantize the quantization constants too (saves ~0.4 bit/param)",
                             aka=("bnb_4bit_use_double_quant",))

    @model_validator(mode="after")
    def _no_svd_init(self) -> Config:
        if lora.is_svd_init(self):
            fail("init", f"{self.init} needs the base weights in float for its SVD, and qlora loads them in 4 "
                 "bits; use method lora with this init, or qlora with init: default")
        return self


def load_kwargs(cfg: Config) -> dict:
    """from_pretrained kwargs that load the base in 4 bits."""
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if _bf16_ok() else torch.float32
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=torch.uint8,
        )
    }


def _bf16_ok() -> bool:
    from tunelab.hardware import bf16_native

    return bf16_native()


def apply(model, cfg: Config):
    """Prepare the 4-bit model for training (norms in fp32, input grads) and add LoRA adapters.

    The LoRA variants (DoRA, rsLoRA, LoRA+) work as with `lora`; PiSSA/OLoRA do not: they
    take an SVD of float weights, which a 4-bit base no longer has.
    """
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    keep_4bit_layout(model)
    return get_peft_model(model, lora.peft_config(cfg, peft_task_type(model)))


def keep_4bit_layout(model) -> None:
    """Stop bitsandbytes repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes (0.50) rewrites a Linear4bit weight in place,
    the first time it runs in eval mode without grad (as Trainer.evaluate does), into a
    layout whose kernel has no backward and that dequantize_4bit does not read: training
    after an evaluation silently loses the gradient through every 4-bit layer, and
    merging the adapter dequantizes garbage.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


register("qlora", Config, apply, load_kwargs=load_kwargs, mergeable=True, optimizer=lora.make_optimizer)
