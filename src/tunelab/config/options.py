"""The base of every options class, and the one way a bad value is reported.

Every user-settable option in tunelab is a field of an `Options` subclass (a pydantic
model that refuses unknown keys), declared with `opt(default, help, ...)`: its type (a
`Literal` for a few allowed words), default, bounds and one line of help. YAML files,
`--set`, command-line flags, JSON Schema and forms are all read from these fields.

A bad value is a `ConfigError` that names the dotted key, what was given, what is allowed,
and the closest known name when a key or word looks misspelt.
"""

from __future__ import annotations

import contextvars
import difflib
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticUndefined

from tunelab.errors import ConfigError

_building = contextvars.ContextVar("tunelab_options_building", default=False)  # inside a validation already

__all__ = ["Options", "did_you_mean", "explain", "fail", "grouped", "literal_values", "models_in", "opt",
           "plain_type", "registered_union", "suggest", "validate"]


def opt(default: Any = PydanticUndefined, help: str = "", *, factory: Any = None, aka: tuple[str, ...] = (),
        flag: str | None = None, flags: tuple[str, ...] = (), off_flags: tuple[str, ...] = (),
        sep: str | None = None, cli: bool = True, **bounds: Any) -> Any:
    """One option: its default, one line of help, bounds (ge, gt, le, lt, min_length...).

    aka: names users of other tools know it by (transformers, OpenAI, lm-eval); a key
        written so is refused with a suggestion of this one.
    flag: its command-line flag when not --the-field-name (`--split` for a splitter's kind).
    flags: extra command-line flags that set it (earlier flag names kept working).
    off_flags: flags that set a true/false option to false (`--raw` for chat).
    sep: a list given on the command line as one text split at `sep` (`--labels a,b`).
    cli: False keeps it off the command line (YAML and --set only).
    """
    extra = {k: v for k, v in (("aka", list(aka)), ("flag", flag), ("flags", list(flags)),
                               ("off_flags", list(off_flags)), ("sep", sep)) if v}
    if not cli:
        extra["cli"] = False
    kwargs: dict[str, Any] = {"description": help, "json_schema_extra": extra or None, **bounds}
    if factory is not None:
        return Field(default_factory=factory, **kwargs)
    return Field(default, **kwargs)


class Options(BaseModel):
    """A group of options. Unknown keys are refused; a bad value raises ConfigError naming its key."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=False)

    def __init__(self, **data: Any) -> None:
        if _building.get():  # a nested group: its errors belong to the whole config, located there
            super().__init__(**data)
            return
        token = _building.set(True)
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(explain(e, type(self), data)) from None
        finally:
            _building.reset(token)

    def replace(self, **changes: Any):
        """A checked copy with some fields changed (the dataclasses.replace of options)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}  # dict(self) trips on a `keys` field
        return validate(type(self), {**values, **changes})

    def check(self):
        """These options checked again (after a `model_copy`, which does not check); returns the checked copy."""
        return self.replace()

    @classmethod
    def load(cls, raw: Any, where: str = ""):
        """Build from a plain mapping (a YAML section); ConfigError starting with `where` on a bad value."""
        return validate(cls, raw, where)


def fail(key: str, message: str) -> None:
    """Refuse a combination of values from a validator: `key` is the field the message is about."""
    raise ValueError(f"{key}: {message}")


def validate(cls: type[BaseModel], raw: Any, where: str = "") -> Any:
    """`cls` built from `raw`; a ConfigError with every problem (dotted key, given, allowed) otherwise."""
    token = _building.set(True)
    try:
        return cls.model_validate({} if raw is None else raw)
    except ValidationError as e:
        message = explain(e, cls, raw)
        raise ConfigError(f"{where}: {message}" if where else message) from None
    finally:
        _building.reset(token)


def grouped(cls: type[BaseModel], help: str, aka: tuple[str, ...] = (), **defaults: Any) -> Any:
    """The type of a field holding option group `cls`, whose defaults here differ by `defaults`
    (an eval task's answers default to 128 tokens): values given are completed with them."""
    def complete(value: Any) -> Any:
        return {**defaults, **value} if isinstance(value, dict) else value

    extra = {"aka": list(aka)} if aka else None
    return Annotated[cls, BeforeValidator(complete), Field(default_factory=lambda: cls(**defaults), description=help,
                                                           json_schema_extra=extra)]


# ---------------------------------------------------------------- registered options (methods, objectives)


def registered_union(classes: list[type[BaseModel]], default: str) -> Any:
    """The type of a field holding one of several option classes told apart by `name`.

    `method: lora` is short for `method: {name: lora}`, and options without a name tune the
    default (`--set method.r=8` alone).
    """
    def named(value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" not in value:
            return {"name": default, **value}
        return value

    union = Union[tuple(classes)] if len(classes) > 1 else classes[0]  # noqa: UP007 (built at run time)
    return Annotated[union, Field(discriminator="name"), BeforeValidator(named)]


# ---------------------------------------------------------------- type introspection


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def plain_type(tp: Any) -> Any:
    """The type without Annotated and Optional (`int | None` -> int)."""
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return plain_type(args[0])
    return tp


def literal_values(tp: Any) -> list | None:
    """The allowed values of a Literal (also inside Optional), else None."""
    tp = _unwrap(tp)
    if typing.get_origin(tp) is Literal:
        return list(typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            values = literal_values(arg)
            if values is not None:
                return values
    return None


def models_in(tp: Any) -> list[type[BaseModel]]:
    """The option classes a field's type can hold (through Optional, lists, dicts and unions)."""
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(tp):
        out += [m for m in models_in(arg) if m not in out]
    return out


# ---------------------------------------------------------------- error messages


def explain(error: ValidationError, cls: type[BaseModel], raw: Any) -> str:
    """One line per problem: `dotted.key: what was given; what is allowed (did you mean ...?)`."""
    lines = []
    for err in error.errors(include_url=False):
        parts, models, owners = _walk(err["loc"], cls, raw)
        key = _dotted(parts)
        line = _line(err, key, models, parts)
        field = next((m.model_fields[parts[-1]] for m in owners if parts and parts[-1] in m.model_fields), None)
        if err["type"] in ("missing", "string_too_short") and field is not None and field.description:
            line += f" ({field.description})"  # what belongs there
        lines.append(line)
    unique = list(dict.fromkeys(lines))
    return unique[0] if len(unique) == 1 else "\n  " + "\n  ".join(unique)


def _walk(loc: tuple, cls: type[BaseModel], raw: Any) -> tuple[list, list[type[BaseModel]]]:
    """The user's key path for a pydantic error location (union tags and validator names dropped),
    the option classes the last key's value could be, and those the last key belongs to."""
    parts: list = []
    models: list[type[BaseModel]] = [cls]
    owners: list[type[BaseModel]] = []
    value = raw
    for part in loc:
        if isinstance(part, str) and ("[" in part or "(" in part):
            continue  # function-before[...], a union member's type name
        if isinstance(part, str) and models and not any(part in m.model_fields for m in models):
            tagged = [m for m in models if _tag(m) == part]
            if tagged:  # the discriminator value pydantic puts in the location
                models = tagged
                continue
        parts.append(part)
        owners = models
        field_models = [m.model_fields[part] for m in models if isinstance(part, str) and part in m.model_fields]
        if field_models:
            models = models_in(field_models[0].annotation)
            value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, str) and models and all(_tag(m) for m in models):
                value = {"name": value}
        elif isinstance(part, int):
            value = value[part] if isinstance(value, list) and part < len(value) else None
        else:
            value = None
        if isinstance(value, dict) and len(models) > 1 and value.get("name") is not None:
            models = [m for m in models if _tag(m) == value.get("name")] or models
    return parts, models, owners


def _tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("name")
    values = literal_values(field.annotation) if field is not None else None
    return values[0] if values and len(values) == 1 else None


def _dotted(parts: list) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _line(err: dict, key: str, models: list[type[BaseModel]], parts: list) -> str:
    kind, given, ctx = err["type"], err.get("input"), err.get("ctx", {})
    if kind == "extra_forbidden":
        parent = _dotted(parts[:-1])
        names = sorted({n for m in models for n in _field_names(m)} - {"name"} if len(models) > 1 else
                       {n for m in models for n in _field_names(m)})
        guess = suggest(str(parts[-1]), models)
        hint = f"; did you mean {parent + '.' if parent else ''}{guess}?" if guess else ""
        owner = f" for {_tag(models[0])}" if len(models) == 1 and _tag(models[0]) else ""
        return f"{key}: unknown key{owner}{hint} (valid keys{f' in {parent}' if parent else ''}: {', '.join(names)})"
    if kind == "union_tag_invalid":
        tags = re.findall(r"'([^']*)'", ctx.get("expected_tags", ""))
        name = f"{key}.name" if key else "name"
        tag = ctx.get("tag")
        return f"{name}: {tag!r} is not known; choose one of {', '.join(tags)}{did_you_mean(tag, tags)}"
    if kind == "literal_error":
        allowed = re.findall(r"'([^']*)'|(\b\w+\b)", ctx.get("expected", ""))
        words = [a or b for a, b in allowed if (a or b) != "or"]
        return f"{key}: {given!r} is not allowed; choose one of {', '.join(words)}{did_you_mean(given, words)}"
    if kind == "missing":
        return f"{key}: required, and not given"
    if kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", err["msg"]))
        return f"{key}.{message}" if key and re.match(r"^\w+(\.\w+)*: ", message) else \
            f"{key}: {message}" if key else message
    message = err["msg"][0].lower() + err["msg"][1:]
    return f"{key or 'config'}: got {given!r}; {message}"


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def suggest(word: str, models: list[type[BaseModel]]) -> str | None:
    """The known field closest to a misspelt `word`, by spelling or by the names other tools use."""
    names: dict[str, str] = {}
    for m in models:
        for name, f in m.model_fields.items():
            names[name] = name
            for other in (f.json_schema_extra or {}).get("aka", []) if isinstance(f.json_schema_extra, dict) else []:
                names.setdefault(other, name)
    found = difflib.get_close_matches(word, list(names), n=1, cutoff=0.6)
    if not found:  # a prefix of a longer name: learning_rat -> learning_rate (aka of lr)
        found = [n for n in names if len(word) >= 3 and (n.startswith(word) or word.startswith(n) and len(n) > 3)][:1]
    if found:
        return names[found[0]]
    for m in models:  # an option of a nested group written one level too high: max_new_tokens -> decoding.
        for name, f in m.model_fields.items():
            groups = models_in(f.annotation)
            if len(groups) == 1 and typing.get_origin(_unwrap(f.annotation)) is None:
                inner = suggest(word, groups)
                if inner == word or inner and difflib.get_close_matches(word, [inner], n=1, cutoff=0.8):
                    return f"{name}.{inner}"
    return None


def did_you_mean(given: Any, words: list[str]) -> str:
    if not isinstance(given, str):
        return ""
    found = difflib.get_close_matches(given, [str(w) for w in words], n=1, cutoff=0.5)
    return f" (did you mean {found[0]}?)" if found else ""
