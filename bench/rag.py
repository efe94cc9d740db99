"""RAG quality and speed, each speed figure against a baseline measured in the same run.

(a) xquad_en: its 120 passages indexed with tunelab's defaults (packaged all-MiniLM-L6-v2, 600/100-char
    recursive chunks), its 612 questions asked of dense, BM25 and hybrid retrieval:
    hit@k, recall@k, MRR@10, nDCG@10 side by side (hybrid by its default convex fusion, and by
    reciprocal rank fusion). Then grounded answers from the default
    model for the first --answers questions (hybrid): exact match, F1, faithfulness.
(b) ingest throughput, embedding included: `tunelab.rag.index` of --ingest-chunks chunks of
    wikitext-2 text into a new LanceDB store, against sentence-transformers' `encode` alone on the
    same chunks (the floor: what embedding costs without reading, splitting or storing).
(c) query latency at 100,000 chunks: a store of 100,000 real text chunks (tinyshakespeare and
    wikitext-2 windows) with synthetic unit vectors (embedding 100,000 chunks takes about 25 minutes
    here, and exact search costs the same whatever the vectors are), written through the store's
    own write path. 200 xquad questions, each embedded and searched end to end (top 5 with text):
      - tunelab dense retrieval (`Retriever(mode="dense")`: embed, exact search, fetch the chunks);
      - brute-force numpy, the baseline: embed (on one torch thread, as tunelab does), `X @ q` over a matrix
        in RAM, argpartition, texts from a list;
      - LanceDB's own flat search of the same table, no index;
      - tunelab hybrid retrieval (dense + BM25 over 100,000 chunks, convex fusion).

    python bench/rag.py                  # about 6 minutes on 2 CPU cores
    python bench/rag.py --parts c        # one part
    python bench/rag.py --quick          # 5 answers, 200 ingest chunks, 10,000 chunks x 50 queries: about 1.5 min
    python bench/rag.py --emulate-avx2 --quick   # as an AVX2-only CPU computes (bench/report.py):
                                                 # float32 embedding, 93 s measured

The last line: recall5_dense=<x> recall5_bm25=<x> recall5_hybrid=<x> ingest_chunks_per_s=<x>
query_p95_ms_100k=<x> (tunelab dense, query embedding included) p95_ratio_vs_numpy=<x>; with --quick
query_p95_ms_100k is measured at --chunks (10,000).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from report import header, save

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
XQUAD = DATA / "xquad_en" / "dev.jsonl"
FULL = {"answers": 50, "ingest_chunks": 2000, "chunks": 100_000, "queries": 200}
QUICK = {"answers": 5, "ingest_chunks": 200, "chunks": 10_000, "queries": 50}  # the same comparisons, smaller


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values) * 1000, q))


def part_a(work: Path, n_answers: int) -> dict:
    from tunelab.rag import RetrievalConfig, index
    from tunelab.rag.eval import answer_metrics, evaluate, read_qa

    store = work / "xquad"
    t = time.perf_counter()
    report = index([XQUAD], store, field="context")
    print(f"(a) indexed {report.indexed} file, {report.store_chunks} chunks of 120 passages in "
          f"{time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    result = evaluate(XQUAD, store)
    print(f"    612 questions x 3 modes in {time.perf_counter() - t:.1f} s\n")
    rank_fusion = evaluate(XQUAD, store, modes=("hybrid",), retrieval=RetrievalConfig(fusion="rrf"))
    rows = {**result["retrieval"], "hybrid, rank fusion (--fusion rrf)": rank_fusion["retrieval"]["hybrid"]}
    print("| mode | " + " | ".join(k for k in result["retrieval"]["dense"] if "@" in k) + " |")
    print("|---" * (1 + sum("@" in k for k in result["retrieval"]["dense"])) + "|")
    for mode, m in rows.items():
        print(f"| {mode} | " + " | ".join(f"{v:.4f}" for k, v in m.items() if "@" in k) + " |")
    figures = {f"recall5_{m}": result["retrieval"][m]["recall@5"] for m in ("dense", "bm25", "hybrid")}
    if n_answers:
        from tunelab.eval.judge import LocalJudge
        from tunelab.infer.load import load_engine
        from tunelab.rag import RagConfig, RagPipeline

        engine = load_engine(None, backend="transformers", max_batch_size=8)  # the judge below reads its model
        pipeline = RagPipeline(store, engine, RagConfig(retrieval=RetrievalConfig(mode="hybrid", k=3),
                                                        decoding={"max_new_tokens": 64}))
        questions = read_qa(XQUAD, n_answers)
        t = time.perf_counter()
        answers = pipeline.ask_many([q.question for q in questions])
        seconds = time.perf_counter() - t
        judge = LocalJudge(engine.model, engine.tokenizer, max_new_tokens=4)  # the answering model, as its own judge
        m = answer_metrics(answers, questions, judge)
        print(f"\n(a) answers, default model, hybrid top 3, {n_answers} questions in {seconds:.0f} s: "
              + "  ".join(f"{k}={v}" for k, v in m.items()), flush=True)
        pipeline.close()
        engine.close()
    return figures


def _wikitext_chunks(n: int, size: int = 400) -> list[str]:
    text = (DATA / "wikitext2" / "valid.txt").read_text(encoding="utf-8")
    text = " ".join(text.split())
    chunks = [text[i:i + size] for i in range(0, len(text) - size, size)]
    return (chunks * (n // len(chunks) + 1))[:n]


def part_b(work: Path, n: int) -> dict:
    from tunelab.rag import Embedder, SplitConfig, index

    texts = _wikitext_chunks(n)
    folder = work / "ingest-docs"
    folder.mkdir()
    for i in range(0, n, 50):  # 50 chunks per file, each chunk a paragraph the splitter keeps whole
        (folder / f"doc{i // 50:04d}.txt").write_text("\n\n".join(texts[i:i + 50]), encoding="utf-8")
    embedder = Embedder()
    embedder.embed(texts[:64])  # warm up
    t = time.perf_counter()
    embedder.model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True)
    encode_s = time.perf_counter() - t
    report = index([folder], work / "ingest-store", embedder=embedder, split=SplitConfig(size=450, overlap=0))
    rate, floor = report.chunks / report.seconds, n / encode_s
    print(f"\n(b) ingest: {report.chunks} chunks from {report.indexed} files in {report.seconds:.1f} s "
          f"({report.embed_seconds:.1f} s embedding) = {rate:.1f} chunks/s; sentence-transformers encode alone "
          f"{floor:.1f} chunks/s; ratio {rate / floor:.2f}", flush=True)
    t = time.perf_counter()
    again = index([folder], work / "ingest-store", embedder=embedder)
    print(f"    re-index of the same files: {again.indexed} indexed, {again.unchanged} unchanged, "
          f"{time.perf_counter() - t:.2f} s", flush=True)
    return {"ingest_chunks_per_s": rate, "ingest_ratio_vs_encode": rate / floor}


def _corpus(n: int) -> list[str]:
    shakespeare = " ".join((DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8").split())
    wiki = " ".join((DATA / "wikitext2" / "valid.txt").read_text(encoding="utf-8").split())
    windows = [s[i:i + 300] for s in (shakespeare, wiki) for i in range(0, len(s) - 300, 150)]
    return (windows * (n // len(windows) + 1))[:n]


def part_c(work: Path, n: int, n_queries: int) -> dict:
    import torch

    from tunelab.rag import Embedder, RetrievalConfig, Retriever
    from tunelab.rag.documents import Chunk
    from tunelab.rag.embed import one_thread
    from tunelab.rag.stores import StoreInfo, open_store
    from tunelab.rag.stores.lance import LanceStore

    texts = _corpus(n)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store_dir = work / "store-100k"
    store = open_store(store_dir, StoreInfo())
    t = time.perf_counter()
    per_file = 100
    for start in range(0, n, 10_000):  # 100 chunks per synthetic file, 100 files per commit
        batch = {}
        for f in range(start, min(start + 10_000, n), per_file):
            source = f"/synthetic/doc{f // per_file:05d}.txt"
            batch[source] = [Chunk(text=texts[i], source=source, doc_hash=f"h{f}", start=(i - f) * 300,
                                   end=(i - f) * 300 + 300, n_chunks=per_file, vector=vectors[i])
                             for i in range(f, min(f + per_file, n))]
        store.write(batch)
    store.optimize()
    print(f"\n(c) wrote {store.count()} chunks in {time.perf_counter() - t:.1f} s", flush=True)
    questions = [json.loads(line)["question"] for line in XQUAD.read_text().splitlines()[:n_queries]]
    embedder = Embedder()

    def timed(fn) -> list[float]:
        fn(questions[0])  # warm up (loads the in-memory matrix, the BM25 index)
        out = []
        for q in questions:
            t = time.perf_counter()
            fn(q)
            out.append(time.perf_counter() - t)
        return out

    retriever = Retriever(store_dir, RetrievalConfig(mode="dense", k=5), embedder=embedder)
    t = time.perf_counter()
    retriever.retrieve(questions[0])
    first = time.perf_counter() - t
    dense = timed(retriever.retrieve)

    matrix, ids_texts = vectors.copy(), list(texts)

    def numpy_search(q):
        with one_thread():  # the same query embedding as tunelab's, so the rows differ only in search
            v = embedder.embed_query(q)
        scores = matrix @ v
        top = np.argpartition(-scores, 5)[:5]
        return [ids_texts[i] for i in top[np.argsort(-scores[top])]]

    brute = timed(numpy_search)
    table = LanceStore(store_dir, StoreInfo()).table

    def lance_flat(q):
        with one_thread():
            v = embedder.embed_query(q)
        return table.search(v).distance_type("cosine").limit(5).select(["id", "text", "_distance"]).to_list()

    flat = timed(lance_flat)
    t = time.perf_counter()
    hybrid_retriever = Retriever(store_dir, RetrievalConfig(mode="hybrid", k=5), embedder=embedder)
    hybrid_retriever.retrieve(questions[0])
    bm25_build = time.perf_counter() - t
    hybrid = timed(hybrid_retriever.retrieve)
    rows = [("tunelab dense (exact, in-memory matrix)", dense), ("brute-force numpy (baseline)", brute),
            ("LanceDB flat search, no index", flat), ("tunelab hybrid (dense + BM25, convex fusion)", hybrid)]
    print(f"    {n_queries} queries, query embedding included, torch threads {torch.get_num_threads()}; first dense "
          f"query {first:.2f} s (loads the vectors), first hybrid query {bm25_build:.1f} s (builds BM25)")
    print(f"\n| {n:,} chunks | p50 ms | p95 ms | p95 vs numpy |\n|---|---|---|---|")
    for name, times in rows:
        print(f"| {name} | {_pct(times, 50):.1f} | {_pct(times, 95):.1f} | {_pct(times, 95) / _pct(brute, 95):.2f} |")
    same = sum(numpy_search(q) == [h.chunk.text for h in retriever.retrieve(q)] for q in questions[:20])
    print(f"    tunelab dense and numpy return the same top 5 for {same}/20 queries", flush=True)
    retriever.close()
    hybrid_retriever.close()
    return {"query_p95_ms_100k": _pct(dense, 95), "p95_ratio_vs_numpy": _pct(dense, 95) / _pct(brute, 95),
            "query_p50_ms_100k": statistics.median(dense) * 1000}


def main() -> None:
    header()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="abc")
    parser.add_argument("--answers", type=int, help="questions answered by the model in part a (default 50; "
                        "--quick 5)")
    parser.add_argument("--ingest-chunks", type=int, help="default 2,000; --quick 200")
    parser.add_argument("--chunks", type=int, help="store size in part c (default 100,000; --quick 10,000)")
    parser.add_argument("--queries", type=int, help="default 200; --quick 50")
    parser.add_argument("--quick", action="store_true", help="every part at the --quick sizes above (minutes)")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:  # given options win over the mode's sizes
            setattr(args, key, value)
    if not XQUAD.is_file():
        sys.exit(f"{XQUAD} is missing: this benchmark needs ../shared/data beside the project")
    work = Path(tempfile.mkdtemp(prefix="tunelab-rag-bench-"))
    figures: dict = {}
    try:
        if "a" in args.parts:
            figures.update(part_a(work, args.answers))
        if "b" in args.parts:
            figures.update(part_b(work, args.ingest_chunks))
        if "c" in args.parts:
            figures.update(part_c(work, args.chunks, args.queries))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    keys = ["recall5_dense", "recall5_bm25", "recall5_hybrid", "ingest_chunks_per_s", "query_p95_ms_100k",
            "p95_ratio_vs_numpy"]
    sizes = {k: getattr(args, k) for k in FULL}
    details = {"sizes": sizes, **{k: v for k, v in figures.items() if k not in keys}}
    smaller = any(sizes[k] < FULL[k] for k in FULL)  # any part below the full sizes
    save("rag", {**{k: figures[k] for k in keys if k in figures}, "details": details}, quick=args.quick or smaller)
    print(" ".join(f"{k}={figures[k]:.4g}" if isinstance(figures[k], float) else f"{k}={figures[k]}"
                   for k in keys if k in figures))


if __name__ == "__main__":
    main()
