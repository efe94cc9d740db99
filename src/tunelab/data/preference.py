"""Preference data for reward models, DPO and its relatives.

Pairs are records {prompt, chosen, rejected} (text). KTO also learns from unpaired
records {prompt, completion, label: true|false}; pairs become two of them (chosen is
desirable, rejected is not).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tunelab.config import DataConfig
from tunelab.data.dataset import LoadedRecords, load_records, split_records
from tunelab.data.readers import BadRecord
from tunelab.errors import DataError

PAIR_FIELDS = ("prompt", "chosen", "rejected")


@dataclass
class PreferenceData:
    train: list[dict]
    validation: list[dict]
    stats: dict = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)


def build_pairs(cfg: DataConfig, seed: int, objective: str) -> PreferenceData:
    """Read and split preference pairs; raise DataError naming the file, record and missing
    field when the file does not hold them (for example no `rejected`)."""
    loaded = _load(cfg, "preference", objective, "preference pairs with fields prompt, chosen, rejected")
    train, validation, bad = split_records(loaded, cfg, seed)
    return PreferenceData(train, validation, _stats("preference", train, validation, bad), bad)


def build_unpaired(cfg: DataConfig, seed: int, objective: str) -> PreferenceData:
    """KTO's data: unpaired {prompt, completion, label} records, or pairs split into two
    such records each. The validation split keeps its pairs (for reward accuracy)."""
    first = _load(cfg, None, objective, "records with prompt, completion, label (true/false) or prompt, chosen, rejected")
    if first.format == "preference":
        train, validation, bad = split_records(first, cfg, seed)
        return PreferenceData(unpair(train, seed), validation, _stats("preference", train, validation, bad), bad)
    loaded = _load(cfg, "unpaired", objective, "records with prompt, completion, label (true/false)")
    train, validation, bad = split_records(loaded, cfg, seed)
    return PreferenceData(train, [], _stats("unpaired", train, validation, bad), bad)


def unpair(pairs: list[dict], seed: int | None = None) -> list[dict]:
    """Each pair -> a desirable and an undesirable completion of the same prompt; shuffled
    with `seed` (KTO trains in a fixed order, and a pair's two halves should not be neighbours)."""
    out = []
    for p in pairs:
        out.append({"prompt": p["prompt"], "completion": p["chosen"], "label": True})
        out.append({"prompt": p["prompt"], "completion": p["rejected"], "label": False})
    if seed is not None:
        random.Random(seed).shuffle(out)
    return out


def _load(cfg: DataConfig, fmt: str | None, objective: str, expected: str) -> LoadedRecords:
    if not cfg.train:
        raise DataError(f"data.train: no training file given; objective {objective} needs {expected}")
    if fmt is None and cfg.format != "auto":
        fmt = cfg.format
    try:
        loaded = load_records(cfg.train, cfg, fmt)
    except BadRecord as e:
        raise DataError(f"{e}; objective {objective} needs {expected}; rename fields with data.columns, "
                        "or set data.skip_bad: true to skip such records") from None
    if fmt is None and loaded.format not in ("preference", "unpaired"):
        raise DataError(f"{cfg.train}: holds {loaded.format} records; objective {objective} needs {expected}")
    return loaded


def _stats(fmt: str, train: list, validation: list, bad: list) -> dict:
    return {"format": fmt, "train": {"examples": len(train)}, "validation": {"examples": len(validation)},
            "bad_records": len(bad)}
