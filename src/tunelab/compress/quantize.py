"""`tunelab quantize MODEL|RUN --method ...`: a smaller model, saved so that it reloads, and measured.

A run is merged first (`source.load_merged`); a calibrated method draws its calibration texts
from the run's own training data unless given a file. The methods themselves are in
`quantizers` (the table) and `naive` (the arithmetic every other method is measured against).
After saving, the folder is reloaded and its perplexity on held-out text compared with the
unquantized model's (`measure`), so the size saved is always shown with what it cost.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from tunelab.compress.quantizers import QUANTIZERS, QuantizeOptions, load_quantized, model_size_bytes, quantize
from tunelab.compress.hf import with_default_system
from tunelab.compress.source import SYSTEM_PROMPT_FILE, Source, load_merged, open_source, run_records
from tunelab.config.files import staged_output
from tunelab.config.options import opt
from tunelab.errors import ConfigError

CALIBRATION_TEXTS = 512  # at most this many records are read for calibration


class QuantizeConfig(QuantizeOptions):
    """`tunelab quantize`: the method and its knobs, where to write, what to calibrate and measure on."""

    output: str | None = opt(None, "the folder to write; default: RUN/exports/<method> (a model: "
                             "exports/<name>-<method>)", aka=("out",))
    calibration: str | None = opt(None, "a .jsonl/.txt file of calibration texts; default: the run's own training "
                                  "data", aka=("calibration_file", "dataset"))
    measure: bool = opt(True, "reload the result and compare its perplexity on held-out text with the unquantized "
                        "model's")
    measure_texts: int = opt(32, "held-out texts the perplexity is measured on (the run's validation records "
                             "first)", ge=1)
    force: bool = opt(False, "replace an existing output (only once the new one is complete)", aka=("overwrite",))


def quantize_source(name: str, cfg: QuantizeConfig | None = None) -> dict:
    """Quantize the run or model `name` as `cfg` says, save it, reload it and measure it.

    Returns {output, method, bits, seconds, size_bytes, base_size_bytes, ppl_base, ppl, ppl_rel}.
    Raises ConfigError for a GPU-only method on a machine without one, or a calibrated method with
    nothing to calibrate on, before any model loads.
    """
    cfg = cfg or QuantizeConfig()
    quantizer = QUANTIZERS[cfg.method]
    if quantizer.needs_gpu and not torch.cuda.is_available():
        raise ConfigError(f"--method {cfg.method} needs a CUDA GPU and this machine has none; on a CPU use one of "
                          + ", ".join(n for n, q in QUANTIZERS.items() if not q.needs_gpu))
    source = open_source(name)
    calibration = calibration_texts(source, cfg.calibration) if quantizer.calibrated else []
    held_out = held_out_texts(source, cfg.measure_texts) if cfg.measure else []
    output = Path(cfg.output) if cfg.output else default_output(source, cfg.method)
    if output.exists() and not cfg.force:
        raise ConfigError(f"{output}: already exists; choose another --output or add --force to replace it")
    model, tokenizer = load_merged(source, torch.float32) if source.run_dir else _load_plain(source)
    ppl_base = perplexity(model, tokenizer, held_out) if held_out else None
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    quantized, seconds = quantize(model, tokenizer, cfg, calibration=calibration)
    if source.system_prompt and getattr(tokenizer, "chat_template", None):  # asked as it was trained, anywhere
        tokenizer.chat_template = with_default_system(tokenizer.chat_template, source.system_prompt)
    with staged_output(output, overwrite=cfg.force) as folder:
        quantizer.save(quantized, tokenizer, folder)
        if source.system_prompt:
            (folder / SYSTEM_PROMPT_FILE).write_text(json.dumps({"system_prompt": source.system_prompt}))
    del model, quantized
    result = {"output": str(output), "method": cfg.method, "bits": quantizer.bits, "seconds": round(seconds, 1),
              "size_bytes": model_size_bytes(output), "base_size_bytes": base_bytes}
    if held_out:
        reloaded, tokenizer = load_quantized(output)
        ppl = perplexity(reloaded, tokenizer, held_out)
        result.update(ppl_base=round(ppl_base, 4), ppl=round(ppl, 4), ppl_rel=round(ppl / ppl_base - 1, 5))
    (output / "quantize.json").write_text(json.dumps(result, indent=2))
    return result


def default_output(source: Source, method: str) -> Path:
    if source.run_dir:
        return source.run_dir / "exports" / method
    return Path("exports") / f"{Path(source.name).name.removesuffix('.gguf')}-{method}"


def _load_plain(source: Source):
    from tunelab.models import load_model

    return load_model(str(source.result), dtype=torch.float32)


def calibration_texts(source: Source, file: str | None) -> list[str]:
    """Calibration texts: `file` (JSONL records or plain text), else the run's own training records rendered
    with its chat template (what the model will see). ConfigError when there is neither."""
    if file:
        return _texts_of(Path(file))
    cfg = source.config
    if cfg is None or not cfg.data.train or not Path(cfg.data.train).exists():
        raise ConfigError(f"{source.name}: a calibrated method needs calibration text; this is not a run with its "
                          "training data at hand, so give --calibration FILE (.jsonl or .txt)")
    return _run_texts(source, CALIBRATION_TEXTS, held_out_first=False)


def held_out_texts(source: Source, n: int) -> list[str]:
    """Up to `n` texts the run did not train on (its validation split) to measure perplexity; for a plain model
    or a run without a split, its training texts or built-in prompts."""
    cfg = source.config
    if cfg is not None and cfg.data.train and Path(cfg.data.train).exists():
        return _run_texts(source, n, held_out_first=True)
    from tunelab.compress.verify import BUILTIN_PROMPTS

    return BUILTIN_PROMPTS[:n]


def _run_texts(source: Source, n: int, held_out_first: bool) -> list[str]:
    """The run's records as the model saw them: plain text, or conversations rendered with its template."""
    from tunelab.models import load_tokenizer

    fmt, records = run_records(source, held_out_first)
    if fmt == "text":
        return [r["text"] for r in records[:n] if r.get("text")]
    tokenizer = load_tokenizer(source.result)
    return [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records[:n] if r.get("messages")]


def _texts_of(path: Path) -> list[str]:
    from tunelab.data.readers import read_records

    if not path.is_file():
        raise ConfigError(f"--calibration {path}: file not found")
    if path.suffix.lower() in (".txt", ".md"):
        return [p for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()][:CALIBRATION_TEXTS]
    texts = []
    for r in read_records(str(path)):
        text = r.data.get("text") or "\n".join(str(m.get("content", "")) for m in r.data.get("messages") or [])
        if text:
            texts.append(text)
        if len(texts) >= CALIBRATION_TEXTS:
            break
    if not texts:
        raise ConfigError(f"--calibration {path}: no 'text' or 'messages' in its records")
    return texts


def perplexity(model, tokenizer, texts: list[str], window: int = 512) -> float:
    """Token perplexity of `texts` (the eval harness's own computation, in windows of `window` tokens)."""
    from tunelab.eval.perplexity import document_nll

    nll = document_nll(model, tokenizer, texts, window=window, stride=window)
    return math.exp(sum(n for n, _ in nll) / max(sum(t for _, t in nll), 1))


def is_quantized(model) -> bool:
    """Whether `model` already holds quantized weights (a library's or a naive scheme's)."""
    config = getattr(model, "config", None)
    return bool(getattr(model, "is_quantized", False) or getattr(config, "quantization_config", None))


def load_any(name: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for a model name, folder or .gguf, or a folder `tunelab quantize` wrote."""
    from tunelab.compress.naive import is_naive
    from tunelab.models import hub, load_model

    folder = hub.resolve(str(name))
    config = folder / "config.json"
    if is_naive(folder) or "quantization_config" in json.loads(config.read_text()):
        return load_quantized(folder)
    return load_model(str(name), dtype=dtype)
