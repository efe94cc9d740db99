"""Typed run configuration: dataclasses grouped by concern, YAML in and out, `--set a.b=c` overrides.

A config file is a mapping whose top-level keys are the fields of `RunConfig`. `method`
and `objective` are either a name (`method: lora`) or a mapping with a `name` key and
that method's / objective's own options (`method: {name: lora, r: 8}`); the options are
checked against the Config dataclass the method or objective registered.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.errors import ConfigError

DEFAULT_MODEL = "smollm2-135m-instruct"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 only knows `1.0e-4`; people write 1e-4)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


@dataclass
class ModelConfig:
    """Which model to start from and how to load it."""

    name: str = DEFAULT_MODEL  # alias, local HF folder, GGUF file or Hub id
    revision: str | None = None
    trust_remote_code: bool = False  # runs code shipped with the model: only for models you trust
    allow_pickle: bool = False  # .bin/.pt checkpoints can run code when loaded: refused unless set
    attn_implementation: str | None = None  # sdpa | eager | flash_attention_2; None: transformers' choice


@dataclass
class DataConfig:
    """Where the records come from and how they become token sequences."""

    train: str = ""  # JSONL / JSON / CSV / Parquet file or a `datasets` folder
    validation: str | None = None  # separate file; else `val_split` of train is held out
    val_split: float = 0.1
    format: str = "auto"  # auto | instruction | chat | prompt_completion | text | preference | classification
    max_length: int = 1024  # tokens; longer examples are truncated and counted
    packing: bool = False  # several examples per row, attention kept apart by position ids
    train_on: str = "assistant"  # assistant (answers only) | last (last answer only) | all
    system_prompt: str | None = None  # added to records that have no system message
    skip_bad: bool = False  # skip and count bad records instead of stopping
    max_record_bytes: int = 10_000_000  # longer lines are bad records (guards against runaway files)
    limit: int | None = None  # use only the first N records (quick experiments)
    columns: dict[str, str] = field(default_factory=dict)  # rename fields, e.g. {question: prompt, answer: completion}
    # classification records (text, label):
    label_names: dict[str, str] = field(default_factory=dict)  # label value -> name, e.g. {0: negative, 1: positive}
    prompt_template: str = "{text}"  # generative classification (sft): the question built from a record's text


@dataclass
class TrainConfig:
    """Optimisation, precision, logging and checkpointing."""

    output_dir: str = "runs"
    run_name: str | None = None  # default: <objective>-<method>-<timestamp>
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8  # per process
    grad_accum: int = 1
    lr: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: str = "auto"  # auto (bf16 where the hardware has it) | bf16 | fp32
    gradient_checkpointing: bool = False
    group_by_length: bool = True  # batches of similar length waste less compute on padding
    logging_steps: int = 5
    eval_steps: int = 0  # 0: evaluate at the end only
    save_steps: int = 0  # 0: checkpoint only at the end
    save_total_limit: int = 2
    resume: bool = False  # continue from the latest complete checkpoint of this run
    overwrite: bool = False  # allow reusing a run folder that already holds a finished run


@dataclass
class RunConfig:
    """Everything one run needs; saved resolved as runs/<name>/config.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: Any = "sft"  # resolved to the objective's Config dataclass
    method: Any = "lora"  # resolved to the method's Config dataclass

    @property
    def method_name(self) -> str:
        return _registered_name(self.method)

    @property
    def objective_name(self) -> str:
        return _registered_name(self.objective)


def _registered_name(cfg: Any) -> str:
    return cfg if isinstance(cfg, str) else cfg.name


# ---------------------------------------------------------------- building from mappings


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, checking every key and value type.

    `where` is the dotted key of this mapping ('' at the top). Raises ConfigError naming
    the dotted key on an unknown key or a value of the wrong type.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in names:
            raise ConfigError(f"unknown key '{dotted}'; valid keys{f' in {where}' if where else ''}: "
                              f"{', '.join(sorted(names))}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: value {value!r} fits none of {tp}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()} if typing.get_args(tp)[:1] == (str,) else dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool) and tp is not bool):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain dict (for YAML)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


# ---------------------------------------------------------------- files and overrides


def _scalar(raw: str) -> Any:
    """A `--set` value as YAML (numbers, booleans, [lists], {mappings}); text that only
    looks like a mapping ("Sentiment of: {text}") stays text."""
    if not raw.strip():
        return ""
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        return raw
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        return raw
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """`["train.lr=1e-4", "method.r=8"]` -> nested dict. Values are parsed as YAML scalars."""
    tree: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value, for example --set train.lr=1e-4")
        key, raw = pair.split("=", 1)
        value = _scalar(raw)
        for part in reversed(key.strip().split(".")):
            value = {part: value}
        # merged like a file, so `method=freeze` then `method.last_n_layers=1` combine; later pairs win
        tree = deep_merge(tree, value)
    return tree


def deep_merge(base: dict, over: dict) -> dict:
    """Merge `over` into a copy of `base`; a string `method: lora` merges as `{name: lora}`."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(value, dict):
            if isinstance(old, str):
                old = {"name": old}
            if isinstance(old, dict) and value.get("name", old.get("name")) != old.get("name"):
                old = {}  # another method or objective: the options of the old one do not apply
            out[key] = deep_merge(old if isinstance(old, dict) else {}, value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, sections: str = "model, data, train, method, objective") -> dict:
    """A YAML config file as a mapping; ConfigError naming the file when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        loaded = yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping of sections ({sections})")
    return loaded or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """Read a YAML config (optional), apply `--set` overrides, resolve method/objective configs."""
    raw: dict = dict(base or {})
    if path is not None:
        raw = deep_merge(raw, read_yaml(path))
    raw = deep_merge(raw, parse_overrides(overrides or []))
    return resolve(raw, str(path) if path is not None else "config")


def resolve(raw: dict, where: str = "config") -> RunConfig:
    """Turn a plain mapping into a RunConfig with method/objective Config objects.

    Raises ConfigError starting with `where` (usually the file), then the dotted key.
    """
    from tunelab.methods import METHODS
    from tunelab.objectives import OBJECTIVES

    try:
        cfg = from_dict(RunConfig, raw)
        cfg.method = _resolve_registered(cfg.method, METHODS, "method", RunConfig.method)
        cfg.objective = _resolve_registered(cfg.objective, OBJECTIVES, "objective", RunConfig.objective)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return cfg


def _resolve_registered(value: Any, table: dict, kind: str, default: str) -> Any:
    if dataclasses.is_dataclass(value):
        return value
    options = {"name": value} if isinstance(value, str) else dict(value or {})
    name = options.setdefault("name", default)  # `--set method.r=8` alone tunes the default method
    if name not in table:
        raise ConfigError(f"{kind} '{name}' is not known; choose one of: {', '.join(sorted(table))}")
    return from_dict(table[name].config, options, kind)


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
