"""QLoRA: LoRA on a 4-bit NF4 base (Dettmers et al. 2023, arXiv:2305.14314), through bitsandbytes + peft."""

from dataclasses import dataclass, field

import torch
from peft import get_peft_model, prepare_model_for_kbit_training

from tunelab.methods import lora, register


@dataclass
class Config(lora.Config):
    name: str = "qlora"
    quant_type: str = "nf4"  # nf4 | fp4
    double_quant: bool = True  # quantize the quantization constants too (saves ~0.4 bit/param)
    modules_to_save: list[str] = field(default_factory=list)


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
    from tunelab.training.precision import bf16_supported

    return bf16_supported()


def apply(model, cfg: Config):
    """Prepare the 4-bit model for training (norms in fp32, input grads) and add LoRA adapters."""
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora.peft_config(cfg))


register("qlora", Config, apply, load_kwargs=load_kwargs)
