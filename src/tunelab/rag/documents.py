"""The two records RAG passes around: a loaded document, and a chunk of one with its vector."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Document:
    """Text read from one file, or one part of it (a PDF page, a JSONL record).

    `page` is the PDF page (1-based), the JSONL line or JSON array item (1-based), else None.
    `markdown` says the text carries Markdown headings (Markdown files, and HTML converted to it).
    """

    text: str
    source: str
    page: int | None = None
    markdown: bool = False


@dataclass
class Chunk:
    """A piece of a document, with where it came from: enough to cite it and to find it again.

    `start`/`end` are character offsets into the document's text (its page or record), so
    `document.text[start:end] == text`. `doc_hash` is the source file's content hash: every
    chunk of a file carries it, and a file whose hash is in the store is already indexed.
    """

    text: str
    source: str
    doc_hash: str
    page: int | None = None
    headings: str = ""  # the heading path, e.g. "Install > Linux"
    start: int = 0
    end: int = 0
    n_chunks: int = 1  # chunks of the whole file: a file is complete in a store when all of them are there
    id: str = ""
    vector: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        if not self.id:
            key = f"{self.source}\0{self.doc_hash}\0{self.page}\0{self.start}\0{self.end}"
            self.id = hashlib.sha256(key.encode()).hexdigest()[:32]

    def where(self) -> str:
        """A short human locator: 'guide.md, Install > Linux' or 'paper.pdf, page 3'."""
        name = self.source.rsplit("/", 1)[-1]
        parts = [name]
        if self.page is not None:
            parts.append(f"{'page' if name.lower().endswith('.pdf') else 'record'} {self.page}")
        if self.headings:
            parts.append(self.headings)
        return ", ".join(parts)


META_FIELDS = ("id", "source", "doc_hash", "page", "headings", "start", "end", "n_chunks", "text")


def chunk_from_row(row: dict, vector: np.ndarray | None = None) -> Chunk:
    """A Chunk from a store row (a mapping with META_FIELDS)."""
    return Chunk(text=row["text"], source=row["source"], doc_hash=row["doc_hash"], page=row.get("page"),
                 headings=row.get("headings") or "", start=int(row["start"]), end=int(row["end"]),
                 n_chunks=int(row.get("n_chunks") or 1), id=row["id"], vector=vector)
