"""Where a run can go: this machine, or a named GPU from a table of published figures.

Peak figures are the vendors' dense (no sparsity) tensor throughput in the precision a run
would use there, and the memory a process can have. `EFFICIENCY` is the share of peak a
fine-tuning step of a small or mid-sized model reaches: measured model-FLOP utilisation of
transformers + PyTorch training on one GPU is typically 30-45% for 1-8B models and lower
for small ones (kernel launch and memory bound), so 0.35 is assumed; the CPU figure is
measured instead (tunelab.compare.probe).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.errors import ConfigError

EFFICIENCY = 0.35
GPU_OVERHEAD_GB = 1.0  # CUDA context, cuBLAS workspaces and allocator slack


@dataclass(frozen=True)
class Device:
    name: str
    memory_gb: float  # usable memory
    tflops: float  # dense peak in the run's half precision (bf16, or fp16 where bf16 is missing)
    bf16: bool  # computes bfloat16 natively
    note: str = ""


GPUS = {d.name: d for d in (
    Device("t4", 15.0, 65.0, False, "Turing: fp16 tensor cores, no bf16"),
    Device("l4", 22.5, 121.0, True, "Ada, 24 GB"),
    Device("a10g", 22.5, 70.0, True, "Ampere (AWS), 24 GB"),
    Device("rtx4090", 23.5, 165.0, True, "Ada, 24 GB; bf16 with fp16 accumulate, 82.6 with fp32"),
    Device("a100-40gb", 39.5, 312.0, True, "Ampere SXM, 40 GB"),
    Device("a100-80gb", 79.0, 312.0, True, "Ampere SXM, 80 GB"),
    Device("h100", 79.0, 989.0, True, "Hopper SXM, 80 GB"),
)}


def gpu(name: str) -> Device:
    """A GPU of the table by name; ConfigError listing them otherwise."""
    key = name.lower()
    if key not in GPUS:
        raise ConfigError(f"--device {name}: not in the table; choose one of {', '.join(GPUS)} (or leave it out for "
                          "this machine)")
    return GPUS[key]
