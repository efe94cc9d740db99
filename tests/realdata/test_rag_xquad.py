"""RAG retrieval on real passages: XQuAD (English) with the packaged MiniLM embedder."""

from __future__ import annotations

import pytest

from tunelab.rag.eval import evaluate
from tunelab.rag.ingest import index
from tunelab.rag.split import SplitConfig

pytestmark = pytest.mark.realdata


def test_xquad_dense_bm25_and_hybrid_retrieval(shared_data, tmp_path):
    qa = shared_data / "xquad_en" / "dev.jsonl"
    store = tmp_path / "store"
    report = index([qa], store, embedder="all-minilm-l6-v2", split=SplitConfig(kind="recursive", size=400, overlap=80),
                   field="context")
    assert report.indexed == 1 and not report.skipped and report.store_chunks > 100
    result = evaluate(qa, store, modes=("dense", "bm25", "hybrid"), limit=200)
    metrics = result["retrieval"]
    assert all(m["questions"] == 200 and m["without_gold_in_store"] == 0 for m in metrics.values())
    best_single = max(metrics["dense"]["recall@5"], metrics["bm25"]["recall@5"])
    assert metrics["hybrid"]["recall@5"] >= best_single - 0.01, metrics
    assert metrics["dense"]["hit@10"] > 0.9, metrics
