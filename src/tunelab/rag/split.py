"""Split documents into chunks: recursively by characters, by Markdown structure, or by tokens.

All three go through semantic-text-splitter, which splits at the largest unit that fits
(sections, paragraphs, sentences, words) and returns each chunk's character offset, so
every chunk keeps its exact span. Markdown documents also give each chunk its heading path.
"""

from __future__ import annotations

import bisect
from typing import Literal

from pydantic import model_validator

from tunelab.config.options import Options, fail, opt
from tunelab.errors import ConfigError
from tunelab.rag.documents import Chunk, Document

class SplitConfig(Options):
    """How documents become chunks. The default embedder reads 256 tokens (about 1,000
    characters of English) and truncates the rest, so keep chunks below that."""

    kind: Literal["auto", "recursive", "markdown", "tokens"] = opt(
        "auto", "auto (markdown for .md/.html/.docx, else recursive), recursive, markdown or tokens", flag="--split",
        aka=("splitter", "text_splitter"))
    size: int | None = opt(None, "characters (600), or tokens for kind tokens (256)", ge=1, flag="--chunk-size",
                           aka=("chunk_size",))
    overlap: int | None = opt(None, "characters (100), or tokens for kind tokens (32)", ge=0,
                              aka=("chunk_overlap",))
    tokenizer: str = opt("embedder", "for kind tokens: embedder (its own) or a model name")

    @model_validator(mode="after")
    def _sizes(self) -> SplitConfig:
        tokens = self.kind == "tokens"
        self.size = self.size or (256 if tokens else 600)
        self.overlap = self.overlap if self.overlap is not None else min(32 if tokens else 100, self.size // 2)
        if self.overlap >= self.size:
            fail("overlap", f"must be below size (got size={self.size}, overlap={self.overlap})")
        return self


class Splitter:
    """Cuts documents by a SplitConfig. `tokenizer` is a `tokenizers.Tokenizer` for kind=tokens."""

    def __init__(self, cfg: SplitConfig, tokenizer=None):
        from semantic_text_splitter import MarkdownSplitter, TextSplitter

        self.cfg = cfg.check()
        if cfg.kind == "tokens":
            if tokenizer is None:
                raise ConfigError("split.kind=tokens needs a tokenizer (split.tokenizer)")
            self.text = TextSplitter.from_huggingface_tokenizer(tokenizer, cfg.size, overlap=cfg.overlap)
            self.markdown = MarkdownSplitter.from_huggingface_tokenizer(tokenizer, cfg.size, overlap=cfg.overlap)
        else:
            self.text = TextSplitter(cfg.size, overlap=cfg.overlap)
            self.markdown = MarkdownSplitter(cfg.size, overlap=cfg.overlap)

    def split(self, doc: Document, doc_hash: str) -> list[Chunk]:
        """The document's chunks, in order, with source, page, heading path and character span."""
        as_markdown = self.cfg.kind == "markdown" or (self.cfg.kind in ("auto", "tokens") and doc.markdown)
        splitter = self.markdown if as_markdown else self.text
        headings = HeadingIndex(doc.text) if doc.markdown else None
        chunks = []
        for start, text in self._merge_short(splitter.chunk_indices(doc.text), doc.text):
            if text.strip():
                chunks.append(Chunk(text=text, source=doc.source, doc_hash=doc_hash, page=doc.page,
                                    headings=headings.path_at(start) if headings else "",
                                    start=start, end=start + len(text)))
        return chunks

    def _merge_short(self, pieces: list[tuple[int, str]], text: str) -> list[tuple[int, str]]:
        """Join a lone heading to the section after it, and a short piece to the next when both fit.

        A heading may push its chunk past `size` by its own length: it belongs with its text.
        """
        if self.cfg.kind == "tokens":
            return pieces
        out: list[tuple[int, str]] = []
        for start, piece in pieces:
            if out:
                prev_start, prev = out[-1]
                gap = text[prev_start + len(prev):start]
                heading = _heading_only(prev)
                if (len(prev) < self.cfg.size // 4 and start >= prev_start + len(prev) and not gap.strip()
                        and not _heading_only(piece)  # a heading starts the next section: it goes forward
                        and start + len(piece) - prev_start <= self.cfg.size + (len(prev) if heading else 0)):
                    out[-1] = (prev_start, text[prev_start:start + len(piece)])
                    continue
            out.append((start, piece))
        return out


def _heading_only(piece: str) -> bool:
    return all(line.lstrip().startswith("#") for line in piece.splitlines() if line.strip())


class HeadingIndex:
    """Where each Markdown heading starts, to name the section any character offset falls in.

    Headings come from markdown-it (CommonMark), so `#` lines inside code blocks are not
    headings and underlined (Setext) headings are.
    """

    def __init__(self, text: str):
        from markdown_it import MarkdownIt

        line_starts = [0]
        for line in text.splitlines(keepends=True):
            line_starts.append(line_starts[-1] + len(line))
        tokens = MarkdownIt("commonmark").parse(text)
        self.starts, self.paths = [], []
        path: list[tuple[int, str]] = []
        for i, tok in enumerate(tokens):
            if tok.type == "heading_open" and tok.map:
                level = int(tok.tag[1])
                path = [p for p in path if p[0] < level] + [(level, tokens[i + 1].content.strip())]
                self.starts.append(line_starts[tok.map[0]])
                self.paths.append(" > ".join(title for _, title in path))

    def path_at(self, offset: int) -> str:
        """The heading path of the section holding `offset` ('' before the first heading)."""
        i = bisect.bisect_right(self.starts, offset) - 1
        return self.paths[i] if i >= 0 else ""


def load_tokenizer(name: str, embedder=None):
    """A `tokenizers.Tokenizer` for split.tokenizer: the embedder's own, or a model's fast tokenizer."""
    if name == "embedder":
        return embedder.tokenizer()
    from tunelab.models import load_tokenizer as load_model_tokenizer
    from tunelab.models import resolve

    backend = load_model_tokenizer(resolve(name)).backend_tokenizer
    tokenizer = type(backend).from_str(backend.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
