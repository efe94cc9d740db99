"""Load models and tokenizers safely: safetensors only unless asked, no remote code unless asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ModelConfig
from tunelab.errors import ModelError
from tunelab.models import hub


def check_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuse pickle checkpoints (which can run code when loaded) unless the user allowed them."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = [p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    if pickles and not allow_pickle:
        raise ModelError(
            f"{folder}: only pickle weights ({', '.join(pickles[:3])}) and no .safetensors; pickle files can run "
            "code when loaded. Convert them to safetensors, or set model.allow_pickle: true if you trust the source"
        )
    if not pickles:
        raise ModelError(f"{folder}: no weight files (*.safetensors) found")


def load_tokenizer(folder: str | Path, trust_remote_code: bool = False):
    """Load a tokenizer and give it a pad token (the EOS token if it has none)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    cfg: ModelConfig | str,
    *,
    dtype: torch.dtype = torch.float32,
    auto_class: Any = None,
    **kwargs: Any,
):
    """Load (model, tokenizer) for `cfg` (a ModelConfig or a model name).

    Args:
        dtype: weight dtype to load in.
        auto_class: transformers Auto class (default AutoModelForCausalLM).
        kwargs: passed to from_pretrained (for example a quantization_config).
    Raises:
        ModelError: the model cannot be found or is unsafe to load as configured.
    """
    from transformers import AutoModelForCausalLM

    cfg = ModelConfig(name=cfg) if isinstance(cfg, str) else cfg
    folder = hub.resolve(cfg.name, cfg.revision)
    check_weights(folder, cfg.allow_pickle)
    auto_class = auto_class or AutoModelForCausalLM
    try:
        model = auto_class.from_pretrained(
            str(folder),
            dtype=dtype,
            use_safetensors=None if cfg.allow_pickle else True,  # allowing pickle must not refuse safetensors
            trust_remote_code=cfg.trust_remote_code,
            **({"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}),
            **kwargs,
        )
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelError(
                f"{cfg.name}: this model needs its own code to load; set model.trust_remote_code: true "
                "only if you trust its authors"
            ) from None
        raise
    tokenizer = load_tokenizer(folder, cfg.trust_remote_code)
    return model, tokenizer


def load_run(run_or_folder: str | Path, base: ModelConfig | str | None = None, dtype: torch.dtype = torch.float32):
    """Load the model a run produced: its adapter on the base, or its full model folder.

    `run_or_folder` is a run folder (runs/<name>) or an adapter/model folder inside one.
    The base defaults to the one recorded with the adapter. A classifier comes back with
    its head and labels (AutoModelForSequenceClassification).
    """
    from tunelab.methods import load_adapter
    from tunelab.models.families import auto_class

    folder = result_folder(run_or_folder)
    labels = _labels(folder)
    method = saved_by(folder)
    if method is None:
        raise ModelError(f"{run_or_folder}: no adapter/ or model/ found; is this a finished run folder?")
    if method.saves == "model":
        return load_model(ModelConfig(name=str(folder)), dtype=dtype, auto_class=_auto_for_saved(folder))
    if method.kind == "features":
        return method.load(None, folder), None
    base_cfg = base or ModelConfig(name=_recorded_base(folder, _json(folder / method.marker)))
    base_cfg = ModelConfig(name=base_cfg) if isinstance(base_cfg, str) else base_cfg
    task = "classify" if labels else _base_task(base_cfg)
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels))} if labels else {}
    if labels:
        # Modules a classifier adds that the method neither trains nor saves (a BERT pooler
        # missing from a checkpoint) are initialised at random: seed as training did.
        from transformers import set_seed

        set_seed(_recorded_seed(folder))
    model, tokenizer = load_model(base_cfg, dtype=dtype, auto_class=auto_class(task), **kwargs)
    if labels and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model = load_adapter(method, model, folder)
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(folder)
    return model, tokenizer


def load_adapters(adapters: dict[str, str | Path], base: ModelConfig | str | None = None,
                  dtype: torch.dtype = torch.float32):
    """Several saved peft adapters of one kind (all LoRA, or all IA3, ...) on one base model,
    each under its name.

    Returns (model, tokenizer): `model.set_adapter(name)` switches, `with
    model.disable_adapter():` turns them all off. The first adapter is active.
    Raises ModelError if an adapter is not a peft adapter or was trained on another base.
    """
    from peft import PeftModel

    if not adapters:
        raise ModelError("no adapters given; pass name=run_folder pairs")
    folders = {name: result_folder(path) for name, path in adapters.items()}
    kinds = {}
    for name, folder in folders.items():
        if not (folder / "adapter_config.json").is_file():
            raise ModelError(f"adapter {name} ({folder}): not a peft adapter (LoRA, IA3, prompt methods); only those "
                             "stack on one base")
        kinds[name] = _json(folder / "adapter_config.json").get("peft_type")
    if len(set(kinds.values())) > 1:
        first_kind = next(iter(kinds.values()))
        odd = next(n for n, k in kinds.items() if k != first_kind)
        raise ModelError(f"adapter {odd} is {kinds[odd]} but {next(iter(kinds))} is {first_kind}: adapters switched "
                         "on one base must be of one kind (all LoRA, or all IA3)")
    first, *rest = folders.items()
    base_cfg = base or ModelConfig(name=_recorded_base(first[1], _json(first[1] / "adapter_config.json")))
    model, tokenizer = load_model(base_cfg, dtype=dtype)
    model = PeftModel.from_pretrained(model, str(first[1]), adapter_name=first[0])
    for name, folder in rest:
        model.load_adapter(str(folder), adapter_name=name)
    model.set_adapter(first[0])
    return model, tokenizer


def saved_by(folder: Path):
    """The method whose saved result `folder` is, known by the config file it holds (`Method.marker`),
    or None. Whole-model folders (config.json) are tried last; methods sharing a file (every peft
    adapter writes adapter_config.json) load alike, and the first registered is taken."""
    from tunelab.methods import METHODS

    methods = sorted(METHODS.values(), key=lambda m: m.saves == "model")  # stable: registration order otherwise
    return next((m for m in methods if (folder / m.marker).is_file()), None)


def result_folder(run_or_folder: str | Path) -> Path:
    """runs/<name> -> its adapter/ or model/ folder; any other folder as given."""
    path = Path(run_or_folder)
    return path / "adapter" if (path / "adapter").is_dir() else path / "model" if (path / "model").is_dir() else path


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _labels(folder: Path) -> list | None:
    path = folder / "labels.json"
    return _json(path)["names"] if path.is_file() else None


def _base_task(base: ModelConfig) -> str:
    from transformers import AutoConfig

    from tunelab.models.families import family

    config = AutoConfig.from_pretrained(str(hub.resolve(base.name, base.revision)))
    return "seq2seq" if family(config) == "encoder-decoder" else "causal_lm"


def _auto_for_saved(folder: Path):
    """The Auto class for a saved full model, from the architecture it records."""
    from tunelab.models.families import auto_class

    archs = " ".join(_json(folder / "config.json").get("architectures") or [])
    if "ForSequenceClassification" in archs:
        return auto_class("classify")
    if "ForConditionalGeneration" in archs or "Seq2Seq" in archs:
        return auto_class("seq2seq")
    return auto_class("causal_lm")


def _recorded_seed(folder: Path) -> int:
    meta = folder.parent / "config.yaml"
    if meta.is_file():
        import yaml

        return int(((yaml.safe_load(meta.read_text()) or {}).get("train") or {}).get("seed", 42))
    return 42


def _recorded_base(folder: Path, adapter_config: dict) -> str:
    meta = folder.parent / "config.yaml"
    if meta.is_file():  # the tunelab run config names the base as the user gave it (alias or path)
        import yaml

        name = (yaml.safe_load(meta.read_text()) or {}).get("model", {}).get("name")
        if name and name.startswith("./") and (folder.parent / name).is_dir():  # a base shipped beside the result
            return str((folder.parent / name).resolve())
        if name:
            return name
    name = adapter_config.get("base_model_name_or_path")
    if not name:
        raise ModelError(f"{folder}: adapter_config.json does not name its base model; pass --model")
    return name
