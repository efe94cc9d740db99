"""Retrieval-augmented generation over the user's own documents.

    from tunelab.rag import index, RagPipeline, Retriever
    index(["docs/"], "store")                                  # load, split, embed, store; re-runs add only changes
    hits = Retriever("store").retrieve("How do I install it?")   # hybrid dense + BM25 by default
    answer = RagPipeline("store", load_engine()).ask("How do I install it?")

The pieces: `loaders` (files to documents), `split` (documents to chunks), `embed`
(sentence-transformers), `stores/` (LanceDB embedded, Qdrant server), `bm25`, `retrieve`,
`guard` (untrusted text), `pipeline` (grounded answers with citations), `eval`.
"""

from tunelab.rag.embed import Embedder
from tunelab.rag.ingest import IndexReport, index
from tunelab.rag.pipeline import Answer, RagConfig, RagPipeline
from tunelab.rag.retrieve import RetrievalConfig, Retriever
from tunelab.rag.split import SplitConfig
from tunelab.rag.stores import Hit, open_store, parse_filter

__all__ = ["Answer", "Embedder", "Hit", "IndexReport", "RagConfig", "RagPipeline", "RetrievalConfig", "Retriever",
           "SplitConfig", "index", "open_store", "parse_filter"]
