"""Command-line flags generated from options classes: one flag per field, help and choices included.

    add_flags(parser, DecodingConfig, "decoding")      # --temperature, --top-p, --stop ... (append)
    DecodingConfig.load(given(args, "decoding"))      # only the flags the user gave, checked like YAML

A field's flag is `--its-name` (or its `flag`), plus any earlier names in `flags`. Nested
option groups are flattened (`RagConfig.retrieval.k` is `-k`), or written with their
section (`--train.lr`) when `dotted` is set. Flags default to "not given", so defaults
stay in one place: the field.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from pydantic import BaseModel

from tunelab.config.files import deep_merge, load_yaml_text, nested
from tunelab.config.options import literal_values, models_in, plain_type

PREFIX = "opt:"  # argparse dests of generated flags: opt:<root>.<dotted field>


def add_command_flags(parser: argparse.ArgumentParser, kind: str, skip: tuple[str, ...] = ()) -> None:
    """The flags of every section of a command (`tunelab.config.schemas.sections`), with its defaults,
    and `--config FILE` for a YAML file of those sections; read them back with `schemas.from_command_line`."""
    from tunelab.config.schemas import sections

    parser.add_argument("--config", help=f"a YAML file of the sections {', '.join(sections(kind))} (see tunelab "
                        f"config schema {kind}); flags given win over it")
    for section, (cls, defaults) in sections(kind).items():
        add_flags(parser, cls, section, title=section, defaults=defaults,
                  skip=tuple(s.split(".", 1)[1] for s in skip if s.startswith(section + ".")))


def add_flags(parser: argparse.ArgumentParser | Any, cls: type[BaseModel], root: str, *, dotted: bool = False,
              only: tuple[str, ...] | None = None, skip: tuple[str, ...] = (), title: str | None = None,
              defaults: dict | None = None, _path: str = "") -> None:
    """Add a flag for each field of `cls` (and of its nested groups) to `parser`.

    only / skip: dotted field names (relative to `cls`) to include / leave out.
    dotted: flags named after their section (`--train.lr`) rather than the field alone.
    defaults: the defaults this command uses where they differ from the fields' (shown in the help).
    """
    target = parser.add_argument_group(title, cls.__doc__.strip().splitlines()[0] if cls.__doc__ else None) \
        if title else parser
    for name, field in cls.model_fields.items():
        path = f"{_path}{name}"
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("cli") is False or path in skip or name == "name" and literal_values(field.annotation):
            continue
        if only is not None and not any(path == o or o.startswith(path + ".") or path.startswith(o + ".")
                                        for o in only):
            continue
        groups = models_in(field.annotation)
        if len(groups) == 1 and typing.get_origin(plain_type(field.annotation)) is None:
            inner = None if field.is_required() else field.get_default(call_default_factory=True)
            shown = {f"{path}.{k}": getattr(inner, k) for k in groups[0].model_fields} \
                if isinstance(inner, BaseModel) else {}  # a group whose defaults differ here (grouped)
            add_flags(target, groups[0], root, dotted=dotted, only=only, skip=skip,
                      defaults={**shown, **(defaults or {})}, _path=path + ".")
            continue
        if groups:
            continue  # lists of groups (eval tasks) are YAML and --set only
        _add(target, field, path, root, dotted, extra, (defaults or {}).get(path, _UNSET))


_UNSET = object()


def _add(parser, field, path: str, root: str, dotted: bool, extra: dict, default: Any = _UNSET) -> None:
    dest = f"{PREFIX}{root}.{path}"
    name = path if dotted else path.rsplit(".", 1)[-1]
    primary = (not dotted and extra.get("flag")) or "--" + name.replace("_", "-")
    names = [primary, *extra.get("flags", [])]
    tp = plain_type(field.annotation)
    help_text = field.description or ""
    default = field.get_default(call_default_factory=True) if default is _UNSET else default
    if default not in (None, "", [], {}) and not isinstance(default, bool):
        help_text += f" (default {default!r})" if isinstance(default, str) and default.strip() != default else \
            f" (default {default})"
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text.replace("%", "%%"),
                              "metavar": path.rsplit(".", 1)[-1].upper()}
    choices = literal_values(field.annotation)
    if tp is bool:
        kwargs.pop("metavar")
        parser.add_argument(*names, action=argparse.BooleanOptionalAction, **kwargs)
        for off in extra.get("off_flags", []):
            parser.add_argument(off, dest=dest, action="store_const", const=False, default=argparse.SUPPRESS,
                                help=f"the same as --no-{name.replace('_', '-')}")
        return
    if typing.get_origin(tp) is list:
        kwargs["action"] = _Split if extra.get("sep") else "append"
        if extra.get("sep"):
            kwargs["help"] += "; comma-separated"
        parser.add_argument(*names, **kwargs)
        return
    if choices is not None:
        kwargs.update(choices=choices, type=type(choices[0]), metavar="{" + ",".join(map(str, choices)) + "}")
    elif tp in (int, float, str):
        kwargs["type"] = tp
    else:
        kwargs.update(type=_yaml, metavar="VALUE")  # a union such as `list[str] | str`: read as YAML
    parser.add_argument(*names, **kwargs)


class _Split(argparse.Action):
    """A list flag given as comma-separated text, repeatable: --labels a,b --labels c."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        current = [] if current is None or current is argparse.SUPPRESS else list(current)
        setattr(namespace, self.dest, current + [v.strip() for v in str(values).split(",") if v.strip()])


def _yaml(text: str) -> Any:
    try:
        return load_yaml_text(text)
    except Exception:  # noqa: BLE001  plain text that is not YAML stays text
        return text


def given(args: argparse.Namespace, root: str) -> dict:
    """The values of the flags under `root` that were given, as a nested mapping."""
    out: dict = {}
    start = f"{PREFIX}{root}."
    for dest, value in vars(args).items():
        if dest.startswith(start):
            out = deep_merge(out, nested(dest[len(start):], value))
    return out
