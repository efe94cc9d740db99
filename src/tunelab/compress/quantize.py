"""`tunelab quantize MODEL|RUN --method ...`: a smaller model, saved so that it reloads, and measured.

A run is merged first (`source.load_merged`); a calibrated method draws its calibration texts
from the run's own training data unless given a file. The methods themselves are in
`quantizers` (the table) and `naive` (the arithmetic every other method is measured against).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def is_quantized(model) -> bool:
    """Whether `model` already holds quantized weights (a library's or a naive scheme's)."""
    config = getattr(model, "config", None)
    return bool(getattr(model, "is_quantized", False) or getattr(config, "quantization_config", None))


def is_quantized_folder(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and "quantization_config" in json.loads(config.read_text())


def load_any(name: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a model name, folder or .gguf, or a folder `tunelab quantize` wrote."""
    from tunelab.models import hub, load_model

    folder = hub.resolve(str(name))
    if is_quantized_folder(folder):
        from tunelab.compress.quantizers import load_quantized

        return load_quantized(folder, dtype=dtype)
    return load_model(str(name), dtype=dtype)
