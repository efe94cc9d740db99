"""The one place that knows the hardware, and every default chosen from it.

- `machine`: the machine (CPU vendor, model, instruction sets, cores, memory, GPUs).
- `choose`: precision for training, scoring and inference; int8 or llama.cpp decoding;
  threads; each with its reason (`tunelab env` prints them).
"""

from tunelab.hardware.choose import Choice, bf16_native, choices, compute_dtype, int8_decode, llamacpp_decode, threads
from tunelab.hardware.machine import Hardware, detect

__all__ = ["Choice", "Hardware", "bf16_native", "choices", "compute_dtype", "detect", "int8_decode",
           "llamacpp_decode", "threads"]
