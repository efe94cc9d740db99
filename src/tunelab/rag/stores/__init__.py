"""Vector stores: one small protocol, one file per backend.

- `lance` (default): LanceDB, embedded in the store folder, no server. Every write is one
  versioned commit, so a crash leaves the last whole commit.
- `qdrant`: Qdrant through qdrant-client: a server (`url`) for stores beyond one machine, or
  its local mode (a folder, or `:memory:`), which runs the same code.

Each backend file registers its store class with one `register(...)` line at its bottom;
files are discovered automatically, and import their client library (lancedb,
qdrant_client) only when a store opens.

A store folder holds `store.json` (backend, embedder, dimension, how chunks were split),
the backend's files, and the BM25 index built from the same chunks.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from tunelab.errors import ConfigError, DataError
from tunelab.rag.documents import Chunk

STORE_FILE = "store.json"


@dataclass
class Condition:
    """One metadata test: `field op value`; op is one of = != > >= < <= in."""

    field: str
    op: str
    value: object


FILTER_FIELDS = {"source": str, "page": int, "headings": str, "doc_hash": str}
OPS = ("!=", ">=", "<=", "=", ">", "<", " in ")


def parse_filter(specs: list[str] | None) -> list[Condition]:
    """`["source=guide.md", "page>=2", "source in a.md,b.md"]` -> conditions (all must hold).

    A relative `source` is resolved against the working folder, as sources are stored.
    """
    conditions = []
    for spec in specs or []:
        op = next((o for o in OPS if o in spec), None)
        if op is None:
            raise ConfigError(f"--where {spec!r}: write FIELD=VALUE, FIELD>=VALUE or 'FIELD in A,B' with FIELD one "
                              f"of {', '.join(FILTER_FIELDS)}")
        name, _, raw = (s.strip() for s in spec.partition(op))
        if name not in FILTER_FIELDS:
            raise ConfigError(f"--where {spec!r}: '{name}' is not a chunk field; filter on one of "
                              f"{', '.join(FILTER_FIELDS)}")
        kind = FILTER_FIELDS[name]
        values = [v.strip() for v in raw.split(",")] if op == " in " else [raw]
        if kind is int:
            try:
                values = [int(v) for v in values]
            except ValueError:
                raise ConfigError(f"--where {spec!r}: {name} is a number") from None
        elif op not in ("=", "!=", " in "):
            raise ConfigError(f"--where {spec!r}: {name} is text; compare it with =, != or 'in'")
        if name == "source":
            values = [v if v.startswith("/") else Path(v).resolve().as_posix() for v in values]
        conditions.append(Condition(name, op.strip(), values if op == " in " else values[0]))
    return conditions


def matches(conditions: list[Condition], chunk: Chunk) -> bool:
    """Whether a chunk passes every condition (for retrievers that filter in Python, such as BM25)."""
    for c in conditions:
        value = getattr(chunk, c.field)
        if c.op == "in":
            ok = value in c.value
        elif value is None:
            ok = c.op == "!="
        else:
            ok = {"=": value == c.value, "!=": value != c.value, ">": value > c.value, ">=": value >= c.value,
                  "<": value < c.value, "<=": value <= c.value}[c.op]
        if not ok:
            return False
    return True


@dataclass
class Hit:
    """A retrieved chunk and its score (higher is better): cosine for dense search, else BM25, fused or
    reranker scores. `similarity` is the cosine between question and chunk once known."""

    chunk: Chunk
    score: float
    similarity: float | None = None


@dataclass
class StoreInfo:
    """What `store.json` records: enough to reopen the store and embed queries the same way."""

    backend: str = "lance"
    embedder: str = "all-minilm-l6-v2"
    dim: int = 384
    url: str | None = None  # qdrant: a server; None: local mode in the store folder
    collection: str = "chunks"
    split: dict = field(default_factory=dict)


class Store(Protocol):
    """What every backend provides. Vectors are unit length; scores are cosine similarities."""

    def manifest(self) -> dict[str, tuple[str, int, int]]:
        """source -> (doc_hash, rows stored, rows the file should have)."""

    def write(self, chunks: dict[str, list[Chunk]]) -> None:
        """Make each source's chunks exactly these (an empty list removes the source), crash-safely."""

    def search(self, vector: np.ndarray, k: int, where: list[Condition] | None = None) -> list[Hit]:
        """The k nearest chunks by cosine similarity among those passing `where`."""

    def get(self, ids: list[str]) -> list[Chunk]:
        """These chunks with their vectors, in the order asked (unknown ids are left out)."""

    def chunks(self) -> list[Chunk]:
        """Every chunk, without vectors (for BM25)."""

    def count(self) -> int: ...

    def version(self) -> str:
        """Changes whenever the contents change (the BM25 index records the one it was built from)."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[Path, StoreInfo], Store]  # (store folder, its StoreInfo) -> the opened store


BACKENDS: dict[str, Backend] = {}


def register(name: str, open: Callable[[Path, StoreInfo], Store]) -> None:
    """Add a store backend to the table; called once at the bottom of each backend module."""
    BACKENDS[name] = Backend(name, open)


def store_exists(path: str | Path) -> bool:
    return (Path(path) / STORE_FILE).is_file()


def read_info(path: str | Path) -> StoreInfo:
    file = Path(path) / STORE_FILE
    if not file.is_file():
        raise DataError(f"{path}: no tunelab store here (no {STORE_FILE}); create one with "
                        f"tunelab rag index FILES... --store {path}")
    try:
        return StoreInfo(**json.loads(file.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"{file}: not a readable store description ({e}); the store folder may be damaged, "
                        "re-create it with tunelab rag index") from None


def write_info(path: str | Path, info: StoreInfo) -> None:
    """Write store.json atomically (a crash leaves the old file or the new one)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".store-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(asdict(info), f, indent=2)
    os.replace(tmp, path / STORE_FILE)


def open_store(path: str | Path, info: StoreInfo | None = None) -> Store:
    """Open the store in `path` (created when `info` is given and none exists there)."""
    path = Path(path)
    if info is None or store_exists(path):
        existing = read_info(path)
        if info is not None and (existing.embedder, existing.dim) != (info.embedder, info.dim):
            raise ConfigError(f"{path}: the store was built with embedder {existing.embedder} ({existing.dim} dims), "
                              f"not {info.embedder}; index into a new --store, or use the same embedder")
        if info is not None and info.backend != existing.backend:
            raise ConfigError(f"{path}: the store uses backend {existing.backend}, not {info.backend}")
        info = existing
    elif info.backend not in BACKENDS:
        raise ConfigError(f"--backend: '{info.backend}' is not a store backend; choose one of {', '.join(BACKENDS)}")
    if info.backend not in BACKENDS:
        raise DataError(f"{path / STORE_FILE}: backend '{info.backend}' is not one of {', '.join(BACKENDS)}; "
                        "the store folder may be damaged, re-create it with tunelab rag index")
    store = BACKENDS[info.backend].open(path, info)
    if not store_exists(path):
        write_info(path, info)  # last: a folder with store.json always holds an openable store
    return store


for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
