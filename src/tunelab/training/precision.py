"""Which float type to compute in, decided from the hardware.

bfloat16 matrix work is several times faster than float32 on CPUs with AVX512-BF16 or
AMX and on recent GPUs; elsewhere it is emulated and slow, so float32 is used.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from tunelab.errors import ConfigError


@functools.cache
def bf16_supported() -> bool:
    """True when this machine does bfloat16 matrix multiplies natively."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def compute_dtype(precision: str) -> torch.dtype:
    """Map a config value (auto | bf16 | fp32) to a torch dtype."""
    if precision == "auto":
        return torch.bfloat16 if bf16_supported() else torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    raise ConfigError(f"train.precision: expected auto, bf16 or fp32, got {precision!r}")


def store_frozen_in(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Store frozen floating-point parameters in `dtype`; trainable ones stay float32.

    Frozen weights never receive updates, so keeping them in the compute dtype loses
    nothing and saves the cast autocast would otherwise redo on every forward.
    Returns the number of parameters converted.
    """
    n = 0
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
            n += p.numel()
    return n


def adapters_follow_autocast(model: torch.nn.Module) -> None:
    """Stop peft from upcasting each adapter's input to the adapter's float32 weights.

    Under autocast the adapter matmuls run in the compute dtype anyway, so that upcast
    only adds two full-size activation copies per adapted layer (the largest cost after
    the matmuls themselves on CPU). Only for models that train under autocast.
    """
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):
            module.cast_input_dtype_enabled = False
