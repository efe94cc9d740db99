"""Record formats: detect which one a file uses and normalise records to one shape per family.

| format            | fields                                         | normalised to            |
|-------------------|------------------------------------------------|--------------------------|
| instruction       | instruction, input (optional), output, system? | messages                 |
| chat              | messages [{role, content}] or ShareGPT conversations [{from, value}] | messages |
| prompt_completion | prompt, completion                              | messages                 |
| text              | text                                            | text                     |
| preference        | prompt, chosen, rejected                        | prompt, chosen, rejected |
| unpaired          | prompt, completion, label (true/false)          | prompt, completion, label |
| classification    | text, label                                     | text, label              |
"""

from __future__ import annotations

from typing import Any

from tunelab.data.readers import BadRecord, Record
from tunelab.errors import DataError

# Order matters: the first format whose required fields are all present wins.
SIGNATURES: list[tuple[str, tuple[str, ...]]] = [
    ("chat", ("messages",)),
    ("chat", ("conversations",)),
    ("preference", ("chosen", "rejected")),
    ("unpaired", ("prompt", "completion", "label")),
    ("instruction", ("instruction", "output")),
    ("prompt_completion", ("prompt", "completion")),
    ("classification", ("text", "label")),
    ("text", ("text",)),
]
FORMAT_NAMES = sorted({name for name, _ in SIGNATURES})
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "model": "assistant"}


def detect_format(record: Record) -> str:
    """Name the format of `record` from its fields, or raise DataError saying what was expected."""
    keys = set(record.data)
    for name, required in SIGNATURES:
        if name == "unpaired" and not isinstance(record.data.get("label"), bool):
            continue  # a prompt/completion record with some other label field
        if set(required) <= keys:
            return name
    expected = "; ".join(f"{n}: {', '.join(r)}" for n, r in SIGNATURES)
    raise DataError(f"{record.where}: cannot tell the data format from fields {sorted(keys)}. "
                    f"Expected one of — {expected}. Map your fields with data.columns "
                    "(e.g. {question: prompt, answer: completion}) or set data.format")


def normalise(record: Record, fmt: str) -> dict[str, Any]:
    """Return the record in its family's shape; raise BadRecord naming the field on a problem."""
    if fmt not in NORMALISERS:
        raise DataError(f"data.format: unknown format '{fmt}'; choose auto or one of {', '.join(FORMAT_NAMES)}")
    return NORMALISERS[fmt](record)


def _field(record: Record, key: str, kind: type | tuple = str, optional: bool = False) -> Any:
    if key not in record.data or record.data[key] is None:
        if optional:
            return None
        raise BadRecord(f"{record.where}: missing field '{key}' (fields present: {sorted(record.data)})")
    value = record.data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BadRecord(f"{record.where}: field '{key}' must be {names}, got {type(value).__name__} {str(value)[:60]!r}")
    return value


def _instruction(r: Record) -> dict:
    instruction = _field(r, "instruction")
    extra = _field(r, "input", optional=True)
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _field(r, "output")}]
    system = _field(r, "system", optional=True)
    return {"messages": ([{"role": "system", "content": system}] if system else []) + messages}


def _chat(r: Record) -> dict:
    key = "messages" if "messages" in r.data else "conversations"
    turns = _field(r, key, list)
    if not turns:
        raise BadRecord(f"{r.where}: field '{key}' is an empty list; a conversation needs at least one answer")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRecord(f"{r.where}: {key}[{i}] must be an object with role and content")
        role = turn.get("role", SHAREGPT_ROLES.get(turn.get("from", ""), None))
        content = turn.get("content", turn.get("value"))
        if role not in ("system", "user", "assistant", "tool"):
            raise BadRecord(f"{r.where}: {key}[{i}] has role {turn.get('role', turn.get('from'))!r}; "
                            "expected system, user, assistant (or ShareGPT human, gpt)")
        if not isinstance(content, str):
            raise BadRecord(f"{r.where}: {key}[{i}].content must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord(f"{r.where}: {key} has no assistant turn, so there is nothing to learn from")
    return {"messages": messages}


def _prompt_completion(r: Record) -> dict:
    return {"messages": [{"role": "user", "content": _field(r, "prompt")},
                         {"role": "assistant", "content": _field(r, "completion")}]}


def _text(r: Record) -> dict:
    return {"text": _field(r, "text")}


def _preference(r: Record) -> dict:
    return {"prompt": _field(r, "prompt"), "chosen": _field(r, "chosen"), "rejected": _field(r, "rejected")}


def _unpaired(r: Record) -> dict:
    return {"prompt": _field(r, "prompt"), "completion": _field(r, "completion"), "label": _field(r, "label", bool)}


def _classification(r: Record) -> dict:
    return {"text": _field(r, "text"), "label": _field(r, "label", (str, int))}


NORMALISERS = {
    "instruction": _instruction,
    "chat": _chat,
    "prompt_completion": _prompt_completion,
    "text": _text,
    "preference": _preference,
    "unpaired": _unpaired,
    "classification": _classification,
}
