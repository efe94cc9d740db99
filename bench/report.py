"""What every benchmark shares: where it ran, said first, and its results saved with that.

    from report import header, save
    header()                      # first thing in main(): prints the hardware line
    ...
    save("serve", figures, quick=args.quick)   # bench/results/serve-<cpu kind>.json

`--emulate-avx2` on any benchmark's command line re-runs it with torch, oneDNN and MKL capped
at AVX2 (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), so that an
AVX-512 or AMX machine computes like an AVX2-only one: bfloat16 matmuls become emulated
(measured 1.1 against 720 GFLOP/s on an AVX512-BF16 EPYC), and tunelab's choices follow.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# TUNELAB_BENCH_RESULTS: another folder for the results (tests that run a benchmark leave the tree alone)
RESULTS = Path(os.environ.get("TUNELAB_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def header() -> dict:
    """Print the hardware line (re-running under the AVX2 caps first when --emulate-avx2 is given)."""
    if "--emulate-avx2" in sys.argv:
        argv = [a for a in sys.argv if a != "--emulate-avx2"]
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, **AVX2})
    from tunelab.hardware import detect

    hw = detect()
    print(hw.line(), flush=True)
    return hw.as_dict()


def save(name: str, figures: dict, quick: bool = False, tag: str = "") -> Path:
    """Write the figures with the hardware, the command and the date to bench/results/NAME[-TAG][-quick]-KIND.json."""
    from tunelab.hardware import detect

    hw = detect()
    kind = hw.kind.lower().replace(" ", "-") + ("-capped" if hw.limits else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}{'-' + tag if tag else ''}{'-quick' if quick else ''}-{kind}.json"
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps({"bench": name, "command": " ".join(["python", *sys.argv]),
                                   "date": time.strftime("%Y-%m-%d %H:%M"), "quick": quick,
                                   "hardware": hw.as_dict(), "figures": figures}, indent=2, default=str) + "\n")
    staging.replace(path)  # a crash mid-write leaves the previous results whole
    print(f"results: {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return path


def describe(engine) -> str:
    """Which decode path an engine is: llama.cpp, or transformers with int4, int8 or float weights."""
    import torch

    from tunelab.infer.quantize import Int4Linear, Int8Linear

    if type(engine).__name__ != "TransformersEngine":
        return "llama.cpp"
    modules = list(engine.model.modules())
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(next(engine.model.parameters()).dtype, "other")
    if any(isinstance(m, Int4Linear) for m in modules):
        return "int4"
    int8 = [m for m in modules if isinstance(m, Int8Linear)]
    return f"int8 under {int8[0].rows} rows, else {dtype}" if int8 else dtype
