"""The hardware module: what it reads, what it chooses per kind of CPU, and that engines follow it.

Two ways to stand in for machines we do not have: the real AVX2 caps (ATEN_CPU_CAPABILITY,
ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS) in a child process, which make an AVX-512 machine
dispatch like an AVX2 one, and made-up Hardware reports patched in for AMX, Arm and GPU machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from tunelab import hardware
from tunelab.hardware import Hardware, choose, detect
from tunelab.hardware.machine import Gpu
from tunelab.infer.quantize import GROUP, Int4Linear, Int8Linear

AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
X86 = dict(arch="x86_64", vendor="AuthenticAMD", model="AMD EPYC", cores=2, threads=2, memory_gib=24.0)
MACHINES = {
    "amx": Hardware(flags=frozenset({"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}), **X86),
    "avx512_bf16": Hardware(flags=frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}), **X86),
    "avx512": Hardware(flags=frozenset({"avx2", "fma", "avx512f"}), **X86),
    "avx2": Hardware(flags=frozenset({"avx", "avx2", "fma"}), **X86),
    "arm": Hardware(arch="aarch64", vendor="ARM", model="Neoverse-V1", flags=frozenset({"asimd", "bf16"}),
                    cores=4, threads=4, memory_gib=16.0),
    "gpu": Hardware(flags=frozenset({"avx2", "fma"}), gpus=(Gpu("NVIDIA H200", "9.0", 139.0, True),), **X86),
    "old_gpu": Hardware(flags=frozenset({"avx2", "fma"}), gpus=(Gpu("Tesla T4", "7.5", 15.0, False),), **X86),
}


@pytest.fixture
def machine(monkeypatch):
    """Make tunelab see one of MACHINES."""
    def use(name: str) -> Hardware:
        monkeypatch.setattr(choose, "detect", lambda: MACHINES[name])
        return MACHINES[name]
    return use


def run_python(code: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=False, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_detect_reads_this_machine():
    hw = detect()
    assert hw.threads >= hw.cores >= 1 and hw.memory_gib > 0.5
    assert hw.line().startswith("hardware: ") and hw.kind in hw.line()
    report = hw.as_dict()
    assert json.loads(json.dumps(report))["kind"] == hw.kind and report["bf16_native"] == hw.bf16_native


@pytest.mark.parametrize("name, kind, native", [("amx", "AMX", True), ("avx512_bf16", "AVX-512 BF16", True),
                                                ("avx512", "AVX-512", False), ("avx2", "AVX2", False),
                                                ("arm", "Arm BF16", True)])
def test_kinds_and_native_bfloat16(name, kind, native):
    hw = MACHINES[name]
    assert hw.kind == kind and hw.bf16_native is native


@pytest.mark.parametrize("name, precision, rows", [
    ("amx", torch.bfloat16, 17), ("avx512_bf16", torch.bfloat16, 17), ("avx512", torch.float32, 17),
    ("avx2", torch.float32, 17), ("arm", torch.bfloat16, 0), ("gpu", torch.bfloat16, 0), ("old_gpu", torch.float32, 0)])
def test_each_kind_of_machine_gets_its_own_choices(machine, name, precision, rows):
    hw = machine(name)
    assert hardware.compute_dtype("auto") == precision
    assert hardware.int8_decode(precision) == rows  # int8 decode only on x86 CPUs where its kernel was measured
    assert hardware.llamacpp_decode() is (not hw.gpus and choose.llamacpp_version() is not None)
    assert hardware.llamacpp_decode(8) is False  # many streams batch faster in transformers
    made = {c.what: c for c in hardware.choices()}
    assert made["training precision (train.precision: auto)"].value == ("bf16" if precision == torch.bfloat16
                                                                        else "fp32")
    assert "native" in made["training precision (train.precision: auto)"].why


def test_explicit_precision_is_kept_and_a_bad_one_names_its_key(machine):
    machine("avx2")
    assert hardware.compute_dtype("bf16") == torch.bfloat16 and hardware.compute_dtype("fp32") == torch.float32
    with pytest.raises(Exception, match="eval.dtype"):
        hardware.compute_dtype("fp8", "eval.dtype")


@pytest.mark.parametrize("env, removed", [
    ({"ATEN_CPU_CAPABILITY": "avx2"}, {"avx512f", "avx512_bf16", "amx_bf16"}),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, {"avx512_bf16", "amx_bf16"}),
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, {"amx_bf16"}),
    ({"MKL_ENABLE_INSTRUCTIONS": "AVX2"}, {"avx512f", "avx512_bf16", "amx_bf16"}),
])
def test_capping_variables_remove_what_they_cap(monkeypatch, env, removed):
    from tunelab.hardware import machine as machine_module

    for name in AVX2_CAPS:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    gone = machine_module._removed()
    flags = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"}
    kept = {f for f in flags if not any(f.startswith(p) for p in gone)}
    assert removed <= flags - kept and {"avx2", "fma"} <= kept


@pytest.mark.skipif("avx2" not in detect().flags, reason="needs an x86 CPU with AVX2")
def test_the_avx2_caps_make_this_machine_choose_as_an_avx2_one():
    code = ("import json; from tunelab import hardware as h; import torch; hw = h.detect(); "
            "print(json.dumps({'kind': hw.kind, 'limits': list(hw.limits), 'dtype': str(h.compute_dtype('auto')), "
            "'rows': h.int8_decode(torch.float32), 'capability': torch.backends.cpu.get_cpu_capability()}))")
    seen = json.loads(run_python(code, AVX2_CAPS).strip().splitlines()[-1])
    assert seen["kind"] == "AVX2" and seen["capability"] == "AVX2"
    assert seen["dtype"] == "torch.float32" and seen["rows"] == 17
    assert len(seen["limits"]) == 3


@pytest.mark.skipif("avx2" not in detect().flags, reason="needs an x86 CPU with AVX2")
def test_tunelab_env_prints_the_machine_and_every_choice():
    text = run_python("from tunelab.cli import main; main(['env'])", AVX2_CAPS)
    lines = text.splitlines()
    assert lines[0].startswith("hardware: ") and "| AVX2 |" in lines[0] and "ATEN_CPU_CAPABILITY=avx2" in lines[0]
    assert any(line.strip().startswith("training precision") and " fp32 " in line for line in lines)
    assert any(line.strip().startswith("embedding autocast") and "off (fp32)" in line for line in lines)
    report = json.loads(run_python("from tunelab.cli import main; main(['env', '--json'])", AVX2_CAPS))
    assert report["hardware"]["kind"] == "AVX2" and report["hardware"]["bf16_native"] is False
    assert {c["what"] for c in report["choices"]} >= {"compute threads", "llama.cpp"}


def test_engines_follow_the_hardware(machine, tiny_model_dir):
    """quantize: auto gives int8 weights for as many rows as the machine's int8 kernel wins for."""
    from tunelab.infer.load import load_engine

    def int8_rows(engine):
        layers = [m for m in engine.model.modules() if isinstance(m, Int8Linear)]
        return layers[0].rows if layers else 0

    machine("avx2")  # float32 weights, int8 up to 16 rows: serving 16 streams still decodes from int8
    engine = load_engine(str(tiny_model_dir), max_batch_size=16)
    assert next(engine.model.parameters()).dtype == torch.float32 and int8_rows(engine) == 17
    machine("avx512_bf16")  # bfloat16 weights; an engine batching more rows than int8 wins for keeps them
    assert int8_rows(load_engine(str(tiny_model_dir), max_batch_size=1)) == 17
    engine = load_engine(str(tiny_model_dir), max_batch_size=32)
    assert next(engine.model.parameters()).dtype == torch.bfloat16 and int8_rows(engine) == 0
    machine("arm")  # no measured int8 kernel: exact weights
    assert int8_rows(load_engine(str(tiny_model_dir), max_batch_size=1)) == 0
    machine("avx2")
    assert int8_rows(load_engine(str(tiny_model_dir), max_batch_size=1, dtype="fp32")) == 0  # a dtype asked for


def test_backend_auto_takes_llama_cpp_for_the_gguf_default_model_on_few_streams(machine, monkeypatch):
    from tunelab.infer import load
    from tunelab.infer.backends import BACKENDS, Backend

    opened = []
    for name in ("transformers", "llamacpp"):
        monkeypatch.setitem(BACKENDS, name, Backend(name, lambda *a, _n=name, **k: opened.append(_n)))
    monkeypatch.setattr(load.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(choose, "llamacpp_version", lambda: "0.3.36")
    machine("avx2")
    load.load_engine(max_batch_size=1)
    load.load_engine(max_batch_size=16)  # many streams: transformers batches them
    load.load_engine(max_batch_size=1, adapters=["runs/x"])  # adapters: transformers
    load.load_engine(max_batch_size=1, quantize="int8")  # a transformers option asked for
    load.load_engine(max_batch_size=1, draft="ngram")
    machine("gpu")
    load.load_engine(max_batch_size=1)
    assert opened == ["llamacpp", "transformers", "transformers", "transformers", "transformers", "transformers"]


def test_int4_weights_are_the_grouped_min_max_grid():
    torch.manual_seed(0)
    linear = torch.nn.Linear(4 * GROUP, 48, bias=True)
    q = Int4Linear(linear)
    w = linear.weight.detach().reshape(48, 4, GROUP)
    low, high = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    step = (high - low) / 15
    grid = (torch.round((w - low) / step) * step + low).reshape(48, 4 * GROUP)
    x = torch.randn(3, 5, 4 * GROUP)
    reference = torch.nn.functional.linear(x, grid, linear.bias.detach())
    assert q(x).shape == (3, 5, 48)
    assert (q(x) - reference).abs().max() < 0.02 * reference.abs().max()  # bfloat16 scales and activations
    assert q.packed.numel() == 48 * 4 * GROUP // 2  # two codes per byte


def test_int4_engine_generates_and_keeps_lora_matrices(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from tunelab.infer import DecodingConfig, Request
    from tunelab.infer.engine import generate
    from tunelab.infer.load import load_engine
    from tunelab.infer.quantize import quantize_int4
    from tunelab.models import load_model

    engine = load_engine(str(tiny_model_dir), quantize="int4", max_batch_size=4)
    assert any(isinstance(m, Int4Linear) for m in engine.model.modules())
    answers = generate(engine, [Request(p, DecodingConfig(max_new_tokens=6, temperature=0, ignore_eos=True))
                                for p in ("ab", "hello there", "x")])  # rows of different lengths batch together
    assert [len(a.token_ids) for a in answers] == [6, 6, 6]
    model, _ = load_model(str(tiny_model_dir), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    quantize_int4(peft_model)
    q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, Int4Linear) and type(q.lora_A["default"]) is torch.nn.Linear
    with torch.no_grad():
        assert torch.isfinite(peft_model(torch.tensor([[5, 9, 20]])).logits).all()


def test_a_machine_report_is_comparable_across_runs():
    """Benchmarks key their tables by kind; the capped flag set must say it was capped."""
    capped = replace(MACHINES["avx2"], limits=("ATEN_CPU_CAPABILITY=avx2",))
    assert "capped by ATEN_CPU_CAPABILITY=avx2" in capped.line() and "capped" not in MACHINES["avx2"].line()
