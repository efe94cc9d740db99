"""The default store: LanceDB, embedded in the store folder, persistent, no server.

Writes: one `merge_insert` per batch of files, so the new chunks of every file in the batch
and the removal of their old ones are one commit; a crash leaves the previous version.

Search: LanceDB's own scan reads and decodes every vector on each query (60-150 ms at 100,000
chunks on 2 cores), so without a filter the store keeps its rows in memory, the vectors as one
matrix, and scores them all with a single matrix product: exact, and ~10 ms at 100,000 chunks.
With a filter, LanceDB prefilters on its columns and scores only what passes. An ANN index
(`create_index`) takes over for stores too large to hold in memory.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from tunelab.rag.documents import META_FIELDS, Chunk, chunk_from_row
from tunelab.rag.stores import Condition, Hit, StoreInfo, register

TABLE = "chunks"
IN_MEMORY_LIMIT = 2_000_000  # rows; beyond this, build an ANN index (about 3 GB of 384-d vectors)


def _quote(value) -> str:
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def sql(conditions: list[Condition]) -> str | None:
    """Conditions as a LanceDB (DataFusion SQL) predicate."""
    parts = []
    for c in conditions:
        if c.op == "in":
            parts.append(f"{c.field} IN ({', '.join(_quote(v) for v in c.value)})")
        elif c.op == "!=":  # SQL's <> is never true for NULL; a chunk with no page is not page 2
            parts.append(f"({c.field} IS NULL OR {c.field} <> {_quote(c.value)})")
        else:
            parts.append(f"{c.field} {c.op} {_quote(c.value)}")
    return " AND ".join(parts) or None


class LanceStore:
    """A LanceDB table `chunks` in the store folder."""

    def __init__(self, path: Path, info: StoreInfo):
        import lancedb
        import pyarrow as pa

        self.info = info
        from datetime import timedelta

        # read_consistency_interval 0: every read sees the latest commit, also one made by another ingest
        self.db = lancedb.connect(str(path), read_consistency_interval=timedelta(0))
        self.schema = pa.schema([
            pa.field("id", pa.string()), pa.field("source", pa.string()), pa.field("doc_hash", pa.string()),
            pa.field("page", pa.int32()), pa.field("headings", pa.string()), pa.field("start", pa.int64()),
            pa.field("end", pa.int64()), pa.field("n_chunks", pa.int32()), pa.field("text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), info.dim)),
        ])
        self.table = self.db.create_table(TABLE, schema=self.schema, exist_ok=True)
        self._memory = None  # (version, rows, vectors, positions) for exact search in memory
        self._exact_at: tuple[int, bool] | None = None  # (version, whether search runs in memory)

    # ------------------------------------------------------------ writing

    def write(self, chunks: dict[str, list[Chunk]]) -> None:
        import pyarrow as pa

        if not chunks:
            return
        rows = [{**{f: getattr(c, f) for f in META_FIELDS}, "vector": c.vector} for cs in chunks.values() for c in cs]
        data = pa.Table.from_pylist(rows, schema=self.schema)
        sources = ", ".join(_quote(s) for s in chunks)
        (self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
         .when_not_matched_by_source_delete(f"source IN ({sources})").execute(data))

    def optimize(self) -> None:
        """Compact small commits and drop versions older than an hour (after an ingest)."""
        from datetime import timedelta

        self.table.optimize(cleanup_older_than=timedelta(hours=1))  # readers of older versions keep working

    def create_index(self, partitions: int | None = None) -> None:
        """An IVF_FLAT index on the vectors, for stores too large to search in memory (recall about 0.95)."""
        from lancedb.index import IvfFlat

        rows = self.count()
        self.table.create_index("vector", config=IvfFlat(distance_type="cosine",
                                                         num_partitions=partitions or max(1, int(rows ** 0.5))),
                                replace=True)

    # ------------------------------------------------------------ reading

    def _scan(self, columns: list[str], where: str | None = None):
        query = self.table.search()
        if where:
            query = query.where(where)
        return query.select(columns).limit(None).to_arrow()

    def manifest(self) -> dict[str, tuple[str, int, int]]:
        table = self._scan(["source", "doc_hash", "n_chunks"])
        counts = Counter(zip(table.column("source").to_pylist(), table.column("doc_hash").to_pylist()))
        expected = dict(zip(zip(table.column("source").to_pylist(), table.column("doc_hash").to_pylist()),
                            table.column("n_chunks").to_pylist()))
        return {source: (h, n, expected[source, h]) for (source, h), n in counts.items()}

    def count(self) -> int:
        return self.table.count_rows()

    def version(self) -> str:
        return str(self.table.version)

    def chunks(self) -> list[Chunk]:
        table = self._scan(list(META_FIELDS))
        return [chunk_from_row(row) for row in table.to_pylist()]

    def get(self, ids: list[str]) -> list[Chunk]:
        if not ids:
            return []
        if self._exact():  # the rows are in memory already: no scan of the table for a handful of ids
            _, rows, matrix, positions = self._in_memory()
            found = [positions[i] for i in ids if i in positions]
            return [chunk_from_row(row, matrix[p]) for p, row in zip(found, rows.take(found).to_pylist())]
        table = self._scan(list(META_FIELDS) + ["vector"], f"id IN ({', '.join(_quote(i) for i in ids)})")
        by_id = {row["id"]: chunk_from_row(row, np.asarray(row["vector"], dtype=np.float32))
                 for row in table.to_pylist()}
        return [by_id[i] for i in ids if i in by_id]

    def _exact(self) -> bool:
        """Whether searches run exactly in memory: no ANN index, and few enough rows to hold (per version)."""
        version = self.table.version
        if self._exact_at is None or self._exact_at[0] != version:
            self._exact_at = (version, not self.table.list_indices() and self.count() <= IN_MEMORY_LIMIT)
        return self._exact_at[1]

    def search(self, vector: np.ndarray, k: int, where: list[Condition] | None = None) -> list[Hit]:
        if where or not self._exact():
            return self._search_lance(vector, k, sql(where or []))
        _, rows, matrix, _ = self._in_memory()
        if not len(matrix):
            return []
        scores = matrix @ np.asarray(vector, dtype=np.float32)  # BLAS on all cores: ~8 ms at 100,000 x 384
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(chunk_from_row(row), float(scores[i])) for i, row in zip(top, rows.take(top).to_pylist())]

    def _search_lance(self, vector: np.ndarray, k: int, where: str | None) -> list[Hit]:
        query = self.table.search(np.asarray(vector, dtype=np.float32)).distance_type("cosine")
        if where:
            query = query.where(where, prefilter=True)
        rows = query.limit(k).select(list(META_FIELDS) + ["_distance"]).to_list()
        return [Hit(chunk_from_row(r), 1.0 - float(r["_distance"])) for r in rows]

    def _in_memory(self):
        """(version, the rows without vectors as an Arrow table, their vectors as one (n, dim) matrix,
        {id: row position}), read once and again whenever the table has a new version."""
        version = self.table.version
        if self._memory is None or self._memory[0] != version:
            table = self._scan(list(META_FIELDS) + ["vector"])
            vectors = table.column("vector").combine_chunks().flatten().to_numpy()
            ids = table.column("id").to_pylist()
            self._memory = (version, table.drop_columns(["vector"]).combine_chunks(),
                            np.array(vectors, dtype=np.float32).reshape(-1, self.info.dim),
                            {i: p for p, i in enumerate(ids)})
        return self._memory

    def close(self) -> None:
        self._memory = None


register("lance", LanceStore)
