"""Compress and ship a tuned model: merge, quantize, export (HF, GGUF, Ollama), verify.

    from tunelab.compress import export, quantize, merge
    export("runs/demo-lora", ExportConfig(format="gguf", quant="q4_k_m"))   # written, then verified
    quantize("runs/demo-lora", QuantizeConfig(method="autoround-int4"))      # saved, reloaded, measured
    merge("merge.yaml")                                                      # mergekit, mergekit-moe or peft

Modules: source (what is shipped: a run or a model), hf (the merged folder), gguf (llama.cpp's
converter and quantizer, Ollama), verify (the export against the run), naive (quantization
arithmetic), quantizers (the method table), quantize (the command), merge, export (the command).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunelab.compress.export import ExportConfig
    from tunelab.compress.quantize import QuantizeConfig


def export(source: str, config: ExportConfig | None = None):
    """Write a run or model as `config` says and verify it; returns an `Exported` (see compress.export)."""
    from tunelab.compress.export import export as run

    return run(source, config)


def quantize(source: str, config: QuantizeConfig | None = None) -> dict:
    """Quantize a run or model, save, reload and measure it; returns the figures (see compress.quantize)."""
    from tunelab.compress.quantize import quantize_source

    return quantize_source(source, config)


def merge(config_path: str, output: str | None = None, **options):
    """Merge what a merge YAML describes; returns the output folder (see compress.merge)."""
    from tunelab.compress.merge import merge as run

    return run(config_path, output, **options)


__all__ = ["export", "merge", "quantize"]
