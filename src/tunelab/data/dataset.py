"""From data files to tokenized train/validation examples, with statistics and a bad-record count."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from tunelab.config import DataConfig
from tunelab.data.formats import detect_format, normalise
from tunelab.data.readers import BadRecord, Record, read_records
from tunelab.data.templates import answer_end_ids, ensure_chat_template
from tunelab.data.tokenize import (
    IGNORE,
    pack,
    tokenize_messages,
    tokenize_seq2seq,
    tokenize_text,
)
from tunelab.errors import DataError


@dataclass
class LoadedRecords:
    format: str
    records: list[dict[str, Any]]
    bad: list[str] = field(default_factory=list)  # "where: why" of each skipped record


def load_records(path: str, cfg: DataConfig, fmt: str | None = None) -> LoadedRecords:
    """Read, detect the format of, and normalise the records of one file."""
    bad: list[str] = []
    raw = read_records(path, cfg.max_record_bytes, cfg.skip_bad, bad)
    if cfg.limit:
        raw = islice(raw, cfg.limit)
    fmt = fmt or (None if cfg.format == "auto" else cfg.format)
    out = []
    for record in raw:
        if cfg.columns:  # the user's field names -> the names a format expects
            record = Record({cfg.columns.get(k, k): v for k, v in record.data.items()}, record.where)
        fmt = fmt or detect_format(record)
        try:
            out.append(normalise(record, fmt))
        except BadRecord as e:
            if not cfg.skip_bad:
                raise
            bad.append(str(e))
    if not out:
        raise DataError(f"{path}: no usable records ({len(bad)} bad; first: {bad[0] if bad else 'none'})")
    return LoadedRecords(fmt, out, bad)


def add_system_prompt(record: dict, system: str | None) -> dict:
    if system and "messages" in record and record["messages"][0]["role"] != "system":
        return {**record, "messages": [{"role": "system", "content": system}] + record["messages"]}
    return record


@dataclass
class SFTData:
    train: list[dict]
    validation: list[dict]
    format: str
    stats: dict[str, Any]
    bad: list[str]


def build_sft(cfg: DataConfig, tokenizer, seed: int = 42, seq2seq: bool = False) -> SFTData:
    """Read, split and tokenize supervised data (instruction, chat, prompt-completion, text, classification).

    With `seq2seq` (encoder-decoder models) each example is a source/target pair instead
    of one sequence with the answer labelled.
    """
    if not cfg.train:
        raise DataError("data.train: no training file given; set data.train to a .jsonl/.json/.csv/.parquet file")
    ensure_chat_template(tokenizer)
    loaded = load_records(cfg.train, cfg)
    if loaded.format in ("preference", "unpaired"):
        raise DataError(f"{cfg.train}: preference records ({loaded.format}) train with objective rm, dpo, kto, orpo "
                        "or simpo, not sft")
    if seq2seq and loaded.format == "text":
        raise DataError(f"{cfg.train}: plain text has no input/output pairs for an encoder-decoder model; "
                        "use instruction, prompt_completion or chat records")
    records, validation, bad = split_records(loaded, cfg, seed)
    end_ids = answer_end_ids(tokenizer)
    train, train_stats = _tokenize_all(records, tokenizer, cfg, end_ids, seq2seq)
    val, val_stats = _tokenize_all(validation, tokenizer, cfg, end_ids, seq2seq)
    if not train:
        raise DataError(f"{cfg.train}: no example keeps a learned token within data.max_length={cfg.max_length}")
    stats = {"format": loaded.format, "train": train_stats, "validation": val_stats, "bad_records": len(bad)}
    if cfg.packing and not seq2seq:
        train = pack(train, cfg.max_length)
        stats["train"]["packed_rows"] = len(train)
    return SFTData(train, val, loaded.format, stats, bad)


def split_records(loaded: LoadedRecords, cfg: DataConfig, seed: int) -> tuple[list[dict], list[dict], list[str]]:
    """(train, validation, bad): the validation file if given, else a seeded `val_split` of train."""
    records, validation, bad = loaded.records, [], list(loaded.bad)
    if cfg.validation:
        val = load_records(cfg.validation, cfg, loaded.format)
        validation, bad = val.records, bad + val.bad
    elif cfg.val_split > 0 and len(records) > 1:
        order = list(range(len(records)))
        random.Random(seed).shuffle(order)
        n_val = max(1, int(round(len(records) * cfg.val_split)))
        validation = [records[i] for i in order[:n_val]]
        records = [records[i] for i in order[n_val:]]
    return records, validation, bad


def _tokenize_all(records: list[dict], tokenizer, cfg: DataConfig, end_ids: list[int],
                  seq2seq: bool = False) -> tuple[list[dict], dict]:
    examples, lengths, truncated, dropped = [], [], 0, 0
    for record in records:
        record = add_system_prompt(as_chat(record, cfg), cfg.system_prompt)
        if seq2seq:
            tok = tokenize_seq2seq([m for m in record["messages"] if m["role"] != "system"], tokenizer, cfg.max_length)
        elif "messages" in record:
            tok = tokenize_messages(record["messages"], tokenizer, cfg.max_length, cfg.train_on, end_ids)
        else:
            tok = tokenize_text(record["text"], tokenizer, cfg.max_length)
        truncated += tok.truncated
        if all(label == IGNORE for label in tok.labels):
            dropped += 1  # the answer was cut off entirely: nothing to learn
            continue
        lengths.append(len(tok.input_ids))
        examples.append({"input_ids": tok.input_ids, "labels": tok.labels})
    return examples, length_stats(lengths, truncated, dropped, examples)


def as_chat(record: dict, cfg: DataConfig) -> dict:
    """Generative classification: the text (through data.prompt_template) is the question,
    the label's name (data.label_names, else the label itself) the answer."""
    if "label" in record:
        return {"messages": [{"role": "user", "content": cfg.prompt_template.format(text=record["text"])},
                             {"role": "assistant", "content": label_name(record["label"], cfg)}]}
    return record


def label_name(label: Any, cfg: DataConfig) -> str:
    return cfg.label_names.get(str(label), str(label))


def length_stats(lengths: list[int], truncated: int, dropped: int, examples: list[dict]) -> dict:
    """Token-length statistics and the truncation report of one split."""
    if not lengths:
        return {"examples": 0, "truncated": truncated, "dropped": dropped}
    s = sorted(lengths)
    pct = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return {
        "examples": len(s), "tokens": sum(s),
        "learned_tokens": sum(sum(t != IGNORE for t in e["labels"]) for e in examples),
        "min": s[0], "mean": round(sum(s) / len(s), 1), "p50": pct(0.5), "p95": pct(0.95), "max": s[-1],
        "truncated": truncated, "dropped": dropped,
    }


def describe(stats: dict) -> str:
    """One readable paragraph of data statistics for the terminal."""
    lines = [f"format: {stats['format']}  bad records skipped: {stats['bad_records']}"]
    for split in ("train", "validation"):
        s = stats.get(split) or {}
        if s.get("examples"):
            lines.append(f"{split}: {s['examples']} examples, {s['tokens']:,} tokens ({s['learned_tokens']:,} learned); "
                         f"length min/p50/p95/max {s['min']}/{s['p50']}/{s['p95']}/{s['max']}; "
                         f"truncated {s['truncated']}, dropped {s['dropped']}")
    return "\n".join(lines)


__all__ = ["Record", "SFTData", "build_sft", "describe", "load_records"]
