"""The named schemas (`tunelab config schema KIND`), resolved configs and starter configs.

Each kind is one options class: `run` (tunelab train), `eval` (tunelab eval --config), `compare`
(tunelab compare's task file), `export`, `quantize` and `merge` (those commands' options), and the sections of `serve`, `generate`, `chat` and `rag`, whose
flags come from the same fields.
JSON Schema is pydantic's, made friendly to YAML editors (a method may be written as its
bare name; tunelab's own field notes are left out).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, create_model

from tunelab.config.files import deep_merge, parse_overrides, read_yaml, to_dict
from tunelab.config.options import Options, did_you_mean, grouped, literal_values, models_in, opt, validate
from tunelab.errors import ConfigError

KINDS = ("run", "eval", "compare", "export", "quantize", "merge", "rag", "serve", "generate", "chat")
SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"


def sections(kind: str) -> dict[str, tuple[type[BaseModel], dict]]:
    """The option groups a command of this kind reads: section name (also the flags' root) -> (class,
    the defaults that differ in this command)."""
    from tunelab.config import DecodingConfig
    from tunelab.infer.chat import ChatConfig
    from tunelab.infer.generate import GenerateConfig
    from tunelab.infer.load import LoadConfig

    if kind == "serve":
        from tunelab.serve import ServerConfig

        return {"model": (LoadConfig, {}), "server": (ServerConfig, {})}
    if kind == "generate":
        from tunelab.prompting import PromptingConfig

        return {"model": (LoadConfig, {}), "decoding": (DecodingConfig, {}), "prompting": (PromptingConfig, {}),
                "generate": (GenerateConfig, {})}
    if kind == "chat":  # one stream, and answers of a conversation's length
        return {"model": (LoadConfig, {"max_batch_size": 1}), "decoding": (DecodingConfig, {"max_new_tokens": 512}),
                "chat": (ChatConfig, {})}
    if kind == "rag":
        from tunelab.rag.ingest import IndexConfig
        from tunelab.rag.pipeline import RagConfig

        return {"model": (LoadConfig, {}), "index": (IndexConfig, {}), "answer": (RagConfig, {})}
    raise KeyError(kind)


@cache
def schema_class(kind: str) -> type[BaseModel]:
    """The options class of a config kind."""
    if kind == "run":
        from tunelab.config.run import run_schema

        return run_schema()
    if kind == "eval":
        from tunelab.eval.config import EvalConfig

        return EvalConfig
    if kind == "compare":
        from tunelab.compare.task import CompareTask

        return CompareTask
    if kind == "export":
        from tunelab.compress.export import ExportConfig

        return ExportConfig
    if kind == "quantize":
        from tunelab.compress.quantize import QuantizeConfig

        return QuantizeConfig
    if kind == "merge":
        from tunelab.compress.merge import MergeOptions

        return MergeOptions
    if kind not in KINDS:
        raise KeyError(kind)
    fields: dict[str, Any] = {}
    for name, (cls, defaults) in sections(kind).items():
        help_text = (cls.__doc__ or "").strip().splitlines()[0]
        required = any(f.is_required() for f in cls.model_fields.values())
        fields[name] = (cls, opt(help=help_text)) if required else grouped(cls, help_text, **defaults)
    return create_model(f"{kind.capitalize()}Config", __base__=Options, __doc__=f"A `tunelab {kind}` config file.",
                        **fields)


def from_command_line(kind: str, args) -> BaseModel:
    """A command's options: its YAML file (`--config`, optional), then the flags given over it, checked."""
    from tunelab.config.flags import given

    path = getattr(args, "config", None)
    raw = read_yaml(path, ", ".join(sections(kind))) if path else {}
    for section in sections(kind):
        raw = deep_merge(raw, {section: given(args, section)})
    return validate(schema_class(kind), raw, str(path) if path else "flags")


def json_schema(kind: str) -> dict:
    """The JSON Schema of a config kind, for editors' YAML language servers."""
    schema = schema_class(kind).model_json_schema()
    schema = _friendly(schema)
    return {"$schema": SCHEMA_URL, "title": f"tunelab {kind} config", **schema}


_OURS = ("aka", "flag", "flags", "off_flags", "sep", "cli")


def _friendly(node: Any) -> Any:
    """A discriminated union (method, objective) also accepts its bare names; tunelab's notes are dropped."""
    if isinstance(node, list):
        return [_friendly(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _friendly(v) for k, v in node.items() if k not in _OURS}
    if "oneOf" in node and "discriminator" in node:
        names = sorted(node["discriminator"].get("mapping", {}))
        node = {k: v for k, v in node.items() if k not in ("oneOf", "discriminator")} | {
            "anyOf": [{"type": "string", "enum": names}, *node["oneOf"]]}
    return node


def load(kind: str, path: str | Path | None = None, overrides: list[str] | None = None) -> BaseModel:
    """A config of this kind from a YAML file (optional) and `--set` overrides, checked."""
    if kind == "run":
        from tunelab.config.run import load_config

        return load_config(path, overrides)
    raw = read_yaml(path, ", ".join(schema_class(kind).model_fields)) if path is not None else {}
    raw = deep_merge(raw, parse_overrides(overrides))
    return validate(schema_class(kind), raw, str(path) if path is not None else f"{kind} config")


def show(kind: str, path: str | Path | None = None, overrides: list[str] | None = None) -> str:
    """The config resolved, as YAML, every value left at its default marked `# default`."""
    cfg = load(kind, path, overrides)
    lines = yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True, width=120).splitlines()
    defaults = _defaults(cfg)
    out, stack = [], []
    for line in lines:
        indent = (len(line) - len(line.lstrip(" "))) // 2
        key = line.strip().split(":", 1)[0]
        stack = stack[:indent] + [key]
        note = "  # default" if ".".join(stack) in defaults and not line.rstrip().endswith(":") else ""
        out.append(line + note)
    return "\n".join(out) + "\n"


def _defaults(cfg: BaseModel, prefix: str = "") -> set[str]:
    """Dotted keys whose value was not given (defaults), through nested groups."""
    out = set()
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        key = prefix + name
        if isinstance(value, BaseModel):
            out |= _defaults(value, key + ".")
        elif name not in cfg.model_fields_set:
            out.add(key)
    return out


def starter(objective: str = "sft", method: str = "lora") -> str:
    """A commented run config for `objective` and `method`: every option at its default, with its help;
    options with no default are marked REQUIRED."""
    from tunelab.config.run import run_schema
    from tunelab.methods import METHODS
    from tunelab.objectives import OBJECTIVES

    for kind, name, table in (("objective", objective, OBJECTIVES), ("method", method, METHODS)):
        if name not in table:
            raise ConfigError(f"--{kind} {name}: not known; choose one of {', '.join(sorted(table))}"
                              f"{did_you_mean(name, list(table))}")
    schema = run_schema()
    classes = {"model": schema.model_fields["model"].annotation, "data": schema.model_fields["data"].annotation,
               "train": schema.model_fields["train"].annotation, "objective": OBJECTIVES[objective].config,
               "method": METHODS[method].config}
    lines = ["# yaml-language-server: $schema=tunelab-run.schema.json",
             f"# A tunelab run: objective {objective}, method {method}. Every option is at its default;",
             "# delete what you do not change. Check it with: tunelab config show THIS_FILE", ""]
    for section, cls in classes.items():
        lines.append(f"{section}:  # {schema.model_fields[section].description}")
        lines += _commented(cls, 1)
        lines.append("")
    return "\n".join(lines)


def _commented(cls: type[BaseModel], depth: int) -> list[str]:
    out = []
    pad = "  " * depth
    for name, field in cls.model_fields.items():
        groups = models_in(field.annotation)
        if len(groups) == 1 and not field.is_required() and isinstance(field.get_default(call_default_factory=True),
                                                                       BaseModel):
            out.append(f"{pad}{name}:  # {field.description}")
            out += _commented(groups[0], depth + 1)
            continue
        help_text = field.description or ""
        words = literal_values(field.annotation)
        if words and name != "name":
            help_text += f" (one of: {', '.join(map(str, words))})"
        if field.is_required():
            out.append(f"{pad}{name}:  # REQUIRED: {help_text}")
            continue
        default = to_dict(field.get_default(call_default_factory=True))
        text = yaml.safe_dump({name: default}, default_flow_style=True, width=10_000).strip()[1:-1]
        out.append(f"{pad}{text}" + (f"  # {help_text}" if help_text else ""))
    return out
