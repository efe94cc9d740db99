"""Config files and overrides: YAML in and out, `--set a.b=c`, and how layers merge."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tunelab.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-4` as a float (YAML 1.1 only knows `1.0e-4`; people write 1e-4)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def load_yaml_text(text: str) -> Any:
    """YAML text as Python values (1e-4 read as a float)."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path: str | Path, sections: str = "model, data, train, method, objective") -> dict:
    """A YAML config file as a mapping; ConfigError naming the file when it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        loaded = load_yaml_text(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: expected a mapping of sections ({sections})")
    return loaded or {}


def _scalar(raw: str) -> Any:
    """A `--set` value as YAML (numbers, booleans, [lists], {mappings}); text that only
    looks like a mapping ("Sentiment of: {text}") stays text."""
    if not raw.strip():
        return ""
    try:
        value = load_yaml_text(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, (dict, list)) and not raw.strip().startswith(("{", "[")):
        return raw
    return value


def parse_overrides(pairs: list[str] | None) -> dict:
    """`["train.lr=1e-4", "method.r=8"]` -> nested dict. Values are parsed as YAML scalars."""
    tree: dict = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value, for example --set train.lr=1e-4")
        key, raw = pair.split("=", 1)
        # merged like a file, so `method=freeze` then `method.last_n_layers=1` combine; later pairs win
        tree = deep_merge(tree, nested(key.strip(), _scalar(raw)))
    return tree


def nested(dotted: str, value: Any) -> dict:
    """`nested("a.b", 1)` -> {"a": {"b": 1}}."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


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
        elif isinstance(value, str) and isinstance(old, dict) and old.get("name") == value:
            continue  # `--method lora` over a file's `method: {name: lora, r: 8}` keeps its options
        else:
            out[key] = value
    return out


def to_dict(cfg: Any) -> Any:
    """Options tree -> plain values (for YAML and JSON)."""
    if isinstance(cfg, BaseModel):
        return cfg.model_dump(mode="json")
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def write_yaml(cfg: Any, path: Path) -> None:
    """The resolved options as YAML, written whole or not at all."""
    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))


def write_text_atomic(path: str | Path, text: str) -> None:
    """`text` to `path` through a temporary file: a crash leaves the old file or the new, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


@contextlib.contextmanager
def staged_output(path: str | Path, *, overwrite: bool = False):
    """A staging path beside `path` to write into; renamed to `path` only when the block ends without error.

    A crash or an error leaves `path` as it was (the staging path is removed, or left as
    `NAME.partial-*` after a hard kill, never mistaken for the output). With `overwrite`, an
    existing `path` is replaced only once the new one is complete.
    Raises ConfigError when `path` exists and `overwrite` is off.
    """
    import shutil
    import tempfile

    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists; choose another --output or add --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{path.name}.partial-", dir=path.parent))
    target = staging / path.name  # a file or a folder, as the block writes it
    try:
        yield target
        if not target.exists():
            raise RuntimeError(f"nothing was written to the staging path {target}")
        old = path.with_name(f"{path.name}.old-{staging.name.rsplit('-', 1)[-1]}")
        if path.exists():
            path.rename(old)
        target.rename(path)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
