"""BM25 over a store's chunks, through bm25s (Lucene's scoring, English stopwords, Porter stems).

bm25s has no incremental update, so the index is rebuilt after each ingest (about 4 s per
100,000 chunks) and saved in the store folder with the store version it was built from; a
reader that finds another version rebuilds it. The folder is swapped in with renames, so a
crash leaves the old index or the new one.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from tunelab.rag.documents import Chunk
from tunelab.rag.stores import Condition, Hit, Store, matches

FOLDER = "bm25"


@functools.cache
def _stemmer():
    from nltk.stem import PorterStemmer

    stem = functools.lru_cache(maxsize=200_000)(PorterStemmer().stem)
    return lambda words: [stem(w) for w in words]


def tokenize(texts: list[str]):
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it sets DEBUG on import and logs each index build
    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False)


class BM25Index:
    """A bm25s retriever and the chunks it indexes, in the same order."""

    def __init__(self, retriever, chunks: list[Chunk], version: str):
        self.retriever, self.chunks, self.version = retriever, chunks, version

    @classmethod
    def build(cls, chunks: list[Chunk], version: str) -> BM25Index:
        import bm25s

        retriever = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
        if chunks:
            retriever.index(tokenize([c.text for c in chunks]), show_progress=False)
        return cls(retriever, chunks, version)

    def save(self, store_dir: Path) -> None:
        final, tmp, old = store_dir / FOLDER, store_dir / f".{FOLDER}.new", store_dir / f".{FOLDER}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if self.chunks:
            self.retriever.save(str(tmp))
        meta = {"version": self.version, "ids": [c.id for c in self.chunks]}
        (tmp / "chunks.json").write_text(json.dumps(meta), encoding="utf-8")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, store_dir: Path, store: Store) -> BM25Index:
        """The saved index when it matches the store's version, else a fresh one (saved for next time)."""
        import bm25s

        folder, version = store_dir / FOLDER, store.version()
        try:
            meta = json.loads((folder / "chunks.json").read_text(encoding="utf-8"))
            if meta["version"] == version:
                by_id = {c.id: c for c in store.chunks()}
                chunks = [by_id[i] for i in meta["ids"]]
                retriever = bm25s.BM25.load(str(folder), mmap=True) if chunks else bm25s.BM25()
                return cls(retriever, chunks, version)
        except (OSError, KeyError, ValueError):
            pass  # missing, stale or damaged: rebuild below
        index = cls.build(store.chunks(), version)
        index.save(store_dir)
        return index

    def search(self, query: str, k: int, where: list[Condition] | None = None) -> list[Hit]:
        """The k best chunks by BM25 score (only chunks sharing a term with the query)."""
        if not self.chunks:
            return []
        mask = None
        if where:
            mask = np.array([matches(where, c) for c in self.chunks], dtype=float)
            if not mask.any():
                return []
        ids, scores = self.retriever.retrieve(tokenize([query]), k=min(k, len(self.chunks)), weight_mask=mask,
                                              show_progress=False, n_threads=1)
        return [Hit(self.chunks[int(i)], float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]
