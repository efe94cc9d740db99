"""`tunelab export RUN|MODEL --format hf|gguf|gguf-lora|ollama`: write it, then check it behaves like the run."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from tunelab.compress.hf import Exported
from tunelab.compress.source import Source, load_trained, open_source
from tunelab.config.options import Options, opt
from tunelab.errors import ConfigError

BITS = {"f32": 32, "fp32": 32, "f16": 16, "bf16": 16, "fp16": 16, "q8_0": 8, "q6_k": 6}  # else read from the name


class ExportConfig(Options):
    """How `tunelab export` writes a run (merged) or a model, and how the result is checked."""

    format: Literal["hf", "gguf", "gguf-lora", "ollama"] = opt(
        "hf", "hf: a plain transformers folder; gguf: one file for llama.cpp / LM Studio; gguf-lora: a LoRA run "
        "as a llama.cpp adapter; ollama: a GGUF and its Modelfile")
    output: str | None = opt(None, "where to write it; default: RUN/exports/<format> (a model: "
                             "exports/<name>-<format>)",
                             aka=("outfile", "out"))
    quant: str = opt("q8_0", "GGUF type: f32, f16, bf16, q8_0, q6_k, q5_k_m, q4_k_m, q4_0, ... (gguf-lora: f32, f16, "
                     "bf16, q8_0)", aka=("outtype", "quantization"))
    dtype: Literal["fp32", "bf16", "fp16"] = opt("bf16", "weights of an hf export (the merge itself is float32)",
                                                 aka=("torch_dtype",))
    system_prompt: str | None = opt(None, "default system prompt written into the chat template (and an Ollama "
                                    "SYSTEM); "
                                    "default: the run's own; '' for none", aka=("system",))
    verify: bool = opt(True, "run the same prompts through the run and the export and fail when they disagree "
                       "beyond the tolerance")
    verify_prompts: int = opt(16, "prompts the check runs (the run's own held-out prompts first)", ge=1)
    verify_tokens: int = opt(48, "greedy tokens per prompt in the check", ge=1)
    force: bool = opt(False, "replace an existing output (only once the new one is complete)", aka=("overwrite",))


def default_output(source: Source, cfg: ExportConfig) -> Path:
    root = source.run_dir / "exports" if source.run_dir else Path("exports")
    stem = (source.run_dir or Path(source.name)).name.removesuffix(".gguf")
    if cfg.format in ("gguf", "gguf-lora"):
        return root / f"{stem}-{'lora-' if cfg.format == 'gguf-lora' else ''}{cfg.quant.lower()}.gguf"
    return root / (cfg.format if source.run_dir else f"{stem}-{cfg.format}")


def export(name: str, cfg: ExportConfig | None = None) -> Exported:
    """Export the run or model `name` as `cfg` says, then (unless cfg.verify is off) verify it.

    Returns the `Exported`, its `verify` figures included. Raises VerifyError (exit 2) when the
    written export disagrees with the run beyond the tolerance; the export stays, with the
    figures beside it, for inspection.
    """
    from tunelab.compress import gguf
    from tunelab.compress.hf import export_hf

    cfg = cfg or ExportConfig()
    source = open_source(name)
    if cfg.format in ("gguf", "ollama"):
        gguf.check_quant(cfg.quant)  # before anything loads
    if cfg.format in ("gguf", "gguf-lora", "ollama"):
        gguf.tools_dir()
    output = Path(cfg.output) if cfg.output else default_output(source, cfg)
    if cfg.format == "hf":
        exported = export_hf(source, output, dtype=cfg.dtype, system_prompt=cfg.system_prompt, overwrite=cfg.force)
    elif cfg.format == "gguf":
        exported = gguf.export_gguf(source, output, quant=cfg.quant, system_prompt=cfg.system_prompt,
                                    overwrite=cfg.force)
    elif cfg.format == "gguf-lora":
        exported = gguf.export_gguf_lora(source, output, outtype=cfg.quant.lower(), overwrite=cfg.force)
    elif cfg.format == "ollama":
        exported = gguf.export_ollama(source, output, quant=cfg.quant, system_prompt=cfg.system_prompt,
                                      overwrite=cfg.force)
    else:
        raise ConfigError(f"--format {cfg.format}: expected hf, gguf, gguf-lora or ollama")
    if cfg.verify:
        check(source, exported, cfg)
    return exported


def check(source: Source, exported: Exported, cfg: ExportConfig) -> None:
    """Verify `exported` against `source`; the figures go to exported.verify and a .verify.json beside it."""
    from tunelab.compress.verify import GGUFSide, HFSide, verify

    path = exported.path
    if source.method == "probe":
        exported.note += " (not verified: a probe is checked by tunelab eval, not by generation)"
        return
    if (source.result / "labels.json").is_file():  # a classifier: labels, not generations
        from tunelab.compress.quantize import load_any
        from tunelab.compress.verify import verify_classifier

        candidate = load_trained(open_source(path))[0] if exported.format == "adapter" else load_any(path)[0]
        _report(source, exported, verify_classifier(source, str(path), candidate, bits=BITS[cfg.dtype]))
        return
    if exported.format == "hf":
        side, bits = HFSide.from_folder(path), BITS[cfg.dtype]
    elif exported.format == "adapter":
        side, bits = HFSide.from_source(open_source(path)), 32
    elif exported.format == "gguf-lora":
        # an adapter file carries no chat template: llama.cpp renders the base's, and the caller adds the system prompt
        side = GGUFSide(base_gguf(source), lora=path, system=source.system_prompt)
        bits = BITS.get(cfg.quant.lower(), 16)
    else:
        file = path / "model.gguf" if exported.format == "ollama" else path
        side, bits = GGUFSide(file), quant_bits(cfg.quant)
    try:
        result = verify(source, side, bits=bits, n_prompts=cfg.verify_prompts, max_new_tokens=cfg.verify_tokens,
                        system=cfg.system_prompt)
    finally:
        side.close()
    _report(source, exported, result)


def _report(source: Source, exported: Exported, result) -> None:
    from tunelab.compress.verify import VerifyError, write_report

    path = exported.path
    report = path / "verify.json" if path.is_dir() else path.with_name(path.name + ".verify.json")
    write_report(result, report)
    exported.verify = result.to_dict()
    if not result.passed:
        raise VerifyError(f"{path} was written but does not behave like {source.name}:\n{result.summary()}\n"
                          f"figures in {report}; export again with --no-verify to keep it anyway")


def quant_bits(quant: str) -> float:
    """The weight bits of a GGUF type name (q4_k_m -> 4)."""
    quant = quant.lower()
    if quant in BITS:
        return BITS[quant]
    return float(quant[1]) if quant[:1] == "q" and quant[1:2].isdigit() else 16


def base_gguf(source: Source) -> Path:
    """A GGUF of the run's base for applying a GGUF LoRA adapter: the packaged file of a built-in alias,
    or the base converted once (f32) into the cache."""
    from tunelab.compress import gguf
    from tunelab.models import hub

    if source.base in hub.ALIASES and hub.alias_file(hub.ALIASES[source.base]).suffix == ".gguf":
        return hub.alias_file(hub.ALIASES[source.base])
    folder = hub.resolve(source.base)
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    target = hub.cache_dir() / "gguf" / f"{folder.name}-{key}-f32.gguf"
    if not target.is_file():
        from tunelab.config.files import staged_output

        target.parent.mkdir(parents=True, exist_ok=True)
        with staged_output(target, overwrite=True) as staging:
            gguf.convert(folder, staging, "f32", gguf.tools_dir())
    return target
