"""RAG retrieval: the two stores agree, filters, BM25, fusion, MMR, thresholds, reranking, query expansion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunelab.errors import ConfigError
from tunelab.rag import ingest
from tunelab.rag.bm25 import BM25Index
from tunelab.rag.documents import Chunk
from tunelab.rag.retrieve import HYDE_PROMPT, RetrievalConfig, Retriever, convex, mmr, rrf
from tunelab.rag.split import SplitConfig
from tunelab.rag.stores import Condition, Hit, matches, open_store, parse_filter

TOPICS = {
    "solar.txt": "Solar panels turn sunlight into electricity. Rooftop arrays feed power into the grid.",
    "wind.txt": "Wind turbines convert moving air into electricity. Offshore farms use larger blades.",
    "music.txt": "The xylophone is a percussion instrument with wooden bars struck by mallets.",
    "zebra.txt": "Zebras are striped animals that graze on the African savanna in large herds.",
    "bread.md": "# Baking\n\nBread rises because yeast ferments sugar and releases gas.\n\n## Crust\n\n"
                "A hot oven makes a crisp crust.",
    "rivers.txt": "Rivers carry sediment to the sea and shape valleys over millions of years.",
}
RECORDS = ["Record one is about the history of printing presses.",
           "Record two covers the chemistry of ocean water and salt.",
           "Record three explains how glaciers move downhill slowly.",
           "Record four describes migratory birds crossing continents.",
           "Record five lists tools used by medieval carpenters.",
           "Record six compares steam engines with diesel engines."]


@pytest.fixture(scope="module")
def embedder(tiny_embedder_dir):
    from tunelab.rag.embed import Embedder

    return Embedder(str(tiny_embedder_dir))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for name, text in TOPICS.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "records.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in RECORDS), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def lance_dir(tmp_path_factory, corpus, embedder) -> Path:
    store_dir = tmp_path_factory.mktemp("lance") / "store"
    ingest.index([corpus], store_dir, embedder=embedder, split=SplitConfig(kind="recursive", size=60, overlap=10))
    return store_dir


@pytest.fixture(scope="module")
def qdrant_dir(tmp_path_factory, corpus, embedder) -> Path:
    pytest.importorskip("qdrant_client")
    store_dir = tmp_path_factory.mktemp("qdrant") / "store"
    ingest.index([corpus], store_dir, embedder=embedder, split=SplitConfig(kind="recursive", size=60, overlap=10),
                 backend="qdrant")
    return store_dir


def _src(corpus: Path, name: str) -> str:
    return (corpus / name).resolve().as_posix()


QUERIES = ["How do solar panels make power?", "striped animals on the savanna", "glaciers and birds",
           "percussion instrument"]


# ---------------------------------------------------------------- stores


def test_lance_and_qdrant_give_the_same_dense_results(lance_dir, qdrant_dir, corpus, embedder):
    lance, qdrant = open_store(lance_dir), open_store(qdrant_dir)
    try:
        assert lance.count() == qdrant.count() > len(TOPICS) + len(RECORDS)
        assert {c.id for c in lance.chunks()} == {c.id for c in qdrant.chunks()}
        filters = [[], [f"source={_src(corpus, 'records.jsonl')}"], ["page>=3"],
                   [f"source in {_src(corpus, 'solar.txt')},{_src(corpus, 'wind.txt')}"], ["page in 2,4"],
                   ["page<=4", "page>1"], [f"source!={_src(corpus, 'records.jsonl')}"]]
        for query in QUERIES:
            vector = embedder.embed_query(query)
            for spec in filters:
                where = parse_filter(spec)
                a, b = lance.search(vector, 5, where), qdrant.search(vector, 5, where)
                assert a, spec
                assert [h.chunk.id for h in a] == [h.chunk.id for h in b], (query, spec)
                np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
                assert all(matches(where, h.chunk) for h in a)
        vector = embedder.embed_query(QUERIES[0])
        assert {h.chunk.page for h in lance.search(vector, 10, parse_filter(["page>=3"]))} == {3, 4, 5, 6}
        assert len(lance.search(vector, 10, parse_filter(["page in 2,4"]))) == 2
    finally:
        lance.close()
        qdrant.close()


def test_not_equal_filters_keep_chunks_without_the_field_in_every_store(lance_dir, qdrant_dir, embedder):
    where = parse_filter(["page!=2"])
    vector = embedder.embed_query(QUERIES[0])
    lance, qdrant = open_store(lance_dir), open_store(qdrant_dir)
    try:
        everything = lance.chunks()
        expected = {c.id for c in everything if matches(where, c)}
        assert {c.id for c in qdrant.chunks() if matches(where, c)} == expected
        assert {h.chunk.id for h in qdrant.search(vector, 100, where)} == expected
        assert {h.chunk.id for h in lance.search(vector, 100, where)} == expected
    finally:
        lance.close()
        qdrant.close()


def test_parse_filter_reads_fields_and_names_them_in_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_filter(["source=docs/a.md"]) == [Condition("source", "=", (tmp_path / "docs/a.md").as_posix())]
    assert parse_filter(["page>=2", "page in 1, 3"]) == [Condition("page", ">=", 2), Condition("page", "in", [1, 3])]
    assert parse_filter(["headings=Install > Linux"]) == [Condition("headings", "=", "Install > Linux")]
    with pytest.raises(ConfigError) as e:
        parse_filter(["title=Intro"])
    assert "'title'" in str(e.value)
    assert all(name in str(e.value) for name in ("source", "page", "headings", "doc_hash"))
    with pytest.raises(ConfigError, match="page is a number"):
        parse_filter(["page>=two"])
    with pytest.raises(ConfigError, match="source is text"):
        parse_filter(["source>a.md"])
    with pytest.raises(ConfigError, match="FIELD"):
        parse_filter(["just words"])


def test_lance_native_and_in_memory_search_agree(lance_dir, corpus, embedder):
    store = open_store(lance_dir)
    try:
        n = store.count()
        every_source = parse_filter([f"source in {','.join(_src(corpus, f) for f in [*TOPICS, 'records.jsonl'])}"])
        for query in QUERIES:
            vector = embedder.embed_query(query)
            in_memory = store.search(vector, n)  # no filter: one matrix product
            native = store.search(vector, n, every_source)  # a filter: LanceDB's own scan
            assert len(in_memory) == len(native) == n
            scores = {h.chunk.id: h.score for h in native}
            assert {h.chunk.id for h in in_memory} == set(scores)
            for hit in in_memory:
                assert abs(hit.score - scores[hit.chunk.id]) < 1e-5
                assert abs(hit.score - float(embedder.embed_query(hit.chunk.text) @ vector)) < 1e-4
            assert [h.score for h in in_memory] == sorted((h.score for h in in_memory), reverse=True)
    finally:
        store.close()


# ---------------------------------------------------------------- BM25


def test_bm25_finds_a_rare_keyword_and_ignores_stopword_queries(lance_dir):
    store = open_store(lance_dir)
    try:
        index = BM25Index.load(lance_dir, store)
        hits = index.search("xylophone", 5)
        assert [Path(h.chunk.source).name for h in hits] == ["music.txt"] and hits[0].score > 0
        assert index.search("the and of is it to", 5) == []
        assert index.search("quasar", 5) == []
        assert [h.chunk.page for h in index.search("record", 10, parse_filter(["page>=5"]))] != []
        assert all(h.chunk.page >= 5 for h in index.search("record", 10, parse_filter(["page>=5"])))
    finally:
        store.close()


def test_bm25_index_is_reused_until_the_store_changes(tmp_path, corpus, embedder, monkeypatch):
    store_dir = tmp_path / "store"
    ingest.index([corpus / "solar.txt", corpus / "wind.txt"], store_dir, embedder=embedder)
    builds = []
    original = BM25Index.build.__func__
    monkeypatch.setattr(BM25Index, "build", classmethod(lambda cls, *a: (builds.append(1), original(cls, *a))[1]))
    store = open_store(store_dir)
    try:
        first = BM25Index.load(store_dir, store)
        assert not builds and first.version == store.version()  # the ingest saved it
        assert BM25Index.load(store_dir, store).search("turbines", 3)
        assert not builds
        vector = embedder.embed_query("kiwi")
        store.write({"/notes/kiwi.txt": [Chunk(text="Kiwi birds cannot fly.", source="/notes/kiwi.txt",
                                               doc_hash="k", vector=vector)]})
        rebuilt = BM25Index.load(store_dir, store)
        assert len(builds) == 1 and rebuilt.version == store.version() != first.version
        assert [h.chunk.source for h in rebuilt.search("kiwi", 3)] == ["/notes/kiwi.txt"]
        BM25Index.load(store_dir, store)
        assert len(builds) == 1
    finally:
        store.close()

    retriever = Retriever(store_dir, RetrievalConfig(mode="bm25"), embedder=embedder)
    try:
        assert retriever.bm25 is retriever.bm25 and len(builds) == 1
        before = retriever.bm25
        retriever.store.write({"/notes/kiwi.txt": []})
        assert retriever.bm25 is not before and len(builds) == 2
        assert retriever.retrieve("kiwi") == []
    finally:
        retriever.close()


def test_an_open_retriever_sees_a_later_ingest(tmp_path, corpus, embedder):
    store_dir = tmp_path / "store"
    ingest.index([corpus / "solar.txt"], store_dir, embedder=embedder)
    retriever = Retriever(store_dir, RetrievalConfig(mode="bm25"), embedder=embedder)
    try:
        assert retriever.retrieve("zebras") == []
        ingest.index([corpus / "solar.txt", corpus / "zebra.txt"], store_dir, embedder=embedder)
        assert [Path(h.chunk.source).name for h in retriever.retrieve("zebras")] == ["zebra.txt"]
    finally:
        retriever.close()


# ---------------------------------------------------------------- fusion and diversity


def _hits(*names: str) -> list[Hit]:
    return [Hit(Chunk(text=n, source=f"/{n}", doc_hash="h", id=n), 1.0) for n in names]


def test_rrf_sums_reciprocal_ranks():
    fused = rrf([_hits("a", "b", "c"), _hits("b", "d")], k=60)
    expected = {"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 63, "d": 1 / 62}
    assert [h.chunk.id for h in fused] == ["b", "a", "d", "c"]
    for hit in fused:
        assert hit.score == pytest.approx(expected[hit.chunk.id], abs=1e-12)
    assert [h.score for h in rrf([_hits("x", "y")], k=1)] == [pytest.approx(1 / 2), pytest.approx(1 / 3)]


def _scored(**scores: float) -> list[Hit]:
    return [Hit(Chunk(text=n, source=f"/{n}", doc_hash="h", id=n), s) for n, s in scores.items()]


def test_convex_fusion_weighs_min_max_normalised_scores():
    dense = _scored(a=0.9, b=0.7, c=0.5)  # normalised: a 1, b 0.5, c 0
    sparse = _scored(c=12.0, d=4.0)  # normalised: c 1, d 0
    fused = {h.chunk.id: h.score for h in convex([dense], [sparse], alpha=0.5)}
    assert fused == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.5, "d": 0.0})
    fused = convex([dense], [sparse], alpha=0.8)
    assert [h.chunk.id for h in fused][:2] == ["a", "b"] and fused[0].score == pytest.approx(0.8)
    # two dense lists share the dense weight: a chunk first in both gets all of it
    both = {h.chunk.id: h.score for h in convex([dense, _scored(a=0.3, e=0.1)], [], alpha=0.5)}
    assert both["a"] == pytest.approx(0.5) and both["e"] == pytest.approx(0.0)


def test_fusion_settings_are_checked():
    with pytest.raises(ConfigError, match="fusion"):
        RetrievalConfig(fusion="sum").check()
    with pytest.raises(ConfigError, match="alpha"):
        RetrievalConfig(alpha=1.5).check()


def test_mmr_trades_relevance_for_diversity():
    def unit(v):
        v = np.asarray(v, dtype=np.float32)
        return v / np.linalg.norm(v)

    query = unit([1, 0, 0])
    vectors = np.stack([unit([0.9, 0.43, 0.0]),   # most relevant
                        unit([0.89, 0.45, 0.02]),  # a near-duplicate of it
                        unit([0.6, -0.2, 0.77]),   # less relevant, different
                        unit([0.1, 0.99, 0.0])])   # barely relevant
    relevance = vectors @ query
    assert mmr(query, vectors, 4, 1.0) == list(np.argsort(-relevance))
    assert mmr(query, vectors, 2, 1.0) == [0, 1]
    assert mmr(query, vectors, 2, 0.5) == [0, 2]  # the near-duplicate is skipped


# ---------------------------------------------------------------- the retriever


def test_min_score_drops_chunks_below_the_cosine_threshold(lance_dir, embedder):
    store = open_store(lance_dir)
    chunks = store.get([c.id for c in store.chunks()])
    store.close()
    question = QUERIES[0]
    vector = embedder.embed_query(question)
    cosine = {c.id: float(c.vector @ vector) for c in chunks}
    threshold = float(np.median(list(cosine.values())))
    above = {i for i, s in cosine.items() if s >= threshold}
    assert 0 < len(above) < len(chunks)
    for mode in ("dense", "hybrid"):
        retriever = Retriever(lance_dir, RetrievalConfig(mode=mode, k=len(chunks), candidates=len(chunks),
                                                         min_score=threshold), embedder=embedder)
        try:
            hits = retriever.retrieve(question)
        finally:
            retriever.close()
        found = {h.chunk.id for h in hits}
        assert found <= above
        if mode == "dense":
            assert found == above
        for h in hits:
            assert h.similarity == pytest.approx(cosine[h.chunk.id], abs=1e-5)


def test_rerank_orders_by_the_cross_encoder(lance_dir, embedder, tiny_cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    question = QUERIES[1]
    cfg = RetrievalConfig(mode="dense", k=8, candidates=8, rerank=str(tiny_cross_encoder_dir))
    retriever = Retriever(lance_dir, cfg, embedder=embedder)
    try:
        candidates = retriever.store.search(embedder.embed_query(question), 8)
        hits = retriever.retrieve(question)
    finally:
        retriever.close()
    model = CrossEncoder(str(tiny_cross_encoder_dir), device="cpu")
    scores = model.predict([(question, h.chunk.text) for h in candidates])
    expected = [candidates[i].chunk.id for i in np.argsort(-scores, kind="stable")]
    assert [h.chunk.id for h in hits] == expected
    assert expected != [h.chunk.id for h in candidates]  # the cross-encoder did change the order
    np.testing.assert_allclose([h.score for h in hits], sorted(scores, reverse=True), atol=1e-5)


class FakeLLM:
    """Records the prompts it gets; answers each with the canned text for the first key it contains."""

    def __init__(self, answers: dict[str, str]):
        self.answers, self.prompts = answers, []

    def __call__(self, prompts):
        self.prompts.append(list(prompts))
        return [next(v for k, v in self.answers.items() if k in p) for p in prompts]


def test_multi_query_and_hyde_search_the_llm_text_and_fuse_it(lance_dir, embedder):
    question = "Which instrument has wooden bars?"
    store = open_store(lance_dir)
    river = next(c.text for c in store.chunks() if c.source.endswith("/rivers.txt"))
    store.close()
    plain = Retriever(lance_dir, RetrievalConfig(mode="bm25", k=8, candidates=8), embedder=embedder)
    try:
        found = {Path(h.chunk.source).name for h in plain.retrieve(question)}
    finally:
        plain.close()
    assert found == {"music.txt"}

    llm = FakeLLM({"search queries": "1. striped zebras\n- savanna herds\nWhich instrument has wooden bars?",
                   "factual passage": river})
    cfg = RetrievalConfig(mode="bm25", k=8, candidates=8, multi_query=2, hyde=True)
    retriever = Retriever(lance_dir, cfg, llm=llm, embedder=embedder)
    try:
        assert retriever.expansions(question) == (["striped zebras", "savanna herds"], river.strip())
        llm.prompts.clear()
        hits = retriever.retrieve(question)
    finally:
        retriever.close()
    [prompts] = llm.prompts  # one call, both prompts
    assert len(prompts) == 2 and "Write 2 different search queries" in prompts[0] and question in prompts[0]
    assert prompts[1] == HYDE_PROMPT.format(question=question)
    texts = {h.chunk.text for h in hits}
    names = {Path(h.chunk.source).name for h in hits}
    assert "music.txt" in names
    assert "zebra.txt" in names  # found only through the rewrites (BM25)
    assert river in texts  # found only through the HyDE passage (dense)


def test_query_expansion_without_an_llm_is_refused(lance_dir, embedder):
    with pytest.raises(ConfigError, match="multi_query"):
        Retriever(lance_dir, RetrievalConfig(multi_query=2), embedder=embedder)
    with pytest.raises(ConfigError, match="hyde"):
        Retriever(lance_dir, RetrievalConfig(hyde=True), embedder=embedder)
    with pytest.raises(ConfigError):
        RetrievalConfig(mode="sparse").check()
    with pytest.raises(ConfigError):
        RetrievalConfig(k=10, candidates=5).check()
