"""What this machine is: CPU vendor, model and instruction sets, cores, memory, GPUs.

The instruction sets are the ones the libraries will actually use: /proc/cpuinfo's flags,
less whatever torch, oneDNN or MKL were told to leave alone (`ATEN_CPU_CAPABILITY=avx2`,
`ONEDNN_MAX_CPU_ISA=AVX2`, `MKL_ENABLE_INSTRUCTIONS=AVX2`). Those variables make an AVX-512 or
AMX machine compute like an AVX2 one (bfloat16 matmuls measured 1.1 GFLOP/s under them
against 720 without, float32 unchanged at 175), so the choices follow them too.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Variables that cap what the CPU libraries dispatch to, and the flags each cap removes.
AVX512 = ("avx512", "amx")  # flag prefixes: every AVX-512 extension and AMX
LIMITS = {
    "ATEN_CPU_CAPABILITY": {"avx2": AVX512, "default": AVX512 + ("avx2", "fma")},
    "ONEDNN_MAX_CPU_ISA": {"sse41": AVX512 + ("avx2", "fma"), "avx": AVX512 + ("avx2",), "avx2": AVX512,
                           "avx2_vnni": AVX512, "avx2_vnni_2": AVX512, "avx512_core": ("avx512_bf16", "amx"),
                           "avx512_core_vnni": ("avx512_bf16", "amx"), "avx512_core_bf16": ("amx",)},
    "MKL_ENABLE_INSTRUCTIONS": {"sse4_2": AVX512 + ("avx2", "fma"), "avx": AVX512 + ("avx2",), "avx2": AVX512},
}


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: str  # CUDA compute capability, e.g. "9.0"
    memory_gib: float
    bf16: bool


@dataclass(frozen=True)
class Hardware:
    """The machine as the choices in `tunelab.hardware.choose` see it."""

    arch: str  # x86_64, aarch64, arm64
    vendor: str  # GenuineIntel, AuthenticAMD, ARM, Apple
    model: str
    flags: frozenset[str]  # effective instruction-set flags (lower case, /proc/cpuinfo spelling)
    cores: int  # physical cores this process may use
    threads: int  # logical CPUs this process may use
    memory_gib: float
    gpus: tuple[Gpu, ...] = ()
    mps: bool = False  # Apple's GPU through torch.backends.mps
    limits: tuple[str, ...] = field(default=())  # the capping variables that are set, as NAME=value

    @property
    def isa(self) -> list[str]:
        """The instruction sets that matter for tensor work, by their usual names."""
        names = {"avx2": "AVX2", "fma": "FMA", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI",
                 "avx512_bf16": "AVX-512 BF16", "avx512_fp16": "AVX-512 FP16", "amx_bf16": "AMX-BF16",
                 "amx_int8": "AMX-INT8", "asimd": "NEON", "neon": "NEON", "sve": "SVE", "bf16": "BF16 (Arm)",
                 "i8mm": "I8MM (Arm)"}
        return list(dict.fromkeys(names[f] for f in names if f in self.flags))

    @property
    def bf16_native(self) -> bool:
        """True when the CPU multiplies bfloat16 matrices in hardware (AVX512-BF16, AMX, Arm BF16)."""
        return bool(self.flags & {"avx512_bf16", "amx_bf16"}) or (self.arm and "bf16" in self.flags)

    @property
    def arm(self) -> bool:
        return self.arch in ("aarch64", "arm64")

    @property
    def kind(self) -> str:
        """The class of CPU a benchmark table is kept for: AMX, AVX-512 BF16, AVX-512, AVX2, Arm or older x86."""
        if self.arm:
            return "Apple silicon" if self.vendor == "Apple" else "Arm" + (" BF16" if "bf16" in self.flags else "")
        for flag, name in (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"),
                           ("avx2", "AVX2")):
            if flag in self.flags:
                return name
        return "x86-64 without AVX2"

    def line(self) -> str:
        """One line for logs and benchmark output."""
        gpus = ", ".join(f"{g.name} (sm {g.capability}, {g.memory_gib:.0f} GiB)" for g in self.gpus) or \
            ("Apple GPU (mps)" if self.mps else "no GPU")
        capped = f" | capped by {' '.join(self.limits)}" if self.limits else ""
        return (f"hardware: {self.model} | {self.kind} | {self.cores} cores, {self.threads} threads | "
                f"{self.memory_gib:.0f} GiB | {gpus}{capped}")

    def as_dict(self) -> dict:
        """JSON-ready, with the derived names, for benchmark results."""
        out = asdict(self)
        out.update(flags=sorted(self.flags), isa=self.isa, kind=self.kind, bf16_native=self.bf16_native,
                   line=self.line())
        return out


@functools.cache
def detect() -> Hardware:
    """This machine, read once per process (the capping variables are read at that moment too)."""
    import psutil

    vendor, model, raw = _cpu()
    limits = tuple(f"{k}={os.environ[k]}" for k in LIMITS if os.environ.get(k))
    flags = {f for f in raw if not any(f.startswith(p) for p in _removed())}
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = min(psutil.cpu_count(logical=False) or threads, threads)
    return Hardware(arch=platform.machine().lower(), vendor=vendor, model=model, flags=frozenset(flags),
                    cores=cores, threads=threads, memory_gib=psutil.virtual_memory().total / 2**30,
                    gpus=_gpus(), mps=_mps(), limits=limits)


def _removed() -> set[str]:
    """Flag prefixes the capping variables take away."""
    removed: set[str] = set()
    for name, caps in LIMITS.items():
        removed.update(caps.get(os.environ.get(name, "").strip().lower(), ()))
    try:  # torch's own dispatch level covers a build or a variable we do not know by name
        import torch

        level = torch.backends.cpu.get_cpu_capability().lower()
        removed.update(LIMITS["ATEN_CPU_CAPABILITY"].get(level, ()))
    except (ImportError, AttributeError):
        pass
    return removed


def _cpu() -> tuple[str, str, set[str]]:
    """(vendor, model name, flags) from /proc/cpuinfo, or sysctl on macOS."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").lower().split())
    vendor = fields.get("vendor_id") or ("ARM" if fields.get("CPU implementer") else "")
    model = fields.get("model name") or ""
    if platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string") or "Apple"
        vendor = "Apple" if platform.machine() == "arm64" else "GenuineIntel"
        if vendor == "Apple":
            flags |= {"asimd", "bf16", "i8mm"} if _sysctl("hw.optional.arm.FEAT_BF16") == "1" else {"asimd"}
        else:
            features = _sysctl("machdep.cpu.features") + " " + _sysctl("machdep.cpu.leaf7_features")
            flags |= set(features.lower().split())
    return vendor or "unknown", model or platform.processor() or platform.machine(), flags


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5,
                              check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _gpus() -> tuple[Gpu, ...]:
    try:
        import torch

        if not torch.cuda.is_available():
            return ()
        found = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append(Gpu(p.name, f"{p.major}.{p.minor}", p.total_memory / 2**30, p.major >= 8))
        return tuple(found)
    except Exception:  # a broken driver is reported as no GPU, not as a crash of `tunelab env`
        return ()


def _mps() -> bool:
    try:
        import torch

        return bool(torch.backends.mps.is_available())
    except (ImportError, AttributeError):
        return False
