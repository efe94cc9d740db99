"""Which text of a record each curation step reads.

Quality rules judge what a model learns to write (the answer fields: `output`, `completion`,
assistant turns, `chosen`/`rejected`, or `text`); overlap checks (duplicates, contamination)
read every text field, since a copied question is a copy too. A record is kept or dropped whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ANSWER_FIELDS = ("output", "completion", "chosen", "rejected", "response", "answer", "text")
ANSWER_ROLES = ("assistant", "gpt", "model")


def answers(data: dict) -> list[str]:
    """The texts a model is trained to produce in this record."""
    for key in ("messages", "conversations"):
        turns = data.get(key)
        if isinstance(turns, list):
            return [str(t.get("content", t.get("value", ""))) for t in turns
                    if isinstance(t, dict) and t.get("role", t.get("from")) in ANSWER_ROLES]
    return [data[k] for k in ANSWER_FIELDS if isinstance(data.get(k), str)]


def texts(data: Any) -> list[str]:
    """Every string field of the record, in field order (roles, labels and ids left out)."""
    out: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                if k not in ("role", "from", "label", "id"):
                    walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(data)
    return out


def all_text(data: Any) -> str:
    """Every string field of the record joined by newlines."""
    return "\n".join(texts(data))


def map_strings(data: Any, fn: Callable[[str], str]) -> Any:
    """The record with `fn` applied to every string value (keys, roles and labels untouched)."""
    if isinstance(data, str):
        return fn(data)
    if isinstance(data, dict):
        return {k: v if k in ("role", "from", "label", "id") else map_strings(v, fn) for k, v in data.items()}
    if isinstance(data, list):
        return [map_strings(v, fn) for v in data]
    return data
