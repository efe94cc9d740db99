"""Duplicates across one or several files: exact, near (MinHash with LSH) and, optionally, semantic.

Each record's text (every text field, `fields.all_text`) is normalised (case, punctuation,
spaces) before hashing, so re-cased and re-punctuated copies are exact duplicates. Near
duplicates are pairs whose word n-gram sets have a Jaccard similarity at or above `threshold`,
found by datasketch's LSH and confirmed on the MinHash estimate (Broder 1997; Leskovec et al.,
Mining of Massive Datasets, ch. 3). Semantic duplicates are pairs whose embeddings' cosine is
at or above `semantic_threshold`. Pairs join into clusters (union-find); one record of each
cluster stays, the longest or the first.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from tunelab.config.options import Options, opt
from tunelab.data.curate.fields import all_text
from tunelab.errors import ConfigError


class DedupConfig(Options):
    """How `tunelab data dedup` finds duplicates and which record of a cluster it keeps."""

    exact: bool = opt(True, "remove copies identical after normalising case, punctuation and spaces")
    near: bool = opt(True, "remove near-duplicates (MinHash LSH over word n-grams)")
    ngram: int = opt(1, "words per shingle of the near-duplicate check (1: word sets)", ge=1)
    threshold: float = opt(0.7, "Jaccard similarity of shingle sets at which two records are near-duplicates",
                           gt=0, le=1)
    num_perm: int = opt(128, "MinHash permutations: more estimate the similarity closer, slower", ge=16)
    semantic: bool = opt(False, "also remove records whose embeddings are this close (packaged MiniLM embedder)")
    semantic_threshold: float = opt(0.95, "cosine similarity at which two records are semantic duplicates",
                                    gt=0, le=1)
    embedder: str = opt("all-minilm-l6-v2", "sentence-transformers model of the semantic check")
    keep: Literal["longest", "first"] = opt("longest", "the record each cluster keeps: the longest text, or the "
                                            "first in file order")
    seed: int = opt(1, "MinHash seed", ge=0)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, one space between words."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def shingles(text: str, n: int) -> set[bytes]:
    words = normalise(text).split()
    if len(words) <= n:
        return {" ".join(words).encode()} if words else {b""}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


class UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Duplicates:
    """Which records stay, and the clusters found (each a list of record indices, the kept one first)."""

    keep: list[bool]
    clusters: list[list[int]]
    reasons: dict[int, str] = field(default_factory=dict)  # dropped index -> exact, near or semantic

    @property
    def removed(self) -> int:
        return self.keep.count(False)


def find_duplicates(texts: list[str], cfg: DedupConfig, embed=None, sources: list[int] | None = None) -> Duplicates:
    """Cluster `texts` (one per record, in file order) by the checks `cfg` asks for.

    sources: each text's file number; a cluster keeps a record of its earliest file (list the
        validation file first and its records stay, their near-copies leave training), then
        the longest or first there. embed: texts -> vectors, instead of the packaged embedder.
    """
    from datasketch import MinHash, MinHashLSH

    n = len(texts)
    groups = UnionFind(n)
    how: dict[tuple[int, int], str] = {}

    def join(a: int, b: int, kind: str) -> None:
        if groups.find(a) != groups.find(b):
            how[(min(a, b), max(a, b))] = kind
            groups.union(a, b)

    if cfg.exact:
        first: dict[bytes, int] = {}
        for i, text in enumerate(texts):
            key = hashlib.blake2b(normalise(text).encode(), digest_size=16).digest()
            if key in first:
                join(first[key], i, "exact")
            else:
                first[key] = i
    if cfg.near and n > 1:
        # bulk hashing: one vectorised pass per record instead of one update per shingle
        hashes = MinHash.bulk((shingles(t, cfg.ngram) for t in texts), num_perm=cfg.num_perm, seed=cfg.seed)
        lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        for i, h in enumerate(hashes):
            for j in lsh.query(h):
                if groups.find(j) != groups.find(i) and h.jaccard(hashes[j]) >= cfg.threshold:
                    join(j, i, "near")
            lsh.insert(i, h)
    if cfg.semantic and n > 1:
        vectors = np.asarray(embed(texts) if embed is not None else _embed(texts, cfg.embedder), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
        for start in range(0, n, 1024):  # a block of rows at a time: n x n would not fit for large n
            block = vectors[start:start + 1024] @ vectors.T
            for a, b in zip(*np.nonzero(block >= cfg.semantic_threshold)):
                if start + a < b:
                    join(start + int(a), int(b), "semantic")

    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(groups.find(i), []).append(i)
    keep, clusters, reasons = [True] * n, [], {}
    for group in members.values():
        if len(group) == 1:
            continue
        rank = (lambda i: -len(texts[i])) if cfg.keep == "longest" else (lambda i: i)
        kept = min(group, key=lambda i: (sources[i] if sources else 0, rank(i), i))
        clusters.append([kept] + [i for i in group if i != kept])
        for i in group:
            if i != kept:
                keep[i] = False
                reasons[i] = _reason(i, group, how)
    return Duplicates(keep, clusters, reasons)


def _reason(i: int, group: list[int], how: dict[tuple[int, int], str]) -> str:
    kinds = {k for (a, b), k in how.items() if i in (a, b)} or {k for (a, b), k in how.items() if a in group}
    return "exact" if kinds == {"exact"} else "semantic" if kinds == {"semantic"} else "near"


def _embed(texts: list[str], name: str) -> np.ndarray:
    from tunelab.rag.embed import Embedder

    return Embedder(name).embed(texts)


def record_texts(records: list[dict]) -> list[str]:
    return [all_text(r) for r in records]


def dedup_files(sources: list[str | Path], output: str | Path, cfg: DedupConfig, force: bool = False) -> dict:
    """Duplicates removed across `sources` together (a near-copy of a validation record leaves training too:
    a cluster keeps its record from the earliest file given).

    One source: `output` is the file written. Several: `output` is a folder getting a file of each
    source's name. The clusters go to clusters.jsonl beside them, each member with its file:line.
    """
    from tunelab.data.curate.io import JsonlWriter, check_output, records, side_file

    sources = [Path(s) for s in sources]
    output = Path(output)
    many = len(sources) > 1
    if many and len({s.name for s in sources}) < len(sources):
        raise ConfigError(f"{output}: the input files share a name; the output folder would hold one of them only "
                          "(rename one)")
    targets = [output / s.name for s in sources] if many else [output]
    for target in targets:
        check_output(target, sources, force)
    rows = [(data, where, k) for k, source in enumerate(sources) for data, where in records(source)]
    found = find_duplicates(record_texts([r[0] for r in rows]), cfg, sources=[r[2] for r in rows])
    for k, target in enumerate(targets):
        with JsonlWriter(target) as out:
            for i, (data, _, source) in enumerate(rows):
                if source == k and found.keep[i]:
                    out.write(data)
    clusters_path = output / "clusters.jsonl" if many else side_file(output, "clusters")
    with JsonlWriter(clusters_path) as out:
        for cluster in found.clusters:
            out.write({"kept": rows[cluster[0]][1], "removed": [{"where": rows[i][1], "why": found.reasons[i]}
                                                                for i in cluster[1:]]})
    by_reason: dict[str, int] = {}
    for why in found.reasons.values():
        by_reason[why] = by_reason.get(why, 0) + 1
    return {"records": len(rows), "kept": len(rows) - found.removed, "removed": by_reason,
            "clusters": len(found.clusters), "outputs": [str(t) for t in targets], "clusters_file": str(clusters_path)}
