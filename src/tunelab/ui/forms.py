"""Forms generated from an options class: one input per field, its help as the hint, never written by hand.

    form = Form(DecodingConfig, "chat")            # inside a gr.Blocks context
    button.click(fn, inputs=form.inputs, ...)      # fn(*values) -> form.raw(values): the non-default keys
    DecodingConfig.load(form.raw(values))          # checked by the schema, its message shown as is

A field becomes: a checkbox (bool), a dropdown (a Literal), a number (int / float), a text box
(text; lists one item per line), a YAML box (mappings and lists of groups), or a collapsible
section holding its own fields (a nested group). A field holding one of several registered
groups (`method`, `objective`) becomes a dropdown of their names and one section per name,
shown only while its name is chosen, so a method's options appear only with it.

Values are returned only where they differ from the field's default, so that what a user
leaves alone keeps the one default defined in the schema.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from tunelab.config.options import _tag, literal_values, models_in, plain_type
from tunelab.errors import ConfigError

UNSET = "(unset)"  # the dropdown entry of an optional choice left to its default


@dataclass
class Input:
    """One generated input: its dotted key, the field it edits, its widget, and how to read it."""

    key: str
    info: FieldInfo
    kind: str  # bool, choice, number, text, lines, yaml
    component: Any
    default: Any  # the value the schema gives when the key is left out
    member: tuple[str, str] | None = None  # (union key, name): only read while that name is chosen


@dataclass
class Form:
    """The inputs of `cls` (elem_id `<prefix>-<dotted-key>`), with `raw()` to read them back.

    only / skip: dotted keys (relative to `cls`) to include / leave out.
    values: starting values (dotted key -> value) where they differ from the schema's defaults.
    """

    cls: type[BaseModel]
    prefix: str
    only: tuple[str, ...] | None = None
    skip: tuple[str, ...] = ()
    values: dict[str, Any] = field(default_factory=dict)
    opened: tuple[str, ...] = ()  # groups shown open (the rest start collapsed)
    fields: list[Input] = field(default_factory=list, init=False)
    choosers: dict[str, Any] = field(default_factory=dict, init=False)  # union key -> its name dropdown

    def __post_init__(self) -> None:
        self._defaults: dict[str, Any] = {}  # fields inside a group whose default instance differs from its class
        self._add(self.cls, "", None)

    @property
    def inputs(self) -> list:
        """Every component, in the order `raw()` expects their values: choosers first, then fields."""
        return list(self.choosers.values()) + [f.component for f in self.fields]

    def component(self, key: str):
        """The input of dotted `key`."""
        return next(f.component for f in self.fields if f.key == key)

    def raw(self, values: list | tuple) -> dict:
        """The non-default values as a nested mapping (what a YAML file of only those keys would hold)."""
        values = list(values)
        chosen = dict(zip(self.choosers, values[:len(self.choosers)]))
        out: dict = {}
        for key, name in chosen.items():
            if name != _default_tag(self.cls, key):
                _put(out, key, {"name": name})
        for f, value in zip(self.fields, values[len(self.choosers):]):
            if f.member and chosen.get(f.member[0]) != f.member[1]:
                continue
            value = _read(f, value)
            if value is _SAME:
                continue
            if f.member:  # a union member's option: the name goes with it, so the schema picks that member
                _put(out, f.member[0], {"name": f.member[1], **_get(out, f.member[0])})
            _put(out, f.key, value)
        return out

    # ------------------------------------------------------------ building

    def _wanted(self, path: str) -> bool:
        if path in self.skip:
            return False
        return self.only is None or any(path == o or o.startswith(path + ".") or path.startswith(o + ".")
                                        for o in self.only)

    def _add(self, cls: type[BaseModel], path: str, member: tuple[str, str] | None) -> None:
        import gradio as gr

        for name, info in cls.model_fields.items():
            key = f"{path}{name}"
            if not self._wanted(key) or name == "name" and _tag(cls):
                continue
            groups = models_in(info.annotation)
            tagged = [g for g in groups if _tag(g)]
            if len(tagged) > 1:  # method / objective: a dropdown of names, one section per name
                default = _default_tag(self.cls, key)
                start = self.values.get(key, default)
                chooser = gr.Dropdown([_tag(g) for g in tagged], value=start, label=key, info=info.description,
                                      elem_id=self._id(key), interactive=True)
                self.choosers[key] = chooser
                sections = []
                for g in tagged:
                    with gr.Group(visible=_tag(g) == start) as section:
                        gr.Markdown(f"**{_tag(g)}**: {(g.__doc__ or '').strip().splitlines()[0]}")
                        self._add(g, f"{key}.", (key, _tag(g)))
                    sections.append(section)
                names = [_tag(g) for g in tagged]
                chooser.change(lambda chosen, names=names: [gr.update(visible=n == chosen) for n in names],
                               inputs=chooser, outputs=sections)
                continue
            if len(groups) == 1 and typing.get_origin(plain_type(info.annotation)) is None:
                instance = _default(info)
                if isinstance(instance, BaseModel):
                    self._defaults.update({f"{key}.{n}": getattr(instance, n) for n in type(instance).model_fields})
                with gr.Accordion(key, open=key in self.opened):
                    gr.Markdown(info.description or "")
                    self._add(groups[0], f"{key}.", member)
                continue
            self.fields.append(self._input(key, info, member))

    def _input(self, key: str, info: FieldInfo, member: tuple[str, str] | None) -> Input:
        import gradio as gr

        schema_default = _plain(self._defaults.get(key, _default(info)))
        default = self.values.get(key, schema_default)
        tp = plain_type(info.annotation)
        common = dict(label=key, info=info.description or None, elem_id=self._id(key))
        choices = literal_values(info.annotation)
        if tp is bool:
            return Input(key, info, "bool", gr.Checkbox(value=bool(default), **common), schema_default, member)
        if choices is not None:
            optional = _optional(info)
            shown = ([UNSET] if optional else []) + [str(c) for c in choices]
            value = UNSET if default is None else str(default)
            return Input(key, info, "choice", gr.Dropdown(shown, value=value, **common), schema_default, member)
        if tp in (int, float) and _optional(info):  # a number box cannot be left empty: it sends 0
            return Input(key, info, "number", gr.Textbox(value="" if default is None else str(default),
                                                         placeholder="unset", **common), schema_default, member)
        if tp in (int, float):
            return Input(key, info, "number", gr.Number(value=default, **common), schema_default, member)
        if tp is str:
            return Input(key, info, "text", gr.Textbox(value=default or "", **common), schema_default, member)
        origin = typing.get_origin(tp)
        if origin is list and all(a in (str, int, float) for a in typing.get_args(tp)):
            text = "\n".join(map(str, default or []))
            return Input(key, info, "lines", gr.Textbox(value=text, lines=2, **{
                **common, "info": f"{info.description or ''} (one per line)"}), schema_default, member)
        text = "" if default in (None, {}, []) else \
            yaml.safe_dump(_plain(default), sort_keys=False).strip().removesuffix("...").strip()  # a bare scalar
        return Input(key, info, "yaml", gr.Code(value=text, language="yaml", lines=3, label=f"{key} (YAML)",
                                                elem_id=self._id(key)), schema_default, member)

    def _id(self, key: str) -> str:
        return f"{self.prefix}-{key.replace('.', '-').replace('_', '-')}"


# ---------------------------------------------------------------- reading values back

_SAME = object()  # the field is at its default: leave it out


def _read(f: Input, value: Any) -> Any:
    default = f.default
    if f.kind == "choice":
        value = None if value == UNSET else _typed_choice(f.info, value)
    elif f.kind == "number":
        value = None if value is None or str(value).strip() == "" else value
        if isinstance(value, str):
            value = value.strip()
            value = float(value) if _is_number(value) else value  # the schema says what a word is not
        if isinstance(value, float) and plain_type(f.info.annotation) is int and value.is_integer():
            value = int(value)
    elif f.kind == "text":
        value = value if value or not _optional(f.info) else None
    elif f.kind == "lines":
        value = [line.strip() for line in (value or "").splitlines() if line.strip()]
        kind = (typing.get_args(plain_type(f.info.annotation)) or (str,))[0]
        if kind in (int, float):
            value = [kind(v) if _is_number(v) else v for v in value]
    elif f.kind == "yaml":
        try:
            value = yaml.safe_load(value) if (value or "").strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"{f.key}: not valid YAML ({str(e).splitlines()[0]}); write a mapping such as "
                              "`a: b`, or a list with one `- item` per line") from None
        if value is None and default in ({}, []):
            value = default
    return _SAME if value == default else value


def _typed_choice(info: FieldInfo, text: str) -> Any:
    """A dropdown gives text; the Literal may hold numbers or booleans."""
    for choice in literal_values(info.annotation) or []:
        if str(choice) == text:
            return choice
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _default(info: FieldInfo) -> Any:
    return None if info.is_required() else info.get_default(call_default_factory=True)


def _optional(info: FieldInfo) -> bool:
    tp = info.annotation
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return type(None) in typing.get_args(tp)


def _default_tag(cls: type[BaseModel], key: str) -> str | None:
    """The registered name a union field defaults to (`lora` for method)."""
    node: Any = cls
    for part in key.split("."):
        info = node.model_fields[part]
        node = _default(info)
        if isinstance(node, BaseModel):
            node = type(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return _tag(node)
    return node if isinstance(node, str) else None


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    return value


def _put(out: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        out = out.setdefault(part, {})
    out[last] = value


def _get(out: dict, key: str) -> dict:
    for part in key.split("."):
        out = out.get(part, {}) if isinstance(out, dict) else {}
    return out if isinstance(out, dict) else {}
