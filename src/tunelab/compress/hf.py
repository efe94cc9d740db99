"""`tunelab export RUN --format hf`: one plain Hugging Face folder that answers as the run does.

What is easy to lose on the way, and is carried here: the run's chat template (the tokenizer
saved with the run), its stop tokens (generation_config.json with every end-of-turn id the
run stopped at, not only the base's EOS) and the system prompt its training records carried,
written into the chat template as the default when a conversation brings none, so any
runtime that renders the template (transformers, vLLM, llama.cpp) asks the model as it was
trained.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tunelab.compress.source import SYSTEM_PROMPT_FILE, Source, load_merged
from tunelab.config.files import staged_output, write_yaml
from tunelab.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Exported:
    """What an export wrote: the path, its format, whether the run's weights were merged (and if not, why)."""

    path: Path
    format: str
    merged: bool = True
    note: str = ""
    files: list[str] = field(default_factory=list)
    verify: dict | None = None


def with_default_system(template: str, system: str) -> str:
    """`template` preceded by a Jinja block that starts the conversation with `system` when it has no
    system message of its own (a caller's own system message still wins)."""
    literal = json.dumps(system)  # a Jinja string literal: quotes and backslashes escaped, newlines as \n
    return ("{%- if messages and messages[0]['role'] != 'system' %}{%- set messages = "
            f"[{{'role': 'system', 'content': {literal}}}] + messages %}}{{%- endif %}}" + template)


def export_hf(source: Source, output: str | Path, *, dtype: str = "bf16", system_prompt: str | None = None,
              overwrite: bool = False) -> Exported:
    """Write `source` merged into its base as a plain transformers folder at `output`.

    Args:
        dtype: fp32, bf16 or fp16 weights (the merge itself runs in float32).
        system_prompt: the default system prompt written into the chat template; None uses the
            run's own (the one its training records carried); "" writes none.
        overwrite: replace an existing `output` (only once the new one is complete).
    Returns an `Exported`; a run whose method cannot be merged is written in its own form
    (`export_unmerged`) with the reason in `note`.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if not source.mergeable:
        return export_unmerged(source, output, overwrite=overwrite)
    system = source.system_prompt if system_prompt is None else system_prompt or None
    model, tokenizer = load_merged(source, DTYPES[dtype])
    with staged_output(output, overwrite=overwrite) as folder:
        save_folder(model, tokenizer, folder, source, system)
    return Exported(Path(output), "hf", files=sorted(p.name for p in Path(output).iterdir()))


def save_folder(model, tokenizer, folder: Path, source: Source, system: str | None) -> None:
    """save_pretrained of model and tokenizer, plus the run's stop tokens and default system prompt."""
    from transformers import GenerationConfig

    model.save_pretrained(str(folder), safe_serialization=True)
    if system and getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = with_default_system(tokenizer.chat_template, system)
    tokenizer.save_pretrained(str(folder))
    run_generation = source.result / "generation_config.json"
    if run_generation.is_file():  # the stop tokens the run was trained to end its answers with
        GenerationConfig.from_pretrained(str(source.result)).save_pretrained(str(folder))
    if system:
        (folder / SYSTEM_PROMPT_FILE).write_text(json.dumps({"system_prompt": system}, ensure_ascii=False, indent=2))
    for extra in ("labels.json",):  # a classifier's label names
        if (source.result / extra).is_file():
            shutil.copy2(source.result / extra, folder / extra)


def export_unmerged(source: Source, output: str | Path, *, overwrite: bool = False) -> Exported:
    """A run whose weights cannot fold into its base, written in its own loadable form: a run folder
    holding its trained result, its config and a copy of its base (`base/`), so `tunelab chat
    --adapter OUTPUT` (or peft with the base) loads it with nothing else at hand."""
    from tunelab.models import hub

    cfg = source.config
    base = hub.resolve(cfg.model.name, cfg.model.revision)
    with staged_output(output, overwrite=overwrite) as folder:
        folder.mkdir()
        shutil.copytree(source.result, folder / source.result.name)
        shutil.copytree(base, folder / "base")
        for config, key in (("adapter_config.json", "base_model_name_or_path"), ("probe_config.json", "model")):
            path = folder / source.result.name / config
            data = json.loads(path.read_text()) if path.is_file() else {}
            if data.get(key) and not data.get("config", {}).get("embedder"):  # the result finds the base beside it
                data[key] = "../base"
                path.write_text(json.dumps(data, indent=2))
        write_yaml(cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "./base"})}),
                   folder / "config.yaml")
    note = (f"not merged: {source.why_not_mergeable}. Written as the {source.method} result with its base; load it "
            f"with: tunelab chat --adapter {output}")
    return Exported(Path(output), "adapter", merged=False, note=note,
                    files=sorted(p.name for p in Path(output).iterdir()))
