"""What is being shipped: a training run (its base plus what it trained) or a plain model.

Every command of this package starts here. A run folder names its base and its method in
config.yaml; the method says whether the trained weights fold into the base (LoRA and its
variants, QLoRA, IA3 add to or scale a linear weight; freeze and full are whole models) or
cannot (virtual tokens, bottleneck adapters with a nonlinearity, a probe on features).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.errors import ModelError

SYSTEM_PROMPT_FILE = "system_prompt.json"  # in a run's result folder: the system prompt every record carried

NOT_MERGEABLE = {
    "prompt": "prompt tuning prepends learned virtual tokens to every input; no weight of the base can hold them",
    "prefix": "prefix tuning prepends learned keys and values to every layer's attention; no weight can hold them",
    "ptuning": "P-tuning prepends virtual tokens made by a small encoder; no weight of the base can hold them",
    "adapter": "bottleneck adapters put a nonlinearity between two new projections, which a linear weight cannot hold",
    "probe": "a probe is a separate small model on the frozen model's features, not a change to its weights",
}


@dataclass(frozen=True)
class Source:
    """A run or a model to ship.

    Attributes:
        name: as the user gave it.
        run_dir: the run folder, or None for a plain model.
        method: the method's name (lora, qlora, full, ...), or None for a plain model.
        base: the base model's name (alias, folder, Hub id) for a run; the model itself otherwise.
        result: the run's adapter/ or model/ folder, or the plain model's folder.
        system_prompt: the system prompt every training record carried, if any.
    """

    name: str
    run_dir: Path | None
    method: str | None
    base: str
    result: Path
    system_prompt: str | None = None

    @property
    def mergeable(self) -> bool:
        return self.method not in NOT_MERGEABLE

    @property
    def why_not_mergeable(self) -> str:
        return NOT_MERGEABLE.get(self.method or "", "")

    @property
    def config(self):
        """The run's resolved config, or None for a plain model."""
        if self.run_dir is None:
            return None
        from tunelab.config import load_config

        return load_config(self.run_dir / "config.yaml")


def open_source(name: str | Path) -> Source:
    """A run folder (runs/NAME), a model folder, a .gguf file or an alias, checked before anything loads.

    Raises ModelError when a run folder holds no trained result (a run that failed or is still
    running) or the name is no model at all.
    """
    from tunelab.models import hub
    from tunelab.models.loading import result_folder

    path = Path(name)
    if (path / "config.yaml").is_file() and not (path / "config.json").is_file():
        from tunelab.config import load_config

        folder = result_folder(path)
        if folder == path:
            raise ModelError(f"{path}: this run has no model (no adapter/ or model/ folder); it did not finish. "
                             f"Finish it with tunelab train {path / 'config.yaml'} --resume")
        cfg = load_config(path / "config.yaml")
        return Source(str(name), path, cfg.method_name, cfg.model.name, folder, run_system_prompt(path))
    folder = hub.resolve(str(name))
    return Source(str(name), None, None, str(name), folder, None)


def load_trained(source: Source, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) computing what the run computes: the base with its adapter on top (unmerged).

    A QLoRA run's base is loaded in 4 bits as in training, so its answers are the run's.
    """
    from tunelab.models import load_model
    from tunelab.models.loading import load_run

    if source.run_dir is None:
        return load_model(str(source.result), dtype=dtype)
    if source.method == "qlora":
        return _qlora_model(source, dtype)
    return load_run(source.run_dir, dtype=dtype)


def load_merged(source: Source, dtype: torch.dtype = torch.float32):
    """(model, tokenizer): a plain transformers model with the run's weights folded into its base.

    The merge is done in float32 and the result cast to `dtype`. A QLoRA adapter folds into
    its dequantized NF4 base (the weights it was trained against), not the original float base.
    Raises ModelError for methods whose weights cannot fold into the base (the reason is given).
    """
    if not source.mergeable:
        raise ModelError(f"{source.name}: a {source.method} run cannot be merged into its base: "
                         f"{source.why_not_mergeable}")
    if source.method == "qlora":
        model, tokenizer = _qlora_model(source, torch.float32, dequantized=True)
    else:
        model, tokenizer = load_trained(source, torch.float32)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model.to(dtype), tokenizer


def run_system_prompt(run_dir: Path) -> str | None:
    """The system prompt every training record of the run carried (recorded when it trained, or read
    again from its training file for runs recorded before), or None when they differ or have none."""
    from tunelab.models.loading import result_folder

    recorded = result_folder(run_dir) / SYSTEM_PROMPT_FILE
    if recorded.is_file():
        return json.loads(recorded.read_text()).get("system_prompt")
    try:
        from tunelab.config import load_config

        cfg = load_config(run_dir / "config.yaml")
        return common_system_prompt(cfg.data) if cfg.data.train and Path(cfg.data.train).exists() else None
    except Exception:  # noqa: BLE001 - an old or moved run: no system prompt rather than no export
        return None


def common_system_prompt(data_cfg) -> str | None:
    """The one system prompt all records of `data_cfg.train` have (written in the records or added by
    data.system_prompt), or None when any record has another or none. Plain-text data has none."""
    from tunelab.data.dataset import add_system_prompt, as_chat, load_records

    loaded = load_records(data_cfg.train, data_cfg)
    if loaded.format == "text" or not loaded.records:
        return None
    found = set()
    for record in loaded.records:
        messages = add_system_prompt(as_chat(record, data_cfg), data_cfg.system_prompt).get("messages") or []
        found.add(messages[0]["content"] if messages and messages[0].get("role") == "system" else None)
        if len(found) > 1:
            return None
    return found.pop()


def _qlora_model(source: Source, dtype: torch.dtype, dequantized: bool = False):
    """The QLoRA run as trained: its base in 4 bits (the run's own quantization settings) plus the adapter;
    with `dequantized`, the base's NF4 weights dequantized to float32 first (what the adapter merges into)."""
    from peft import PeftModel

    from tunelab.methods import METHODS
    from tunelab.methods.qlora import keep_4bit_layout
    from tunelab.models import load_model

    cfg = source.config
    model, tokenizer = load_model(cfg.model, dtype=dtype, **METHODS["qlora"].load_kwargs(cfg.method))
    keep_4bit_layout(model)
    if dequantized:
        model = model.dequantize().float()  # transformers' own: every Linear4bit back to an nn.Linear
    model = PeftModel.from_pretrained(model, str(source.result))
    if (source.result / "tokenizer_config.json").is_file():
        from tunelab.models import load_tokenizer

        tokenizer = load_tokenizer(source.result)
    return model, tokenizer


def run_records(source: Source, held_out_first: bool = True) -> tuple[str, list[dict]]:
    """(format, records) of the run's training file split as training split it, the held-out records first (or
    last); chat-like records come as {"messages": [...]} with the run's system prompt added as in training.
    ("", []) for a plain model or a run whose data is not at hand."""
    from tunelab.data.dataset import add_system_prompt, as_chat, load_records, split_records

    cfg = source.config
    if cfg is None or not cfg.data.train or not Path(cfg.data.train).exists():
        return "", []
    loaded = load_records(cfg.data.train, cfg.data)
    train, held, _ = split_records(loaded, cfg.data, cfg.train.seed)
    records = held + train if held_out_first else train + held
    if loaded.format == "text":
        return "text", records
    return loaded.format, [add_system_prompt(as_chat(r, cfg.data), cfg.data.system_prompt) for r in records]


def recorded_system_prompt(model: str | Path | None) -> str | None:
    """The system prompt an exported model folder records (`SYSTEM_PROMPT_FILE`), or None."""
    path = Path(str(model)) / SYSTEM_PROMPT_FILE if model else None
    return json.loads(path.read_text()).get("system_prompt") if path and path.is_file() else None
