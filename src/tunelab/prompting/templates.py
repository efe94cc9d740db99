"""Zero-shot prompt templates: an instruction, an input format filled from a record, an answer cue.

A template is the cheapest route to a specialist: no parameter changes, only a clear
request. The built-ins cover the common task shapes; a YAML file or an inline format
string (`"{question}\\nAnswer:"`) covers the rest. A template names the fields it reads,
so a record without one fails with its file:line, not with a half-empty prompt.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, DataError

ANSWER_KINDS = ("text", "number", "choice")


@dataclass
class PromptTemplate:
    """How a record becomes a question.

    Args:
        instruction: said once, before any examples; may use {labels} and {keys}.
        input: the record's fields in `{field}` placeholders; literal braces are `{{ }}`.
        answer_prefix: the cue the answer follows (e.g. "Answer:"), on its own line after the input.
        labels: the label set of a classification template (fills {labels}; the choices of the answer).
        keys: the field names an extraction template asks for (fills {keys}).
        answer_kind: what the final answer is (text | number | choice), for answer extraction.
    """

    name: str = "custom"
    instruction: str = ""
    input: str = "{input}"
    answer_prefix: str = ""
    labels: list[str] | None = None
    keys: list[str] | None = None
    answer_kind: str = "text"

    def fields(self) -> list[str]:
        """The record fields the input format reads, in order."""
        return [name for _, name, _, _ in string.Formatter().parse(self.input) if name]

    def render(self, record: dict[str, Any], where: str = "record") -> str:
        """The input format filled from `record`, then the answer prefix; DataError names a missing field."""
        missing = [f for f in self.fields() if f not in record]
        if missing:
            raise DataError(f"{where}: template '{self.name}' reads the field '{missing[0]}', which this record lacks "
                            f"(fields here: {', '.join(sorted(record)) or 'none'}); rename the field in the file or "
                            f"use a template whose {{fields}} the file has")
        text = self.input.format_map({k: record[k] for k in self.fields()})
        return f"{text}\n{self.answer_prefix}" if self.answer_prefix else text

    def header(self) -> str:
        """The instruction with {labels} / {keys} filled."""
        return self.instruction.format(labels=", ".join(self.labels or []), keys=", ".join(self.keys or []))


BUILTIN: dict[str, PromptTemplate] = {
    "qa": PromptTemplate(
        "qa", "Answer the question. Reply with the answer only, as briefly as possible.",
        "Question: {question}", "Answer:"),
    "classify": PromptTemplate(
        "classify", "Classify the text as one of these labels: {labels}. Reply with the label only.",
        "Text: {text}", "Label:", answer_kind="choice"),
    "extract": PromptTemplate(
        "extract", "Extract these fields from the text: {keys}. Reply with one JSON object with exactly these keys, "
        "using null for a field the text does not give.",
        "Text: {text}", "JSON:"),
    "math": PromptTemplate(
        "math", "Solve the math problem. Give the final answer as a number.",
        "Problem: {question}", "Answer:", answer_kind="number"),
}


def _check_format(text: str, what: str) -> None:
    """Refuse a format string with positional `{}`, attribute access or a broken brace."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as e:
        raise ConfigError(f"{what}: {text!r} is not a valid format string ({e}); write fields as {{name}} and literal "
                          "braces as {{ }}") from None
    for name in names:
        if not name.isidentifier():
            raise ConfigError(f"{what}: {{{name}}} in {text!r} is not a field name; write fields as {{name}} and "
                              "literal braces as {{ }}")


def _from_file(path: Path) -> PromptTemplate:
    """A YAML or JSON file of PromptTemplate keys; `base: NAME` starts from a built-in."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read a template from it ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a template file is a mapping with keys instruction, input, answer_prefix, "
                          "labels, keys, answer_kind (and optionally base: one of " + ", ".join(BUILTIN) + ")")
    base = raw.pop("base", None)
    if base is not None and base not in BUILTIN:
        raise ConfigError(f"{path}: base: '{base}' is not a built-in template; choose one of {', '.join(BUILTIN)}")
    known = {f.name for f in fields(PromptTemplate)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{path}: unknown key '{key}'; valid keys: base, {', '.join(sorted(known))}")
    return replace(BUILTIN[base] if base else PromptTemplate(), **{"name": path.stem, **raw})


def load_template(spec: str | PromptTemplate | None, labels: list[str] | None = None,
                  keys: list[str] | None = None) -> PromptTemplate | None:
    """A template from a built-in name, a .yaml/.json file, or an inline format string with {fields}.

    `labels` / `keys` fill a template that asks for them. None stays None (prompts are used as given).
    Raises ConfigError naming what is wrong and the fix.
    """
    if spec is None:
        return None
    if isinstance(spec, PromptTemplate):
        template = spec
    elif spec in BUILTIN:
        template = BUILTIN[spec]
    elif Path(spec).suffix.lower() in (".yaml", ".yml", ".json"):
        if not Path(spec).is_file():
            raise ConfigError(f"template: {spec}: file not found")
        template = _from_file(Path(spec))
    elif "{" in spec:
        template = PromptTemplate("inline", input=spec)
    else:
        raise ConfigError(f"template: '{spec}' is neither a built-in ({', '.join(BUILTIN)}), a .yaml/.json file, nor "
                          "a format string with {field} placeholders such as \"{question}\\nAnswer:\"")
    template = replace(template, labels=labels or template.labels, keys=keys or template.keys)
    _check_format(template.input, f"template '{template.name}' input")
    _check_format(template.instruction, f"template '{template.name}' instruction")
    if template.answer_kind not in ANSWER_KINDS:
        raise ConfigError(f"template '{template.name}': answer_kind '{template.answer_kind}' is not known; choose "
                          f"one of {', '.join(ANSWER_KINDS)}")
    extra = [n for _, n, _, _ in string.Formatter().parse(template.instruction) if n and n not in ("labels", "keys")]
    if extra:
        raise ConfigError(f"template '{template.name}' instruction: {{{extra[0]}}} is not known there; an instruction "
                          "may use {labels} and {keys} only (write literal braces as {{ }})")
    for param in ("labels", "keys"):
        if "{" + param + "}" in template.instruction and not getattr(template, param):
            raise ConfigError(f"template '{template.name}' needs {param}: give them as a list ({param}: [a, b]; "
                              f"CLI --{param} a,b)")
    if not template.fields():
        raise ConfigError(f"template '{template.name}': the input {template.input!r} reads no record field; put "
                          "the field in braces, e.g. {question}")
    return template

