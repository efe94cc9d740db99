"""Every hardware-dependent default, chosen in one place from `detect()`, each with its reason.

Measured by `bench/cpu_paths.py` (tokens/s of each path on each kind of CPU; bench/README.md):
- bfloat16 is several times faster than float32 where the CPU computes it (AVX512-BF16,
  AMX) and 70-600x slower where it is emulated (AVX2 only), so `auto` precision is
  bfloat16 only where it is native, for training, scoring and inference alike.
- Decoding a few streams reads every weight once per token. int8 weights (torch's
  `_weight_int8pack_mm`) read a quarter of float32's bytes and half of bfloat16's: the
  faster path for one stream on AVX2 and AVX-512 CPUs alike; llama.cpp, built for AVX2,
  is faster still for a GGUF model.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch

from tunelab.errors import ConfigError
from tunelab.hardware.machine import Hardware, detect

# Rows (tokens) per step below which int8 weights beat the layer's own weights. Measured on the
# whole default model (bench/cpu_paths.py), 8 streams: int8 264 tok/s against bfloat16 weights'
# 220 (AVX512-BF16), 162 against float32's 88 (AVX2); at 16 streams int8 and bfloat16 tie.
# (One layer timed alone, its weights hot in cache, had put the crossing at 5 rows: too low.)
INT8_ROWS = 17
FEW_STREAMS = 5  # engines batching fewer streams than this decode a GGUF-backed model through llama.cpp


@dataclass(frozen=True)
class Choice:
    what: str
    value: str
    why: str


def bf16_native(hw: Hardware | None = None) -> bool:
    """True where bfloat16 matrix work runs in hardware: a GPU with it, or a CPU with AVX512-BF16/AMX."""
    hw = hw or detect()
    if hw.gpus:
        return all(g.bf16 for g in hw.gpus)
    return hw.bf16_native


def compute_dtype(precision: str, key: str = "train.precision") -> torch.dtype:
    """Map a precision setting (auto | bf16 | fp32) to a torch dtype; auto is bf16 only where native."""
    if precision == "auto":
        return torch.bfloat16 if bf16_native() else torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    raise ConfigError(f"{key}: expected auto, bf16 or fp32, got {precision!r}")


def int8_decode(weights: torch.dtype, hw: Hardware | None = None) -> int:
    """Rows per step below which `quantize: auto` decodes with int8 weights; 0 where it does not.

    On CPUs with AVX2 or better, against float32 or bfloat16 weights. Not on GPUs (bf16 there,
    or vLLM) nor on CPUs where the int8 kernel was never measured (Arm, x86 without AVX2).
    """
    hw = hw or detect()
    if hw.gpus or hw.arm or "avx2" not in hw.flags or weights not in (torch.bfloat16, torch.float32):
        return 0
    return INT8_ROWS


@functools.cache
def llamacpp_version() -> str | None:
    """The installed llama-cpp-python's version, or None where it is not built."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        return "unknown version"


def llamacpp_decode(streams: int = 1, hw: Hardware | None = None) -> bool:
    """Whether `backend: auto` decodes a GGUF-backed model through llama.cpp for this many streams.

    On CPUs where it is built, under FEW_STREAMS: it decodes one sequence at a time, 2.0-2.3x
    the int8 engine for one stream, but 8 streams batched in transformers beat it 1.8-3.2x.
    """
    hw = hw or detect()
    return not hw.gpus and streams < FEW_STREAMS and llamacpp_version() is not None


def threads(hw: Hardware | None = None) -> int:
    """Compute threads: one per physical core (hyper-threads share the core's vector units)."""
    return (hw or detect()).cores


def choices(hw: Hardware | None = None) -> list[Choice]:
    """Every choice tunelab makes from the hardware, with why, as `tunelab env` prints them."""
    hw = hw or detect()
    native = bf16_native(hw)
    where = "the GPU" if hw.gpus else f"this CPU ({hw.kind})"
    precision = "bf16" if native else "fp32"
    why_precision = (f"{where} computes bfloat16 natively" if native else
                     f"{where} has no native bfloat16 (it would be emulated, 70-600x slower than float32)")
    weights = torch.bfloat16 if native else torch.float32
    rows = int8_decode(weights, hw)
    out = [
        Choice("training precision (train.precision: auto)", precision, why_precision),
        Choice("scoring precision (eval, choice, perplexity: auto)", precision, why_precision),
        Choice("inference weights (dtype: auto)", precision, why_precision),
    ]
    if hw.gpus:
        out.append(Choice("decode, one stream or a few", f"transformers, {precision} weights",
                          "GPU: no CPU int8 path; for many streams use --backend vllm"))
    else:
        llama = llamacpp_decode(1, hw)
        out.append(Choice(
            f"decode, a GGUF-backed model (the default), under {FEW_STREAMS} streams",
            "llama.cpp" if llama else f"int8 weights below {rows} rows" if rows else precision,
            "llama.cpp is built and decodes fastest here" if llama else
            "llama.cpp is not built (make llamacpp, or pip install llama-cpp-python)"))
        out.append(Choice(
            "decode, other models (quantize: auto)",
            f"int8 weights while a step has under {rows} rows, {precision} otherwise" if rows else precision,
            f"int8 weights read {4 if precision == 'fp32' else 2}x fewer bytes per token than {precision}"
            if rows else "no measured int8 kernel path on this CPU"))
        out.append(Choice("decode, int4 weights (quantize: int4)", "on request",
                          "half of int8's memory and up to 1.3x its speed, for +5% perplexity against int8's "
                          "+0.2% (bench/cpu_paths.py): a trade only you can make"))
    out += [
        Choice("compute threads", str(threads(hw)), f"one per physical core ({hw.cores} of {hw.threads} logical "
               "CPUs); set OMP_NUM_THREADS to override torch's"),
        Choice("embedding autocast (rag)", "bf16" if native else "off (fp32)", why_precision),
        Choice("llama.cpp", llamacpp_version() or "not built", "GGUF export checks and the llama.cpp backend"
               if llamacpp_version() else "make llamacpp builds it (about 10 minutes on 2 cores)"),
    ]
    return out
