"""Int8 and int4 weights for CPU decoding: fewer bytes read per decoded token, so faster decoding.

Decoding a few rows at a time reads every weight once per token, and on a CPU that reading
is the cost. Both paths use torch's own packed kernels:

- int8 (`_weight_int8pack_mm`): one scale per output channel (symmetric, absmax). That
  kernel runs row by row, so from some number of rows a step is faster on the layer's own
  weight, which stays in memory for prompts and larger batches (int8 adds a quarter of
  the float32 size, half of bfloat16's). `tunelab.hardware.int8_decode` says where that
  crossing lies (measured on the whole default model: int8 wins up to 8 rows and ties at 16,
  against bfloat16 weights with native bfloat16 and against float32 weights on AVX2).
- int4 (`_weight_int4pack_mm_for_cpu`): groups of 32 input channels with a scale and an
  offset each (asymmetric, min-max), the layer's own weight dropped: a sixth of float32's
  memory. Its prompt steps run within 1.5x of bfloat16's; one-row steps, on par with int8.

torchao's int8 weight-only config was measured at 18 tokens/s here without torch.compile
(against 52 for the int8 kernel), which is why this small module exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tunelab.errors import ConfigError

GROUP = 32  # int4 input channels per scale/offset pair


class Int8Linear(nn.Module):
    """A frozen nn.Linear that also holds int8 weights [out, in] and bfloat16 per-channel scales [out]."""

    def __init__(self, linear: nn.Linear, rows: int):
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.float().abs().amax(dim=1).clamp(min=1e-8) / 127
        self.register_buffer("weight_int8", torch.round(weight.float() / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.weight = nn.Parameter(weight, requires_grad=False)  # the layer's own, for prompts and large batches
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.rows = rows  # steps with fewer rows than this use the int8 weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if x.numel() // shape[-1] >= self.rows:
            return F.linear(x.to(self.weight.dtype), self.weight, self.bias)
        y = torch._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight_int8, self.scale)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features).to(self.weight.dtype)


class Int4Linear(nn.Module):
    """A frozen nn.Linear as packed int4 codes with a bfloat16 (scale, offset) per group of 32 inputs.

    Weight w ~ (q - 8) * scale + offset, q in 0..15 (tinygemm's convention); the float weight is not kept.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()  # [out, in]
        out_f, in_f = weight.shape
        groups = weight.reshape(out_f, in_f // GROUP, GROUP)
        low, high = groups.amin(-1), groups.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-8)  # [out, in / GROUP]
        codes = torch.round((groups - low[..., None]) / scale[..., None]).clamp(0, 15).reshape(out_f, in_f)
        self.register_buffer("packed", torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1))
        offset = low + 8 * scale
        self.register_buffer("scales_and_zeros", torch.stack([scale, offset], -1).transpose(0, 1)
                             .contiguous().to(torch.bfloat16))  # [in / GROUP, out, 2]
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.in_features, self.out_features = in_f, out_f
        self.dtype = linear.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).to(torch.bfloat16).contiguous()  # the kernel takes contiguous rows only
        y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features).to(self.dtype)


def quantize_int8(model: nn.Module, rows: int = 17) -> nn.Module:
    """Give every nn.Linear of `model` (the output head included) int8 weights for steps under `rows` rows.

    LoRA adapters stay in full precision: their base layers are quantized, their small A/B
    matrices are not, so several adapters still switch per request on the int8 base.
    Raises ConfigError on a GPU model (this path is for CPUs).
    """
    return _replace(model, lambda linear: Int8Linear(linear, rows), "int8")


def quantize_int4(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear of `model` by an Int4Linear where the kernel takes its shape.

    That is inputs in groups of 32 and outputs a multiple of 16; layers of other shapes (and
    LoRA A/B matrices) keep their weights. Raises ConfigError on a GPU model.
    """
    def make(linear: nn.Linear) -> nn.Module:
        return Int4Linear(linear) if linear.in_features % GROUP == 0 and linear.out_features % 16 == 0 else linear

    return _replace(model, make, "int4")


def _replace(model: nn.Module, make, name: str) -> nn.Module:
    if next(model.parameters()).device.type != "cpu":
        raise ConfigError(f"quantize {name} is a CPU decoding path; on a GPU use bf16 or the vLLM backend")
    for qualified, module in list(model.named_modules()):
        if ".lora_" in f".{qualified}":
            continue
        for child_name, child in list(module.named_children()):
            if type(child) is nn.Linear and not child_name.startswith("lora_"):
                setattr(module, child_name, make(child))
    return model
