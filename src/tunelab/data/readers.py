"""Read records from JSONL, JSON, CSV, Parquet files and `datasets` folders.

Every record carries where it came from (file and line, or row), so a bad record can be
reported precisely. Readers stream: a large file is never loaded whole just to be checked.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import DataError


@dataclass
class Record:
    data: dict[str, Any]
    where: str  # "file.jsonl:12" or "file.parquet row 7": used in every error about this record


class BadRecord(DataError):
    """One record is unusable; with skip_bad it is counted instead of stopping the run."""


FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "txt"}


def read_records(path: str | Path, max_record_bytes: int = 10_000_000, skip_bad: bool = False,
                 bad: list[str] | None = None) -> Iterator[Record]:
    """Yield the records of `path`.

    Args:
        max_record_bytes: a longer line/record is bad (a guard against broken or hostile files).
        skip_bad: skip bad records (appending "where: why" to `bad`) instead of raising.
    Raises:
        DataError: the file is missing, empty or unreadable, or a record is bad and skip_bad is off.
    """
    path = Path(path)
    if path.is_dir():
        yield from _read_datasets_folder(path)
        return
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}'; use .jsonl, .json, .csv, .parquet or .txt")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    reader = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet, "txt": _txt}[kind]
    count = 0
    for item in reader(path, max_record_bytes):
        if isinstance(item, BadRecord):
            if not skip_bad:
                raise item
            if bad is not None:
                bad.append(str(item))
            continue
        count += 1
        yield item
    if count == 0 and not (bad and skip_bad):
        raise DataError(f"{path}: no records found")


def _decode(raw: bytes, where: str, whole_file: bool = False) -> str | BadRecord:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if whole_file:  # a byte offset alone is hard to find in an editor: name the line too
            line = raw.count(b"\n", 0, e.start) + 1
            where = f"{where}:{line}"
        return BadRecord(f"{where}: bytes are not valid UTF-8 (at byte {e.start}); re-save the file as UTF-8")


def _jsonl(path: Path, limit: int) -> Iterator[Record | BadRecord]:
    with open(path, "rb") as f:
        for n, raw in enumerate(_bounded_lines(f, limit), 1):
            where = f"{path}:{n}"
            if raw is None:
                yield BadRecord(f"{where}: line is longer than {limit:,} bytes (data.max_record_bytes); "
                                "is this really one JSON record per line?")
                continue
            text = _decode(raw, where)
            if isinstance(text, BadRecord):
                yield text
                continue
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield BadRecord(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one JSON object")
                continue
            if not isinstance(obj, dict):
                yield BadRecord(f"{where}: expected a JSON object {{...}}, got {type(obj).__name__}")
                continue
            yield Record(obj, where)


def _bounded_lines(f: io.BufferedReader, limit: int) -> Iterator[bytes | None]:
    """Lines of a binary file; a line longer than `limit` yields None and is skipped in chunks."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # drain the rest without holding it
                line = f.readline(1 << 20)
            yield None
            continue
        yield line


def _json(path: Path, limit: int) -> Iterator[Record | BadRecord]:
    if path.stat().st_size > 2 * 1024**3:
        raise DataError(f"{path}: a .json file this large cannot be read at once; convert it to .jsonl")
    text = _decode(path.read_bytes(), str(path), whole_file=True)
    if isinstance(text, BadRecord):
        raise DataError(str(text))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(obj, dict):  # {"data": [...]} or a single record
        lists = [v for v in obj.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        obj = lists[0] if len(lists) == 1 else [obj]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(obj).__name__}")
    for i, item in enumerate(obj):
        where = f"{path} item {i}"
        if not isinstance(item, dict):
            yield BadRecord(f"{where}: expected a JSON object, got {type(item).__name__}")
        elif len(json.dumps(item)) > limit:
            yield BadRecord(f"{where}: record is longer than {limit:,} bytes (data.max_record_bytes)")
        else:
            yield Record(item, where)


def _csv(path: Path, limit: int) -> Iterator[Record | BadRecord]:
    csv.field_size_limit(limit)
    # surrogateescape keeps reading past invalid bytes, so the row holding them is reported
    # with its own line number (a decode error would only name the buffered chunk).
    with open(path, encoding="utf-8", newline="", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames or []
        except csv.Error as e:
            raise DataError(f"{path}:1: the header cannot be read ({e})") from None
        if _INVALID_UTF8.search(",".join(header)):
            raise DataError(f"{path}:1: the header has bytes that are not valid UTF-8; re-save the file as UTF-8")
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # DictReader.line_num is not updated yet when its reader raises
                yield BadRecord(f"{path}:{reader.reader.line_num}: {e}; raise data.max_record_bytes if the field "
                                "is meant to be that long")
                continue
            where = f"{path}:{reader.line_num}"
            if None in row or any(v is None for v in row.values()):
                yield BadRecord(f"{where}: the row's number of cells differs from the header's "
                                f"{len(header)} ({', '.join(header)})")
            elif any(_INVALID_UTF8.search(v) for v in row.values()):
                yield BadRecord(f"{where}: bytes are not valid UTF-8; re-save the file as UTF-8")
            else:
                yield Record(dict(row), where)


_INVALID_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape turns undecodable bytes into


def _parquet(path: Path, limit: int) -> Iterator[Record | BadRecord]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    row = 0
    for batch in table.iter_batches(batch_size=1024):
        for item in batch.to_pylist():
            yield Record(item, f"{path} row {row}")
            row += 1


def _txt(path: Path, limit: int) -> Iterator[Record | BadRecord]:
    """A plain-text file is one document (continued pretraining splits it into blocks)."""
    if path.stat().st_size > limit:
        raise DataError(f"{path}: text file is larger than data.max_record_bytes ({limit:,}); raise it or split the file")
    text = _decode(path.read_bytes(), str(path), whole_file=True)
    if isinstance(text, BadRecord):
        raise DataError(str(text))
    yield Record({"text": text}, f"{path}")


def _read_datasets_folder(path: Path) -> Iterator[Record]:
    """A folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict: its 'train' split)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise DataError(f"{path}: not a `datasets` folder written by save_to_disk ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    yield from records_from_dataset(ds, str(path))


def records_from_dataset(ds: Any, name: str = "dataset") -> Iterator[Record]:
    """Records from an in-memory `datasets.Dataset` (the Python API accepts one directly)."""
    for i, item in enumerate(ds):
        yield Record(dict(item), f"{name} row {i}")
