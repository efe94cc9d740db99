"""How a model trains under autocast: frozen weights kept in the compute dtype, adapters not upcasting.

Which dtype that is comes from the hardware (`tunelab.hardware.compute_dtype`).
"""

from __future__ import annotations

import torch


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
