"""Int8 weights for CPU decoding: half the bytes of bfloat16 per decoded token, so about twice the speed.

Decoding a few rows at a time reads every weight once per token, and on a CPU that reading
is the cost. Each linear layer gets an int8 copy of its weight with one scale per output
channel (symmetric, absmax), used through torch's own int8 weight kernel while a step
has fewer than ROWS rows (tokens). That kernel runs row by row, so for prompts and larger batches a
bfloat16 matmul is faster (measured here on the default model's shapes: 4 rows 1.4-2x faster
in int8, 8 rows even, 16 rows 1.5-2x slower): those keep using the layer's own weight,
which stays in memory (int8 adds half the bfloat16 size). torchao's int8 weight-only
config was measured at 18 tokens/s here without torch.compile (against 52 for this
kernel), which is why this small module exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import ConfigError

ROWS = 5  # 1-4 rows: int8 wins; from about 8 rows bfloat16 does


class Int8Linear(nn.Module):
    """A frozen nn.Linear that also holds int8 weights [out, in] and bfloat16 per-channel scales [out]."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.float().abs().amax(dim=1).clamp(min=1e-8) / 127
        self.register_buffer("weight_int8", torch.round(weight.float() / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.weight = nn.Parameter(weight, requires_grad=False)  # the layer's own, for prompts and large batches
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if x.numel() // shape[-1] >= ROWS:
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias)
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight_int8, self.scale)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features).to(self.weight.dtype)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` (the output head included) by an Int8Linear, in place.

    LoRA adapters stay in full precision: their base layers are quantized, their small A/B
    matrices are not, so several adapters still switch per request on the int8 base.
    Raises ConfigError on a GPU model (this path is for CPUs).
    """
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError("quantize int8 is the CPU decoding path; on a GPU use bf16 or the vLLM backend")
    for qualified, module in list(model.named_modules()):
        if ".lora_" in f".{qualified}":
            continue
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and not name.startswith("lora_"):
                setattr(module, name, Int8Linear(child))
    return model
