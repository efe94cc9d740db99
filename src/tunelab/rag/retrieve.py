"""Find the chunks that answer a question: dense, BM25 or hybrid, then optional rerank and MMR.

The steps, each optional but the first:
1. candidate lists: dense (cosine over the store's vectors) and/or BM25, for the question and
   for LLM rewrites of it (multi-query) or an LLM-written answer passage (HyDE, Gao et al. 2022);
2. fusion of several lists: by default a convex combination of scores, each list min-max normalised
   (dense lists weigh `alpha`, BM25 lists 1 - alpha; Bruch et al. 2023 found it beats rank fusion),
   or reciprocal rank fusion (Cormack et al. 2009): score = sum 1/(rrf_k + rank). On xquad_en the
   convex combination beat both single retrievers where rank fusion fell between them (bench/README.md);
3. a score threshold on the cosine similarity between the question and each chunk, the one score
   that means the same in every mode (BM25 and fused scores have no fixed scale);
4. reranking by a cross-encoder, which reads question and chunk together;
5. maximal marginal relevance (Carbonell & Goldstein 1998), trading relevance for diversity.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import model_validator

from tunelab.config.options import Options, fail, opt
from tunelab.errors import ConfigError
from tunelab.rag.bm25 import BM25Index
from tunelab.rag.embed import Embedder, one_thread
from tunelab.rag.stores import Condition, Hit, open_store, parse_filter, read_info

Complete = Callable[[list[str]], list[str]]  # prompts -> the LLM's answers, for multi-query and HyDE

MULTI_QUERY_PROMPT = ("Write {n} different search queries that would find passages answering the question below. "
                      "Write one query per line, with no numbering and nothing else.\n\nQuestion: {question}")
HYDE_PROMPT = "Write a short factual passage that answers the question below.\n\nQuestion: {question}"


class RetrievalConfig(Options):
    """How chunks are found. `k` chunks come back, fewer when `min_score` drops some."""

    mode: Literal["dense", "bm25", "hybrid"] = opt("hybrid", "dense, bm25, or hybrid (both, fused)",
                                                   aka=("search_type", "retriever"))
    k: int = opt(5, "chunks to retrieve", ge=1, flags=("-k",), aka=("top_k", "similarity_top_k"))
    min_score: float | None = opt(None, "least cosine similarity of a chunk to the question; below it the chunk is "
                                  "dropped (and with none left, ask refuses)", ge=-1, le=1,
                                  aka=("score_threshold", "similarity_cutoff"))
    candidates: int = opt(50, "chunks each retriever proposes before fusion, reranking and MMR", ge=1,
                          aka=("fetch_k",))
    fusion: Literal["convex", "rrf"] = opt("convex", "hybrid: convex (normalised scores, weighted by alpha) or rrf "
                                           "(reciprocal rank fusion)")
    alpha: float = opt(0.5, "convex fusion: the dense weight (BM25 gets 1 - alpha)", ge=0, le=1)
    rrf_k: int = opt(60, "rrf: the rank offset", ge=1)
    multi_query: int = opt(0, "also search N rewrites of the question by the model", ge=0)
    hyde: bool = opt(False, "also search with a passage the model writes (HyDE)")
    rerank: str | None = opt(None, "a cross-encoder (folder or Hub id) that reorders the candidates")
    mmr: bool = opt(False, "diversify the chunks (maximal marginal relevance)")
    mmr_lambda: float = opt(0.7, "MMR: 1 is relevance only, 0 diversity only", ge=0, le=1)
    where: list[str] = opt([], "metadata filter, e.g. source=docs/guide.md, page>=2, 'source in a.md,b.md' "
                           "(repeatable; all must hold)", aka=("filters",))

    @model_validator(mode="after")
    def _enough_candidates(self) -> RetrievalConfig:
        if self.candidates < self.k and "candidates" in self.model_fields_set:
            fail("candidates", f"each list proposes {self.candidates} chunks, fewer than the k={self.k} asked for; "
                 "raise candidates or lower k")
        self.candidates = max(self.candidates, self.k)  # each list proposes at least the k asked for
        parse_filter(self.where)
        return self


def rrf(lists: list[list[Hit]], k: int = 60) -> list[Hit]:
    """Reciprocal rank fusion of ranked lists, by chunk id; the fused score is sum 1/(k + rank)."""
    scores: dict[str, float] = {}
    chunks = {}
    for hits in lists:
        for rank, hit in enumerate(hits, start=1):
            scores[hit.chunk.id] = scores.get(hit.chunk.id, 0.0) + 1.0 / (k + rank)
            chunks.setdefault(hit.chunk.id, hit.chunk)
    return [Hit(chunks[i], s) for i, s in sorted(scores.items(), key=lambda kv: -kv[1])]


def convex(dense: list[list[Hit]], sparse: list[list[Hit]], alpha: float = 0.5) -> list[Hit]:
    """Weighted sum of min-max normalised scores: dense lists share `alpha`, sparse lists 1 - alpha.

    A chunk missing from a list scores that list's minimum (0 after normalisation).
    """
    scores: dict[str, float] = {}
    chunks = {}
    groups = [(lists, weight / len(lists)) for lists, weight in ((dense, alpha), (sparse, 1 - alpha)) if lists]
    for lists, weight in groups:
        for hits in lists:
            if not hits:
                continue
            values = np.array([h.score for h in hits])
            low, span = values.min(), values.max() - values.min()
            for hit, value in zip(hits, values):
                normalised = (value - low) / span if span > 0 else 1.0
                scores[hit.chunk.id] = scores.get(hit.chunk.id, 0.0) + weight * normalised
                chunks.setdefault(hit.chunk.id, hit.chunk)
    return [Hit(chunks[i], s) for i, s in sorted(scores.items(), key=lambda kv: -kv[1])]


def mmr(query: np.ndarray, vectors: np.ndarray, k: int, lam: float) -> list[int]:
    """Indices of k rows picked by maximal marginal relevance: lam * sim(q, d) - (1 - lam) * max sim(d, chosen)."""
    relevance = vectors @ query
    similarity = vectors @ vectors.T
    chosen: list[int] = []
    left = list(range(len(vectors)))
    while left and len(chosen) < k:
        penalty = similarity[left][:, chosen].max(axis=1) if chosen else np.zeros(len(left))
        best = int(np.argmax(lam * relevance[left] - (1 - lam) * penalty))
        chosen.append(left.pop(best))
    return chosen


class Retriever:
    """Retrieval over one store folder.

    Args:
        store_dir: a folder `tunelab rag index` wrote.
        llm: turns prompts into answers; needed for multi-query and HyDE only.
        embedder: a loaded Embedder to share (it must be the store's).
    """

    def __init__(self, store_dir: str | Path, cfg: RetrievalConfig | None = None, llm: Complete | None = None,
                 embedder: Embedder | None = None):
        self.cfg = (cfg or RetrievalConfig()).check()
        self.dir = Path(store_dir)
        info = read_info(self.dir)
        if (self.cfg.multi_query or self.cfg.hyde) and llm is None:
            raise ConfigError("retrieval.multi_query / hyde write queries with a language model; give one "
                              "(--model) or turn them off")
        self.store = open_store(self.dir)
        self.embedder = embedder if embedder is not None and embedder.name == info.embedder else Embedder(info.embedder)
        self.llm = llm
        self._bm25: BM25Index | None = None
        self.reranker = self._cross_encoder(self.cfg.rerank) if self.cfg.rerank else None

    @staticmethod
    def _cross_encoder(name: str):
        from sentence_transformers import CrossEncoder

        from tunelab.models.hub import embedder_folder

        return CrossEncoder(str(embedder_folder(name, "retrieval.rerank")), device="cpu")

    @property
    def bm25(self) -> BM25Index:
        if self._bm25 is None or self._bm25.version != self.store.version():
            self._bm25 = BM25Index.load(self.dir, self.store)
        return self._bm25

    def expansions(self, question: str) -> tuple[list[str], str | None]:
        """(LLM rewrites of the question, an LLM-written answer passage or None)."""
        prompts = []
        if self.cfg.multi_query:
            prompts.append(MULTI_QUERY_PROMPT.format(n=self.cfg.multi_query, question=question))
        if self.cfg.hyde:
            prompts.append(HYDE_PROMPT.format(question=question))
        if not prompts:
            return [], None
        answers = self.llm(prompts)
        rewrites = []
        if self.cfg.multi_query:
            for line in answers[0].splitlines():
                line = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", line).strip().strip('"')
                if line and line.lower() != question.lower() and line not in rewrites:
                    rewrites.append(line)
        return rewrites[:self.cfg.multi_query], (answers[-1].strip() or None) if self.cfg.hyde else None

    def retrieve(self, question: str, where: list[Condition] | None = None) -> list[Hit]:
        """The best chunks for `question`, best first; `where` adds to the config's filters."""
        cfg = self.cfg
        where = parse_filter(cfg.where) + list(where or [])
        rewrites, passage = self.expansions(question)
        queries = [question] + rewrites
        with one_thread():
            vectors = self.embedder.embed(queries + ([passage] if passage else []))
            dense, sparse = [], []
            for query, vector in zip(queries, vectors):
                if cfg.mode in ("dense", "hybrid"):
                    dense.append(self.store.search(vector, cfg.candidates, where))
                if cfg.mode in ("bm25", "hybrid"):
                    sparse.append(self.bm25.search(query, cfg.candidates, where))
            if passage:
                dense.append(self.store.search(vectors[-1], cfg.candidates, where))
        if len(dense) + len(sparse) == 1:
            hits = (dense or sparse)[0]
        elif cfg.fusion == "rrf":
            hits = rrf(dense + sparse, cfg.rrf_k)
        else:
            hits = convex(dense, sparse, cfg.alpha)
        if cfg.min_score is not None or cfg.mmr:
            hits = self._by_similarity(hits, vectors[0])
        if self.reranker is not None and hits:
            scores = self.reranker.predict([(question, h.chunk.text) for h in hits], show_progress_bar=False)
            hits = [Hit(h.chunk, float(s), h.similarity) for s, h in sorted(zip(scores, hits), key=lambda p: -p[0])]
        if cfg.mmr and hits:
            picked = mmr(vectors[0], np.stack([h.chunk.vector for h in hits]), cfg.k, cfg.mmr_lambda)
            hits = [hits[i] for i in picked]
        return hits[:cfg.k]

    def _by_similarity(self, hits: list[Hit], query: np.ndarray) -> list[Hit]:
        """The hits with their vectors and cosine similarity to the question, those under min_score dropped."""
        chunks = {c.id: c for c in self.store.get([h.chunk.id for h in hits])}
        out = []
        for h in hits:
            chunk = chunks.get(h.chunk.id)
            if chunk is None:
                continue
            similarity = float(chunk.vector @ query)
            if self.cfg.min_score is None or similarity >= self.cfg.min_score:
                out.append(Hit(chunk, h.score, similarity))
        return out

    def close(self) -> None:
        self.store.close()
