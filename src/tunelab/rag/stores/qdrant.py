"""A Qdrant store: a vector-database server for stores beyond one machine, or its local mode.

With `url` the chunks live on a Qdrant server (`docker run -p 6333:6333 qdrant/qdrant`); without
one, qdrant-client's local mode keeps them in the store folder (or in memory for `:memory:`),
which runs the same code and suits small stores and tests.

Writes are not one transaction here, so they go in an order that is safe to interrupt: a file's
new chunks first, then the removal of chunks carrying an older hash. Each chunk records how many
chunks its file has, so a file cut off halfway counts as incomplete and the next ingest redoes it.
A second, one-point collection holds the store's version, renewed by every write, so readers
(the BM25 index) learn of a change without scanning the chunks.
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import numpy as np

from tunelab.errors import ConfigError
from tunelab.rag.documents import META_FIELDS, Chunk, chunk_from_row
from tunelab.rag.stores import Condition, Hit, StoreInfo, register

BATCH = 256  # points per upsert request


def point_id(chunk_id: str) -> str:
    """Qdrant wants an unsigned integer or a UUID; chunk ids are 128-bit hex, so they make a UUID."""
    return str(uuid.UUID(hex=chunk_id[:32]))


def qdrant_filter(conditions: list[Condition]):
    """Conditions as a Qdrant filter (all must hold)."""
    from qdrant_client import models

    must, must_not = [], []
    for c in conditions:
        if c.op == "in":
            must.append(models.FieldCondition(key=c.field, match=models.MatchAny(any=list(c.value))))
        elif c.op in ("=", "!="):
            (must if c.op == "=" else must_not).append(
                models.FieldCondition(key=c.field, match=models.MatchValue(value=c.value)))
        else:
            bound = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}[c.op]
            must.append(models.FieldCondition(key=c.field, range=models.Range(**{bound: c.value})))
    return models.Filter(must=must or None, must_not=must_not or None) if conditions else None


class QdrantStore:
    """A Qdrant collection of chunks, the payload holding each chunk's text and metadata."""

    def __init__(self, path: Path, info: StoreInfo):
        from qdrant_client import QdrantClient, models

        self.info, self.models = info, models
        try:
            if info.url:
                self.client = QdrantClient(url=info.url, timeout=30)
            elif str(path) == ":memory:":
                self.client = QdrantClient(location=":memory:")
            else:
                self.client = QdrantClient(path=str(Path(path) / "qdrant"))
        except RuntimeError as e:  # local mode: one process per folder
            raise ConfigError(f"{path}: {e}; close the other process using this store first") from None
        self.name = info.collection
        self.meta = f"{info.collection}-meta"  # one point whose payload is the store's version, new on each write
        if not self.client.collection_exists(self.meta):
            self.client.create_collection(self.meta, vectors_config=models.VectorParams(
                size=1, distance=models.Distance.DOT))
        if not self.client.collection_exists(self.name):
            self.client.create_collection(self.name, vectors_config=models.VectorParams(
                size=info.dim, distance=models.Distance.COSINE))
            for key, schema in (("source", models.PayloadSchemaType.KEYWORD),
                                ("page", models.PayloadSchemaType.INTEGER)):
                if info.url:  # local mode filters in Python and has no payload indexes
                    self.client.create_payload_index(self.name, key, field_schema=schema)

    def write(self, chunks: dict[str, list[Chunk]]) -> None:
        points = [self.models.PointStruct(id=point_id(c.id), vector=np.asarray(c.vector, dtype=np.float32).tolist(),
                                          payload={f: getattr(c, f) for f in META_FIELDS})
                  for cs in chunks.values() for c in cs]
        for start in range(0, len(points), BATCH):
            self.client.upsert(self.name, points=points[start:start + BATCH], wait=True)
        for source, cs in chunks.items():  # then the old chunks of these files, now replaced
            stale = [self.models.FieldCondition(key="source", match=self.models.MatchValue(value=source))]
            keep = [self.models.FieldCondition(key="doc_hash", match=self.models.MatchValue(value=cs[0].doc_hash))
                    ] if cs else None  # no chunks: the file is gone, remove all of its points
            selector = self.models.FilterSelector(filter=self.models.Filter(must=stale, must_not=keep))
            self.client.delete(self.name, points_selector=selector, wait=True)
        self.client.upsert(self.meta, points=[self.models.PointStruct(id=0, vector=[1.0], payload={
            "version": uuid.uuid4().hex})], wait=True)

    def _payloads(self, fields: list[str] | bool = True, with_vectors: bool = False):
        offset = None
        while True:
            points, offset = self.client.scroll(self.name, limit=1024, offset=offset, with_payload=fields,
                                                with_vectors=with_vectors)
            yield from points
            if offset is None:
                return

    def manifest(self) -> dict[str, tuple[str, int, int]]:
        counts, expected = Counter(), {}
        for p in self._payloads(["source", "doc_hash", "n_chunks"]):
            key = (p.payload["source"], p.payload["doc_hash"])
            counts[key] += 1
            expected[key] = p.payload["n_chunks"]
        by_source: dict[str, list[tuple[str, int, int]]] = {}
        for (source, h), n in counts.items():
            by_source.setdefault(source, []).append((h, n, expected[source, h]))
        # chunks under two hashes: a replace was cut off; an impossible expected count marks it unfinished
        return {s: v[0] if len(v) == 1 else ("", sum(n for _, n, _ in v), -1) for s, v in by_source.items()}

    def count(self) -> int:
        return self.client.count(self.name, exact=True).count

    def version(self) -> str:
        points = self.client.retrieve(self.meta, ids=[0], with_payload=True)
        return points[0].payload["version"] if points else "empty"

    def chunks(self) -> list[Chunk]:
        return [chunk_from_row(p.payload) for p in self._payloads()]

    def get(self, ids: list[str]) -> list[Chunk]:
        if not ids:
            return []
        points = self.client.retrieve(self.name, ids=[point_id(i) for i in ids], with_payload=True, with_vectors=True)
        found = {p.payload["id"]: chunk_from_row(p.payload, np.asarray(p.vector, dtype=np.float32)) for p in points}
        return [found[i] for i in ids if i in found]

    def search(self, vector: np.ndarray, k: int, where: list[Condition] | None = None) -> list[Hit]:
        points = self.client.query_points(self.name, query=np.asarray(vector, dtype=np.float32).tolist(),
                                          query_filter=qdrant_filter(where or []), limit=k, with_payload=True).points
        return [Hit(chunk_from_row(p.payload), float(p.score)) for p in points]

    def close(self) -> None:
        self.client.close()


register("qdrant", QdrantStore)
