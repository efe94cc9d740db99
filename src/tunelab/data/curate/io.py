"""Records in from the readers (their errors name file and line), JSON Lines out, atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from tunelab.data.readers import read_records
from tunelab.errors import ConfigError


def records(path: str | Path) -> Iterator[tuple[dict, str]]:
    """(record, "file:line") of one file, streamed."""
    for r in read_records(path):
        yield r.data, r.where


def side_file(out: Path, what: str) -> Path:
    """OUT.jsonl -> OUT.<what>.jsonl: where dropped records, clusters or reports go."""
    return out.with_name(f"{out.name.removesuffix('.jsonl')}.{what}.jsonl")


def check_output(out: Path, inputs: list[Path], force: bool) -> None:
    """Refuse to write over an input, or over an earlier output without --force."""
    resolved = out.resolve()
    if any(resolved == Path(p).resolve() for p in inputs):
        raise ConfigError(f"{out}: is also an input; write the result to another file (the input is kept as is)")
    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists; choose another output or add --force to replace it")


class JsonlWriter:
    """Rows written to a temporary file that replaces `path` only when all of them are written."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.count = 0

    def __enter__(self) -> JsonlWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.tmp, "w", encoding="utf-8")
        return self

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.count += 1

    def __exit__(self, kind, value, traceback) -> None:
        self.file.close()
        if kind is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
