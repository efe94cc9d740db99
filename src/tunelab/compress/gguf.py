"""GGUF for llama.cpp, Ollama and LM Studio, written by llama.cpp's own tools.

The merged model is first written as a float32 Hugging Face folder (`hf.export_hf`, so the
chat template, the run's default system prompt and its stop tokens travel), then
`convert_hf_to_gguf.py` (the converter of the llama.cpp release llama-cpp-python was built
from) writes f32/f16/bf16/q8_0, and `llama_model_quantize` (llama.cpp's quantizer, through
llama-cpp-python) makes the k-quants from the f32 file: quantizing from float32 rather than
from a 16-bit file avoids rounding twice.

A LoRA run can also ship as a GGUF LoRA adapter (`convert_lora_to_gguf.py`) that llama.cpp
applies to its base at load time, and as an Ollama folder: the GGUF plus a Modelfile with the
template, stop parameters and system prompt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tunelab.compress.hf import Exported, export_hf
from tunelab.compress.source import Source
from tunelab.config.files import staged_output
from tunelab.errors import ConfigError, ModelError

# llama.cpp's quantization types that need no importance matrix (the i-quants do).
CONVERTED = ("f32", "f16", "bf16", "q8_0")  # written by the converter itself
QUANTIZED = ("q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s",
             "q5_k_m", "q6_k")  # written by llama_model_quantize from the f32 file
QUANTS = CONVERTED + QUANTIZED
SETUP = "make llamacpp (builds llama-cpp-python and unpacks llama.cpp's converters into .venv/llama.cpp)"


def tools_dir() -> Path:
    """The folder holding llama.cpp's convert_*.py scripts, conversion/ and gguf-py/ ($TUNELAB_LLAMA_CPP, or
    .venv/llama.cpp beside the interpreter)."""
    folder = Path(os.environ.get("TUNELAB_LLAMA_CPP") or Path(sys.prefix) / "llama.cpp")
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise ModelError(f"llama.cpp's GGUF converter is not at {folder}; set it up with: {SETUP}, "
                         "or point TUNELAB_LLAMA_CPP at a llama.cpp checkout of the same release")
    return folder


def check_quant(quant: str) -> str:
    """`quant` lower-cased, or ConfigError naming the types llama.cpp can write here."""
    q = quant.lower()
    if q not in QUANTS:
        hint = " (i-quants need an importance matrix, which this export does not compute)" if q.startswith("iq") else ""
        raise ConfigError(f"--quant {quant}: not a GGUF type this export writes{hint}; "
                          f"choose one of {', '.join(QUANTS)}")
    return q


def export_gguf(source: Source, output: str | Path, *, quant: str = "q8_0", system_prompt: str | None = None,
                overwrite: bool = False) -> Exported:
    """Write `source` (merged) as one GGUF file of type `quant` at `output` (a .gguf path).

    Raises ModelError for a run that cannot be merged or when llama.cpp's tools are missing,
    ConfigError for an unknown type. Nothing is left at `output` when a step fails.
    """
    quant = check_quant(quant)
    tools = tools_dir()
    if not source.mergeable:
        raise ModelError(f"{source.name}: GGUF holds one plain model, and a {source.method} run cannot be merged "
                         f"into its base: {source.why_not_mergeable}. Export it with --format hf instead")
    output = Path(output)
    if output.suffix != ".gguf":
        raise ConfigError(f"--output {output}: a GGUF file name ends in .gguf")
    _llama_cpp()  # checked before the slow part
    with tempfile.TemporaryDirectory(prefix="tunelab-gguf-", dir=output.parent if output.parent.exists() else None) \
            as tmp, staged_output(output, overwrite=overwrite) as target:
        hf = export_hf(source, Path(tmp) / "hf", dtype="fp32", system_prompt=system_prompt).path
        if quant in CONVERTED:
            convert(hf, target, quant, tools)
        else:
            f32 = Path(tmp) / "model-f32.gguf"
            convert(hf, f32, "f32", tools)
            quantize_gguf(f32, target, quant)
    return Exported(output, "gguf", note=f"GGUF {quant}", files=[output.name])


def convert(hf_folder: Path, out: Path, outtype: str, tools: Path) -> None:
    """llama.cpp's convert_hf_to_gguf.py on a Hugging Face folder; its own error is shown when it fails."""
    _run_tool([sys.executable, str(tools / "convert_hf_to_gguf.py"), str(hf_folder), "--outfile", str(out),
               "--outtype", outtype], what=f"converting {hf_folder.name} to GGUF")


def quantize_gguf(source: Path, out: Path, quant: str, threads: int | None = None) -> None:
    """llama.cpp's quantizer (`llama_model_quantize`) from one GGUF file to another of type `quant`."""
    from tunelab.hardware import threads as core_threads

    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = threads or core_threads()
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise ModelError(f"llama.cpp could not quantize {source} to {quant}")


def export_gguf_lora(source: Source, output: str | Path, *, outtype: str = "f16", overwrite: bool = False) -> Exported:
    """A LoRA run as a GGUF LoRA adapter (`llama-cli -m BASE.gguf --lora OUTPUT`, or llama-cpp-python's
    `Llama(..., lora_path=OUTPUT)`), applied by llama.cpp to a GGUF of the run's base."""
    from tunelab.models import hub

    tools = tools_dir()
    if source.method not in ("lora", "qlora"):
        raise ModelError(f"{source.name}: a GGUF LoRA adapter needs a LoRA run, and this one is "
                         f"{source.method or 'a plain model'}; export it with --format gguf")
    if outtype not in ("f32", "f16", "bf16", "q8_0"):
        raise ConfigError(f"--quant {outtype}: a GGUF LoRA adapter is f32, f16, bf16 or q8_0")
    config = json.loads((source.result / "adapter_config.json").read_text())
    if config.get("use_dora"):
        raise ModelError(f"{source.name}: a DoRA adapter rescales whole weight columns, which llama.cpp's LoRA "
                         "does not; export the merged model with --format gguf")
    base = hub.resolve(source.base)
    with staged_output(output, overwrite=overwrite) as target:
        _run_tool([sys.executable, str(tools / "convert_lora_to_gguf.py"), "--base", str(base), "--outfile",
                   str(target), "--outtype", outtype, str(source.result)], what="converting the LoRA adapter to GGUF")
    note = f"apply it to a GGUF of {source.base} (llama.cpp --lora); it carries no chat template"
    if source.system_prompt:
        note += f", so give the run's system prompt yourself: {source.system_prompt!r}"
    return Exported(Path(output), "gguf-lora", merged=False, note=note,
                    files=[Path(output).name])


def export_ollama(source: Source, output: str | Path, *, quant: str = "q4_k_m", system_prompt: str | None = None,
                  overwrite: bool = False) -> Exported:
    """A folder for `ollama create NAME -f OUTPUT/Modelfile`: model.gguf and a Modelfile with the chat
    template, the stop tokens as stop parameters and the run's system prompt."""
    quant = check_quant(quant)
    system = source.system_prompt if system_prompt is None else system_prompt or None
    with staged_output(output, overwrite=overwrite) as folder:
        folder.mkdir()
        export_gguf(source, folder / "model.gguf", quant=quant, system_prompt=system_prompt)
        (folder / "Modelfile").write_text(modelfile("./model.gguf", *_template_and_stops(folder / "model.gguf"),
                                                    system), encoding="utf-8")
    return Exported(Path(output), "ollama", note=f"ollama create NAME -f {Path(output) / 'Modelfile'}",
                    files=["Modelfile", "model.gguf"])


def modelfile(gguf: str, template: str | None, stops: list[str], system: str | None) -> str:
    """The Modelfile text. Ollama templates are Go templates; the ChatML layout (which SmolLM2, Qwen and
    the tiny test models use) is written out, and other layouts are left to Ollama's own detection from
    the GGUF's chat template."""
    lines = [f"FROM {gguf}"]
    if template and "<|im_start|>" in template:
        lines.append('TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
                     '{{ end }}<|im_start|>assistant\n"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def _template_and_stops(gguf: Path) -> tuple[str | None, list[str]]:
    """The chat template and the end-of-generation token texts a GGUF file carries (read by llama.cpp)."""
    llama_cpp = _llama_cpp()
    llm = llama_cpp.Llama(str(gguf), n_ctx=64, vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        stops = [llm.detokenize([i], special=True).decode("utf-8", "replace") for i in range(llm.n_vocab())
                 if llama_cpp.llama_vocab_is_eog(vocab, i)]
        return llm.metadata.get("tokenizer.chat_template"), sorted(set(s for s in stops if s))
    finally:
        llm.close()


def _run_tool(command: list[str], what: str) -> None:
    # the scripts put the gguf-py shipped beside them (of their own release) first on their path
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise ModelError(f"llama.cpp failed {what}:\n{tail}")


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise ModelError(f"GGUF export needs llama-cpp-python; install it with: {SETUP}") from None
    return llama_cpp
