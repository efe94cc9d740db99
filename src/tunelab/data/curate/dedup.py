"""Duplicates across one or several files: exact, near (MinHash with LSH) and, optionally, semantic.

Each record's text (every text field, `fields.all_text`) is normalised (case, punctuation,
spaces) before hashing, so re-cased and re-punctuated copies are exact duplicates. Near
duplicates are pairs whose word n-gram sets have a Jaccard similarity at or above `threshold`:
datasketch's MinHash signatures, cut into the bands its LSH would use; records sharing a band
key are candidates, confirmed on the MinHash estimate (Broder 1997; Leskovec et al., Mining of
Massive Datasets, ch. 3). Band keys are grouped by sorting, not held in an index, so the same
steps run streamed here (`find_in_stream`) and on a Ray cluster (`on_ray`). Semantic duplicates
are pairs whose embeddings' cosine is at or above `semantic_threshold`. Pairs join into clusters
(union-find); one record of each cluster stays, the longest or the first."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
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


class Signer:
    """A batch of texts -> their exact keys, MinHash signatures, LSH band keys and lengths. Runs in worker
    processes and Ray tasks alike; the bands and rows per band are datasketch's MinHashLSH choice for the
    threshold, so the candidates are the ones its index would return."""

    def __init__(self, cfg: DedupConfig):
        from datasketch.lsh import _optimal_param

        self.cfg = cfg
        self.bands, self.rows = _optimal_param(cfg.threshold, cfg.num_perm, 0.5, 0.5)
        # a band's r values mixed into one 64-bit key (odd multipliers, wrapping sum); a collision only
        # costs a comparison: candidates are confirmed on their signatures
        self.mix = np.random.default_rng(cfg.seed).integers(1, 2**63, size=self.rows, dtype=np.uint64) | np.uint64(1)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        from datasketch import MinHash

        exact = np.frombuffer(b"".join(hashlib.blake2b(normalise(t).encode(), digest_size=16).digest() for t in texts),
                              dtype=np.uint64).reshape(-1, 2)
        out = {"exact": exact, "length": np.array([len(t) for t in texts], dtype=np.int64)}
        if self.cfg.near:
            # bulk hashing: one vectorised pass per record instead of one update per shingle
            hashes = MinHash.bulk((shingles(t, self.cfg.ngram) for t in texts), num_perm=self.cfg.num_perm,
                                  seed=self.cfg.seed)
            sig = np.stack([h.hashvalues for h in hashes]).astype(np.uint64)
            cut = sig[:, :self.bands * self.rows].reshape(len(texts), self.bands, self.rows)
            out["sig"], out["bands"] = sig, (cut * self.mix).sum(axis=2, dtype=np.uint64)
        return out


def _sign(signer: Signer, batch: tuple[list[str], list[int]]) -> tuple[dict[str, np.ndarray], list[int]]:
    return signer(batch[0]), batch[1]


KIND_ORDER = ("exact", "near", "semantic")  # a pair found by several checks is named by the first


def runs(keys: np.ndarray) -> Iterator[np.ndarray]:
    """Positions of equal keys, group by group (groups of two or more; positions ascending in each)."""
    order = np.lexsort(keys.T[::-1]) if keys.ndim == 2 else np.argsort(keys, kind="stable")
    ordered = keys[order]
    same = (ordered[1:] == ordered[:-1]).all(axis=1) if keys.ndim == 2 else ordered[1:] == ordered[:-1]
    edges = np.diff(np.concatenate([[0], same.astype(np.int8), [0]]))  # +1 where a run of equals starts
    for s, e in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) + 1):
        yield np.sort(order[s:e])


def bucket_pairs(ids: Sequence[int], sigs: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Near-duplicate pairs among records sharing an LSH band (ids ascending), on the MinHash estimate of
    their Jaccard similarity. Each is compared with the earlier records that matched none before them, one
    for each group of near-copies: a bucket of k copies costs k comparisons, not k squared."""
    pairs, reps = [], []
    for i, sig in zip(ids, sigs):
        matched = False
        for j, other in reps:
            if np.count_nonzero(sig == other) >= threshold * len(sig):
                pairs.append((int(j), int(i)))
                matched = True
        if not matched:
            reps.append((i, sig))
    return pairs


@dataclass
class Duplicates:
    """The clusters found (each a list of record ids, the kept one first) and why each other member goes."""

    clusters: list[list[int]]
    reasons: dict[int, str] = field(default_factory=dict)  # dropped id -> exact, near or semantic
    records: int = 0

    @property
    def removed(self) -> int:
        return len(self.reasons)


class Clusters:
    """Pairs joined into clusters as they are found (union-find; the result does not depend on their order).
    Memory grows with the records that have a duplicate, not with the corpus."""

    def __init__(self):
        self.parent: dict[int, int] = {}
        self.kind: dict[int, int] = {}  # record -> the first of KIND_ORDER among its pairs

    def find(self, i: int) -> int:
        parent = self.parent
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def add(self, a: int, b: int, kind: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        code = KIND_ORDER.index(kind)
        for i in (a, b):
            self.kind[i] = min(self.kind.get(i, code), code)

    def result(self, rank: Callable[[int], tuple], records: int) -> Duplicates:
        """Each cluster keeps the member of the lowest rank; the others go, each with its reason."""
        members: dict[int, list[int]] = {}
        for i in sorted(self.parent):
            members.setdefault(self.find(i), []).append(i)
        clusters, reasons = [], {}
        for group in members.values():
            kept = min(group, key=rank)
            clusters.append([kept] + [i for i in group if i != kept])
            for i in group:
                if i != kept:
                    reasons[i] = KIND_ORDER[self.kind[i]]
        return Duplicates(clusters, reasons, records)


def find_duplicates(texts: Iterable[str], cfg: DedupConfig, embed=None, sources: Iterable[int] | None = None,
                    workers: int = 1) -> Duplicates:
    """Cluster `texts` (one per record, in file order) by the checks `cfg` asks for; ids are positions.

    sources: each text's file number; a cluster keeps a record of its earliest file (list the
        validation file first and its records stay, their near-copies leave training), then
        the longest or first there. embed: texts -> vectors, instead of the packaged embedder.
    """
    return find_in_stream(zip(texts, itertools.repeat(0) if sources is None else sources), cfg, embed, workers)


def find_in_stream(items: Iterable[tuple[str, int]], cfg: DedupConfig, embed=None, workers: int = 1) -> Duplicates:
    """find_duplicates over (text, source) pairs read once, as they come. workers: processes that hash in
    parallel. Memory: about 130 bytes a record (keys, band keys, length, source); the signatures (and
    embeddings) go to scratch files on disk."""
    import tempfile

    from tunelab.data.curate.parallel import batched, ordered_map

    with tempfile.TemporaryDirectory(prefix="tunelab-dedup-") as scratch:
        sig_path, vec_path = Path(scratch) / "signatures", Path(scratch) / "vectors"
        parts: dict[str, list[np.ndarray]] = {"exact": [], "length": [], "bands": [], "source": []}

        def feed() -> Iterator[tuple[list[str], list[int]]]:  # the semantic check embeds as the texts go by
            with open(vec_path, "wb") as vectors:
                for batch in batched(items, 512):
                    chunk = [t for t, _ in batch]
                    if cfg.semantic:
                        found = embed(chunk) if embed is not None else _embed(chunk, cfg.embedder)
                        v = np.asarray(found, dtype=np.float32)
                        vectors.write((v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12)).tobytes())
                    yield chunk, [s for _, s in batch]

        with open(sig_path, "wb") as signatures:
            for out, batch_sources in ordered_map(_sign, feed(), workers, Signer, cfg):
                for key in ("exact", "length", "bands"):
                    if key in out:
                        parts[key].append(out[key])
                parts["source"].append(np.asarray(batch_sources, dtype=np.int64))
                if "sig" in out:
                    signatures.write(out["sig"].tobytes())
        n = sum(len(p) for p in parts["length"])
        if n == 0:
            return Duplicates([], {}, 0)
        length, source = np.concatenate(parts["length"]), np.concatenate(parts["source"])
        clusters = Clusters()
        if cfg.exact:
            for group in runs(np.concatenate(parts["exact"])):
                for i in group[1:]:
                    clusters.add(int(group[0]), int(i), "exact")
        if cfg.near and n > 1:
            bands = np.concatenate(parts["bands"])
            sig = np.memmap(sig_path, dtype=np.uint64, mode="r", shape=(n, cfg.num_perm))
            for band in range(bands.shape[1]):
                for group in runs(bands[:, band]):
                    for a, b in bucket_pairs(group, sig[group], cfg.threshold):
                        clusters.add(a, b, "near")
        if cfg.semantic and n > 1:
            vectors = np.memmap(vec_path, dtype=np.float32, mode="r").reshape(n, -1)
            for start in range(0, n, 1024):  # a block of rows at a time: n x n would not fit for large n
                block = vectors[start:start + 1024] @ vectors.T
                for a, b in zip(*np.nonzero(block >= cfg.semantic_threshold)):
                    if start + a < b:
                        clusters.add(start + int(a), int(b), "semantic")
    if cfg.keep == "longest":
        return clusters.result(lambda i: (source[i], -length[i], i), n)
    return clusters.result(lambda i: (source[i], i), n)


def _embed(texts: list[str], name: str) -> np.ndarray:
    from tunelab.rag.embed import Embedder

    return Embedder(name).embed(texts)


def dedup_files(sources: list[str | Path], output: str | Path, cfg: DedupConfig, force: bool = False,
                workers: int = 1) -> dict:
    """Duplicates removed across `sources` together (a near-copy of a validation record leaves training too:
    a cluster keeps its record from the earliest file given), streamed: the files are read twice, once to
    hash, once to write what stays.

    One source: `output` is the file written. Several: `output` is a folder getting a file of each
    source's name. The clusters go to clusters.jsonl beside them, each member with its file:line.
    """
    from tunelab.data.curate.io import records

    sources, targets, clusters_path = plan_outputs(sources, output, force)
    texts = ((all_text(data), k) for k, source in enumerate(sources) for data, _ in records(source))
    found = find_in_stream(texts, cfg, workers=workers)
    rows = ((data, where, k) for k, source in enumerate(sources) for data, where in records(source))
    return write_deduplicated(enumerate(rows), found, targets, clusters_path)


def plan_outputs(sources: list[str | Path], output: str | Path, force: bool) -> tuple[list[Path], list[Path], Path]:
    """(the sources, the file written for each, the clusters file), checked before any work."""
    from tunelab.data.curate.io import check_output, side_file

    sources = [Path(s) for s in sources]
    output = Path(output)
    many = len(sources) > 1
    if many and len({s.name for s in sources}) < len(sources):
        raise ConfigError(f"{output}: the input files share a name; the output folder would hold one of them only "
                          "(rename one)")
    targets = [output / s.name for s in sources] if many else [output]
    for target in targets:
        check_output(target, sources, force)
    return sources, targets, (output / "clusters.jsonl" if many else side_file(output, "clusters"))


def write_deduplicated(rows: Iterable[tuple[int, tuple[dict, str, int]]], found: Duplicates, targets: list[Path],
                       clusters_path: Path) -> dict:
    """(id, (record, where, source)) rows in file order: the kept ones into their source's target, then the
    clusters, each member with its file:line."""
    from contextlib import ExitStack

    from tunelab.data.curate.io import JsonlWriter

    members = {i for cluster in found.clusters for i in cluster}
    where_of: dict[int, str] = {}
    total = 0
    with ExitStack() as stack:
        outs = [stack.enter_context(JsonlWriter(t)) for t in targets]
        for i, (data, where, source) in rows:
            total += 1
            if i in members:
                where_of[i] = where
            if i not in found.reasons:
                outs[source].write(data)
        with JsonlWriter(clusters_path) as out:
            for cluster in found.clusters:
                out.write({"kept": where_of[cluster[0]],
                           "removed": [{"where": where_of[i], "why": found.reasons[i]} for i in cluster[1:]]})
    by_reason: dict[str, int] = {}
    for why in found.reasons.values():
        by_reason[why] = by_reason.get(why, 0) + 1
    return {"records": total, "kept": total - found.removed, "removed": by_reason,
            "clusters": len(found.clusters), "outputs": [str(t) for t in targets], "clusters_file": str(clusters_path)}
