"""Classification data: text/label records -> token ids and class ids, with the label set.

Labels may be strings or integers; the label set is the sorted set of training labels
(so the same data always gives the same class ids). data.label_names gives them names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.config import DataConfig
from tunelab.data.dataset import length_stats, load_records, split_records
from tunelab.errors import DataError


@dataclass
class ClassificationData:
    train: list[dict]  # {"input_ids", "labels": class id}
    validation: list[dict]
    labels: list[Any]  # class id -> label as written in the data
    names: list[str]  # class id -> readable name
    texts: dict[str, list[str]]  # split -> raw texts (the probe embeds these)
    stats: dict[str, Any]
    bad: list[str]


def build_classification(cfg: DataConfig, tokenizer, seed: int = 42) -> ClassificationData:
    """Read, split and tokenize text/label records for a classification head."""
    if not cfg.train:
        raise DataError("data.train: no training file given; set data.train to a .jsonl/.json/.csv/.parquet file")
    loaded = load_records(cfg.train, cfg, None if cfg.format == "auto" else cfg.format)
    if loaded.format != "classification":
        raise DataError(f"{cfg.train}: objective classify needs text/label records, found {loaded.format} records; "
                        "map your fields with data.columns (e.g. {sentence: text, sentiment: label})")
    records, validation, bad = split_records(loaded, cfg, seed)
    labels = sorted({r["label"] for r in records}, key=lambda v: (isinstance(v, str), v))
    if len(labels) < 2:
        raise DataError(f"{cfg.train}: only one label ({labels[0]!r}) in the training data; a classifier needs two or more")
    index = {label: i for i, label in enumerate(labels)}
    unseen = sorted({str(r["label"]) for r in validation if r["label"] not in index})
    if unseen:
        raise DataError(f"{cfg.validation or cfg.train}: validation labels {unseen[:5]} never occur in the training "
                        f"data (training labels: {labels[:10]})")
    split = {"train": records, "validation": validation}
    out, stats = {}, {"format": "classification", "labels": len(labels), "bad_records": len(bad)}
    for name, rows in split.items():
        out[name], lengths, truncated = [], [], 0
        for r in rows:
            ids = tokenizer(r["text"], add_special_tokens=True).input_ids
            truncated += len(ids) > cfg.max_length
            ids = ids[:cfg.max_length]
            lengths.append(len(ids))
            out[name].append({"input_ids": ids, "labels": index[r["label"]]})
        stats[name] = length_stats(lengths, truncated, 0, [])
    names = [cfg.label_names.get(str(label), str(label)) for label in labels]
    texts = {name: [r["text"] for r in rows] for name, rows in split.items()}
    return ClassificationData(out["train"], out["validation"], labels, names, texts, stats, bad)
