"""JSON-record metrics for generation tasks: validity, exact record match, field accuracy."""

from __future__ import annotations

import json
from typing import Any


def parse_json_object(text: str) -> dict | None:
    """The JSON object a generation holds (the whole text, else its first {...} span), or None."""
    text = text.strip()
    try:
        obj = json.loads(text)
        return obj if isinstance(obj, dict) else None
    except json.JSONDecodeError:
        pass
    start = text.find("{")
    if start < 0:
        return None
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
        return obj if isinstance(obj, dict) else None
    except json.JSONDecodeError:
        return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    if isinstance(a, list) and isinstance(b, list):
        return sorted(map(str, a)) == sorted(map(str, b)) if len(a) == len(b) else False
    return a == b


def score_json(predictions: list[str], golds: list[dict]) -> dict[str, float]:
    """Percentages over examples: valid JSON, exact record, and per-field accuracy.

    Field accuracy counts each gold field matched (strings compared case-insensitively,
    lists as sets); extra predicted fields count against exact match only.
    """
    valid = exact = fields_ok = fields = 0
    for text, gold in zip(predictions, golds):
        pred = parse_json_object(text)
        fields += len(gold)
        if pred is None:
            continue
        valid += 1
        ok = sum(_same(pred.get(k), v) for k, v in gold.items())
        fields_ok += ok
        exact += ok == len(gold) and set(pred) == set(gold)
    n = max(len(golds), 1)
    return {"json_valid": 100 * valid / n, "exact_match": 100 * exact / n, "field_accuracy": 100 * fields_ok / max(fields, 1)}
