"""`tunelab rag index`: files -> documents -> chunks -> vectors -> store, and the BM25 index.

Re-running is cheap and safe. Each file is known by its content hash: an unchanged file is
skipped, a changed one has its chunks replaced in the same commit that adds the new ones, and
a file the store holds only in part (a crash cut the write) is written again. Files go to the
store in batches, each batch one write, so a crash loses at most the batch being embedded.
A file that cannot be read is reported and skipped; chunks already in the store stay.
"""

from __future__ import annotations

import fcntl
import hashlib
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tunelab.config.options import Options, opt
from tunelab.errors import ConfigError, DataError
from tunelab.rag.bm25 import BM25Index
from tunelab.rag.documents import Chunk
from tunelab.rag.embed import DEFAULT_EMBEDDER, Embedder
from tunelab.rag.loaders import Unreadable, find_files, load
from tunelab.rag.split import SplitConfig, Splitter, load_tokenizer
from tunelab.rag.stores import BACKENDS as STORE_BACKENDS
from tunelab.rag.stores import StoreInfo, open_store, read_info, store_exists

BATCH_CHUNKS = 2048  # chunks embedded and written per commit


class IndexConfig(Options):
    """How files become a store: the embedder, the splitter, the store backend."""

    embedder: str = opt(DEFAULT_EMBEDDER, "sentence-transformers model (packaged all-minilm-l6-v2, a folder or a Hub "
                        "id); an existing store keeps its own", aka=("embed_model", "embedding_model"))
    split: SplitConfig = opt(factory=SplitConfig, help="how documents become chunks")
    backend: Literal[tuple(STORE_BACKENDS)] | None = opt(
        None, "for a new store: lance (embedded, the default) or qdrant (a server with url, else local mode in the "
        "store folder); an existing store keeps its own", aka=("vector_store",))
    url: str | None = opt(None, "Qdrant server URL, e.g. http://localhost:6333")
    field: str = opt("text", "the text field of JSON/JSONL records (dotted for nested ones)")
    prune: bool = opt(False, "also remove files that are gone from the folders given")
    ann: bool = opt(False, "build an approximate index (IVF_FLAT) for stores beyond a few million chunks; smaller "
                    "stores are searched exactly in memory")


@dataclass
class IndexReport:
    """What an ingest did; `skipped` lists (file, reason)."""

    files: int = 0
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    chunks: int = 0  # chunks embedded and written
    store_chunks: int = 0  # chunks in the store afterwards
    seconds: float = 0.0
    embed_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


@contextmanager
def store_lock(store_dir: Path):
    """One ingest at a time per store: a second one gets a clear error instead of a conflicting commit."""
    store_dir.mkdir(parents=True, exist_ok=True)
    with open(store_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{store_dir}: another tunelab rag index is writing to this store; wait for it") from None
        yield


def index(paths: list[str | Path], store_dir: str | Path, *, embedder: str | Embedder = DEFAULT_EMBEDDER,
          split: SplitConfig | None = None, backend: str | None = None, url: str | None = None, field: str = "text",
          prune: bool = False, ann: bool = False,
          progress: Callable[[str, int, int], None] | None = None) -> IndexReport:
    """Index files and folders into the store at `store_dir` (created if missing).

    Args:
        embedder: a name (`all-minilm-l6-v2`, a folder, a Hub id) or a loaded Embedder. An existing
            store keeps the embedder, split settings and backend it was built with.
        backend: lance (default for a new store) or qdrant; `url` for a Qdrant server.
        field: the text field of JSON/JSONL records (dotted for nested ones).
        prune: also remove the chunks of files that are gone from the folders given.
        ann: (re)build an approximate-nearest-neighbour index (LanceDB IVF_FLAT) for stores too large
            to search exactly in memory; searches then use it.
        progress: called as (stage, done, total) while reading and embedding.
    Returns:
        an IndexReport. Raises DataError for a path that does not exist, ConfigError for
        settings that contradict the existing store.
    """
    started = time.perf_counter()
    store_dir = Path(store_dir)
    try:
        files, skipped = find_files(paths)
    except FileNotFoundError as e:
        raise DataError(f"{e.args[0]}: no such file or folder; nothing was indexed") from None
    report = IndexReport(files=len(files), skipped=[(str(p), why) for p, why in skipped])
    if store_exists(store_dir):  # an existing store keeps its embedder and split settings
        info = read_info(store_dir)
        name = embedder.name if isinstance(embedder, Embedder) else embedder
        if name not in (DEFAULT_EMBEDDER, info.embedder) or (isinstance(embedder, Embedder) and name != info.embedder):
            raise ConfigError(f"--embedder {name}: {store_dir} was built with {info.embedder}; its vectors cannot "
                              "be mixed with another model's. Index into a new --store")
        embedder = embedder if isinstance(embedder, Embedder) else info.embedder
        split = SplitConfig.load(info.split, str(Path(store_dir) / "store.json"))
        backend, url = backend or info.backend, url or info.url
    if ann and backend == "qdrant":
        raise ConfigError("--ann: the Qdrant backend indexes its vectors itself (HNSW); leave --ann out")
    split = (split or SplitConfig()).check()
    model = embedder if isinstance(embedder, Embedder) else Embedder(embedder)
    splitter = Splitter(split, load_tokenizer(split.tokenizer, model) if split.kind == "tokens" else None)
    with store_lock(store_dir):
        store = open_store(store_dir, StoreInfo(backend=backend or "lance", embedder=model.name, dim=model.dim, url=url,
                                                split=split.model_dump()))
        try:
            manifest = store.manifest()
            todo: dict[str, list[Chunk]] = {}
            for i, path in enumerate(files):
                chunks = _read(path, manifest, splitter, field, report)
                if chunks is not None:
                    todo[chunks[0].source if chunks else path.resolve().as_posix()] = chunks
                if progress:
                    progress("reading", i + 1, len(files))
            if prune:
                todo.update(_gone(paths, files, manifest, report))
            _embed_and_write(store, model, todo, report, progress)
            if (report.chunks or report.removed) and hasattr(store, "optimize"):
                store.optimize()
            if ann:
                store.create_index()
            BM25Index.load(store_dir, store)  # rebuilt when the store changed
            report.store_chunks = store.count()
        finally:
            store.close()
    report.seconds = time.perf_counter() - started
    return report


def _read(path: Path, manifest: dict, splitter: Splitter, field: str, report: IndexReport) -> list[Chunk] | None:
    """The file's chunks, or None when it is unchanged or unreadable."""
    try:
        data = path.read_bytes()
    except OSError as e:
        report.skipped.append((str(path), f"cannot be read ({e.strerror})"))
        return None
    digest = hashlib.sha256(data).hexdigest()
    source = path.resolve().as_posix()
    held = manifest.get(source)
    if held is not None and held[0] == digest and held[1] == held[2]:
        report.unchanged += 1
        return None
    try:
        docs = load(path, data, field)
    except Unreadable as e:
        report.skipped.append((str(path), str(e) + ("; its chunks from an earlier ingest are kept" if held else "")))
        return None
    chunks = [c for doc in docs for c in splitter.split(doc, digest)]
    if not chunks:
        report.skipped.append((str(path), "no text to index"))
        return None
    for c in chunks:
        c.n_chunks = len(chunks)
    report.indexed += 1
    return chunks


def _gone(paths, files: list[Path], manifest: dict, report: IndexReport) -> dict[str, list[Chunk]]:
    """Sources under the given folders that no longer exist: replaced by nothing."""
    roots = [Path(p).resolve().as_posix() + "/" for p in paths if Path(p).is_dir()]
    present = {f.resolve().as_posix() for f in files}
    gone = {s: [] for s in manifest if s not in present and any(s.startswith(r) for r in roots)}
    report.removed += len(gone)
    return gone


def _embed_and_write(store, model: Embedder, todo: dict[str, list[Chunk]], report: IndexReport, progress) -> None:
    total, done = sum(len(cs) for cs in todo.values()), 0
    batch: dict[str, list[Chunk]] = {}

    def flush():
        nonlocal done
        chunks = [c for cs in batch.values() for c in cs]
        t = time.perf_counter()
        seen = done

        def tick(k: int) -> None:
            nonlocal seen
            seen += k
            progress("embedding", seen, total)

        vectors = model.embed([c.text for c in chunks], progress=tick if progress else None)
        report.embed_seconds += time.perf_counter() - t
        for c, v in zip(chunks, vectors):
            c.vector = v
        store.write(batch)  # one commit: these files' new chunks in, their old ones out
        done += len(chunks)
        report.chunks += len(chunks)
        batch.clear()

    for source, chunks in todo.items():
        batch[source] = chunks
        if sum(len(cs) for cs in batch.values()) >= BATCH_CHUNKS:
            flush()
    if batch:
        flush()
