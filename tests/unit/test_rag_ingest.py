"""RAG ingest: loaders, splitters, incremental indexing, bad files and crashes."""

from __future__ import annotations

import codecs
import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tunelab.errors import ConfigError
from tunelab.rag import ingest
from tunelab.rag.documents import Document
from tunelab.rag.loaders import Unreadable, find_files, html_to_text, load
from tunelab.rag.split import SplitConfig, Splitter
from tunelab.rag.stores import open_store


@pytest.fixture(scope="module")
def embedder(tiny_embedder_dir):
    from tunelab.rag.embed import Embedder

    return Embedder(str(tiny_embedder_dir))


def _load(path: Path, field: str = "text") -> list[Document]:
    return load(path, path.read_bytes(), field)


def _pdf(path: Path, pages: list[str]) -> Path:
    """A PDF with one line of text per page ('' leaves a page blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path) as pdf:
        for text in pages:
            fig = plt.figure(figsize=(4, 3))
            if text:
                fig.text(0.05, 0.5, text)
            pdf.savefig(fig)
            plt.close(fig)
    return path


def _ids(store_dir: Path) -> set[str]:
    store = open_store(store_dir)
    try:
        return {c.id for c in store.chunks()}
    finally:
        store.close()


def _manifest(store_dir: Path) -> dict:
    store = open_store(store_dir)
    try:
        return store.manifest()
    finally:
        store.close()


# ---------------------------------------------------------------- loaders

TEXT = "Café naïve résumé, déjà vu."


@pytest.mark.parametrize("data", [TEXT.encode("utf-8"), codecs.BOM_UTF8 + TEXT.encode("utf-8"),
                                  TEXT.encode("utf-16"), TEXT.encode("latin-1")],
                         ids=["utf-8", "utf-8-bom", "utf-16-bom", "latin-1"])
def test_text_files_in_each_encoding(tmp_path, data):
    path = tmp_path / "note.txt"
    path.write_bytes(data)
    [doc] = _load(path)
    assert doc.text == TEXT
    assert doc.source == path.resolve().as_posix() and doc.page is None and not doc.markdown


def test_markdown_file_is_marked_as_markdown(tmp_path):
    path = tmp_path / "guide.md"
    path.write_text("# Guide\n\nSome text.\n", encoding="utf-8")
    [doc] = _load(path)
    assert doc.markdown and doc.text.startswith("# Guide")


def test_html_keeps_readable_text_and_headings_drops_scripts_styles_navigation():
    html = """<html><head><title>Tab title</title><style>.x { color: red }</style></head><body>
    <nav><a href="/">Home</a> | <a href="/about">About us</a></nav>
    <h1>Main title</h1><p>First paragraph with <b>bold</b> words.</p>
    <script>var secret = "tracking";</script>
    <h2>Details</h2><ul><li>one item</li><li>two item</li></ul>
    <table><tr><td>cell A</td><td>cell B</td></tr></table>
    </body></html>"""
    text = html_to_text(html)
    lines = text.splitlines()
    assert "# Main title" in lines and "## Details" in lines
    assert "First paragraph with bold words." in lines
    assert "- one item" in lines and "- two item" in lines
    assert "cell A" in text and "cell B" in text
    for gone in ("secret", "tracking", "color", "Home", "About us", "Tab title"):
        assert gone not in text


def test_html_keeps_an_articles_own_header():
    html = ("<body><header><nav>Home</nav></header><article><header><h1>How to bake bread</h1></header>"
            "<p>Mix flour and water.</p></article></body>")
    assert html_to_text(html) == "# How to bake bread\n\nMix flour and water."


def test_html_file_becomes_a_markdown_document(tmp_path):
    path = tmp_path / "page.html"
    path.write_text("<h1>Hello</h1><p>World</p><script>evil()</script>", encoding="utf-8")
    [doc] = _load(path)
    assert doc.markdown and doc.text == "# Hello\n\nWorld"


def test_pdf_is_read_per_page_with_page_numbers(tmp_path):
    path = _pdf(tmp_path / "paper.pdf", ["Apples grow on trees", "", "Pears are sweet fruit"])
    docs = _load(path)
    assert [d.page for d in docs] == [1, 3]  # the blank page is left out; numbers stay the printed ones
    assert "Apples grow on trees" in docs[0].text and "Pears are sweet fruit" in docs[1].text
    assert all(d.source == path.resolve().as_posix() for d in docs)


def test_docx_headings_become_a_heading_path_and_tables_are_kept(tmp_path):
    import docx

    d = docx.Document()
    d.add_heading("Install", 1)
    d.add_paragraph("Run the installer first.")
    d.add_heading("Linux", 2)
    d.add_paragraph("Use the apt package manager.")
    table = d.add_table(rows=2, cols=2)
    for (r, c), text in {(0, 0): "System", (0, 1): "Command", (1, 0): "Debian", (1, 1): "apt install tool"}.items():
        table.cell(r, c).text = text
    d.add_heading("Usage", 1)
    d.add_paragraph("Call the tool.")
    path = tmp_path / "manual.docx"
    d.save(path)
    [doc] = _load(path)
    assert doc.markdown
    assert "System | Command" in doc.text and "Debian | apt install tool" in doc.text
    chunks = Splitter(SplitConfig(kind="markdown", size=40, overlap=0)).split(doc, "h")
    where = {c.text: c.headings for c in chunks}
    by_text = lambda needle: next(h for t, h in where.items() if needle in t)
    assert by_text("apt package manager") == "Install > Linux"
    assert by_text("Debian") == "Install > Linux"
    assert by_text("Call the tool") == "Usage"
    assert by_text("Run the installer") == "Install"


def test_json_and_jsonl_with_a_field_and_a_dotted_field(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"id": 1, "meta": {"body": "alpha body"}, "text": "alpha text"},
        {"id": 2, "meta": {"body": "beta body"}, "text": "beta text"},
        {"id": 3, "meta": {"body": "alpha body"}, "text": "gamma text"}]), encoding="utf-8")
    assert [(d.text, d.page) for d in _load(jsonl)] == [("alpha text", 1), ("beta text", 2), ("gamma text", 3)]
    # nested field; the same passage in two records is indexed once
    assert [(d.text, d.page) for d in _load(jsonl, "meta.body")] == [("alpha body", 1), ("beta body", 2)]
    array = tmp_path / "rows.json"
    array.write_text(json.dumps([{"body": "one"}, {"body": "two"}]), encoding="utf-8")
    assert [(d.text, d.page) for d in _load(array, "body")] == [("one", 1), ("two", 2)]


def test_jsonl_without_the_field_names_it_and_the_fields_present(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"title": "A", "body": "x"}\n{"title": "B", "body": "y"}\n', encoding="utf-8")
    with pytest.raises(Unreadable) as e:
        _load(path, "content")
    message = str(e.value)
    assert "'content'" in message and "body" in message and "title" in message


def test_find_files_walks_folders_and_reports_unknown_named_files(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.bin").write_text("b")
    (tmp_path / ".hidden.txt").write_text("c")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("c")
    files, skipped = find_files([tmp_path, tmp_path / "b.bin"])
    assert [f.name for f in files] == ["a.txt", "c.md"]
    assert [p.name for p, _ in skipped] == ["b.bin"]
    with pytest.raises(FileNotFoundError):
        find_files([tmp_path / "missing"])


# ---------------------------------------------------------------- bad input in an ingest


def _bad_files(folder: Path) -> dict[str, str]:
    """Unreadable files, by name -> a word their skip reason must contain."""
    from pypdf import PdfWriter

    plain = _pdf(folder / "plain.pdf.tmp", ["Secret page"])
    writer = PdfWriter(clone_from=str(plain))
    writer.encrypt(user_password="pw", algorithm="AES-256")
    writer.write(str(folder / "locked.pdf"))
    plain.unlink()
    (folder / "fake.pdf").write_text("this is not a PDF at all", encoding="utf-8")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blob.txt").write_bytes(bytes(range(256)) * 8)
    return {"locked.pdf": "password", "fake.pdf": "pdf", "empty.txt": "empty", "blob.txt": "binary"}


def test_unreadable_files_are_skipped_with_reasons_and_other_chunks_stay(tmp_path, embedder):
    docs, store = tmp_path / "docs", tmp_path / "store"
    docs.mkdir()
    (docs / "good.txt").write_text("Solar panels turn light into power. " * 10, encoding="utf-8")
    (docs / "other.md").write_text("# Wind\n\nTurbines turn wind into power.\n", encoding="utf-8")
    first = ingest.index([docs], store, embedder=embedder)
    assert first.indexed == 2 and not first.skipped
    before = _ids(store)

    expected = _bad_files(docs)
    report = ingest.index([docs], store, embedder=embedder)
    reasons = {Path(p).name: why for p, why in report.skipped}
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word in reasons[name].lower(), (name, reasons[name])
    assert report.unchanged == 2 and report.indexed == 0
    assert _ids(store) == before  # the other files' chunks stay

    # a file indexed before that turns unreadable keeps its old chunks
    (docs / "good.txt").write_bytes(b"\x00\x01\x02" * 100)
    report = ingest.index([docs], store, embedder=embedder, prune=True)
    reasons = {Path(p).name: why for p, why in report.skipped}
    assert "binary" in reasons["good.txt"] and "kept" in reasons["good.txt"]
    assert _ids(store) == before


# ---------------------------------------------------------------- splitters

MARKDOWN = """# Title

Intro text about the project, long enough to stand alone as its own little chunk here.

## Install

General notes on installing. """ + "Read them all before you start. " * 6 + """

### Linux

Use the package manager on Linux. """ + "Then check the version. " * 6 + """

```bash
# not a heading
echo installed
```

More Linux text after the code block. """ + "Restart the shell afterwards. " * 5 + """

## Usage

Run the tool with a file name.
"""

LONG = " ".join(f"Sentence number {i} says something about topic {i % 7} and more." for i in range(80))
UNICODE = ("Café naïve résumé 😀 — über Straße. " * 30) + "\n\n# Título\n\nÉlan vital 日本語のテキスト。" * 6


@pytest.mark.parametrize("kind", ["recursive", "markdown", "tokens", "auto"])
def test_every_chunk_is_its_exact_span(kind, embedder):
    size, overlap = (24, 6) if kind == "tokens" else (120, 30)
    splitter = Splitter(SplitConfig(kind=kind, size=size, overlap=overlap),
                        embedder.tokenizer() if kind == "tokens" else None)
    for text, md in ((MARKDOWN, True), (LONG, False), (UNICODE, True), (UNICODE, False)):
        doc = Document(text, "/x/doc.md", page=2, markdown=md)
        chunks = splitter.split(doc, "hash")
        assert len(chunks) > 3
        for c in chunks:
            assert doc.text[c.start:c.end] == c.text
            assert c.page == 2 and c.doc_hash == "hash" and c.source == "/x/doc.md"
        assert [c.start for c in chunks] == sorted(c.start for c in chunks)
        assert len({c.id for c in chunks}) == len(chunks)


def test_recursive_chunks_overlap_and_cover_the_text():
    cfg = SplitConfig(kind="recursive", size=200, overlap=60)
    doc = Document(LONG, "/x/long.txt")
    chunks = Splitter(cfg).split(doc, "h")
    assert len(chunks) > 5
    assert chunks[0].start == 0 and chunks[-1].end == len(LONG.rstrip())
    for a, b in itertools.pairwise(chunks):
        assert len(a.text) <= cfg.size
        assert a.start < b.start < a.end, "consecutive chunks should overlap"
        assert a.end - b.start <= cfg.overlap
        assert LONG[b.start:a.end] == a.text[b.start - a.start:] == b.text[:a.end - b.start]


def test_markdown_heading_paths_ignore_hashes_in_code_fences():
    doc = Document(MARKDOWN, "/x/guide.md", markdown=True)
    chunks = Splitter(SplitConfig(kind="markdown", size=200, overlap=0)).split(doc, "h")
    path_of = lambda needle: next(c.headings for c in chunks if needle in c.text)
    assert path_of("Intro text") == "Title"
    assert path_of("General notes on installing") == "Title > Install"
    assert path_of("Use the package manager") == "Title > Install > Linux"
    assert path_of("# not a heading") == "Title > Install > Linux"
    assert path_of("More Linux text") == "Title > Install > Linux"
    assert path_of("Run the tool") == "Title > Usage"
    assert not any("not a heading" in c.headings for c in chunks)


def test_token_splitter_keeps_chunks_within_the_token_budget(embedder):
    tokenizer = embedder.tokenizer()
    for size in (16, 40):
        splitter = Splitter(SplitConfig(kind="tokens", size=size, overlap=size // 4), tokenizer)
        for text, md in ((LONG, False), (MARKDOWN, True), (UNICODE, False)):
            chunks = splitter.split(Document(text, "/x/t.md", markdown=md), "h")
            lengths = [len(tokenizer.encode(c.text, add_special_tokens=False).ids) for c in chunks]
            assert max(lengths) <= size
            assert max(lengths) >= size // 2  # chunks are filled, not cut at every sentence


def test_split_config_is_checked():
    with pytest.raises(ConfigError):
        SplitConfig(kind="sentences").check()
    with pytest.raises(ConfigError):
        SplitConfig(kind="recursive", size=100, overlap=100).check()
    with pytest.raises(ConfigError):
        Splitter(SplitConfig(kind="tokens", size=100, overlap=10))  # no tokenizer


# ---------------------------------------------------------------- incremental ingest


def _corpus(folder: Path, n: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"f{i}.txt").write_text(f"File {i} talks about subject number {i}. " * 12, encoding="utf-8")
    return folder


def test_reindexing_the_same_files_adds_nothing(tmp_path, embedder):
    docs, store_dir = _corpus(tmp_path / "docs"), tmp_path / "store"
    split = SplitConfig(kind="recursive", size=150, overlap=30)
    first = ingest.index([docs], store_dir, embedder=embedder, split=split)
    assert first.indexed == 5 and first.chunks == first.store_chunks > 5
    store = open_store(store_dir)
    version, count = store.version(), store.count()
    store.close()
    again = ingest.index([docs], store_dir, embedder=embedder)
    assert (again.indexed, again.unchanged, again.chunks, again.removed) == (0, 5, 0, 0)
    assert again.store_chunks == count
    store = open_store(store_dir)
    assert store.version() == version and store.count() == count
    store.close()


def test_a_changed_file_replaces_its_old_chunks(tmp_path, embedder):
    docs, store_dir = _corpus(tmp_path / "docs"), tmp_path / "store"
    ingest.index([docs], store_dir, embedder=embedder, split=SplitConfig(kind="recursive", size=150, overlap=30))
    before = _manifest(store_dir)
    (docs / "f1.txt").write_text("Zebras live on the savanna. " * 3, encoding="utf-8")
    report = ingest.index([docs], store_dir, embedder=embedder)
    assert (report.indexed, report.unchanged) == (1, 4)
    store = open_store(store_dir)
    try:
        chunks = store.chunks()
        f1 = [c for c in chunks if c.source.endswith("/f1.txt")]
        assert f1 and all("Zebras" in c.text for c in f1)
        assert not any("subject number 1." in c.text for c in chunks)
        expected = sum(n for src, (_, n, _) in before.items() if not src.endswith("/f1.txt")) + len(f1)
        assert store.count() == report.store_chunks == expected
        assert all(rows == want for _, rows, want in store.manifest().values())
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["lance", "qdrant"])
def test_prune_removes_deleted_files_only_when_asked(tmp_path, embedder, backend):
    docs, store_dir = _corpus(tmp_path / "docs"), tmp_path / "store"
    ingest.index([docs], store_dir, embedder=embedder, backend=backend)
    (docs / "f2.txt").unlink()
    kept = ingest.index([docs], store_dir, embedder=embedder, backend=backend)
    assert kept.removed == 0 and any(s.endswith("/f2.txt") for s in _manifest(store_dir))
    pruned = ingest.index([docs], store_dir, embedder=embedder, backend=backend, prune=True)
    assert pruned.removed == 1
    sources = {Path(s).name for s in _manifest(store_dir)}
    assert sources == {"f0.txt", "f1.txt", "f3.txt", "f4.txt"}


def test_reindexing_a_qdrant_store_needs_no_backend_flag(tmp_path, embedder):
    docs, store_dir = _corpus(tmp_path / "docs", 2), tmp_path / "store"
    ingest.index([docs], store_dir, embedder=embedder, backend="qdrant")
    assert ingest.index([docs], store_dir, embedder=embedder).unchanged == 2


def test_an_existing_store_refuses_another_embedder(tmp_path, embedder, tiny_embedder_dir):
    docs, store_dir = _corpus(tmp_path / "docs", 1), tmp_path / "store"
    ingest.index([docs], store_dir, embedder=embedder)
    with pytest.raises(ConfigError, match="embedder"):
        ingest.index([docs], store_dir, embedder="someone/other-model")
    other = type(embedder).__new__(type(embedder))
    other.__dict__.update(embedder.__dict__, name="another-folder")
    with pytest.raises(ConfigError, match="embedder"):
        ingest.index([docs], store_dir, embedder=other)


# ---------------------------------------------------------------- crashes


@pytest.mark.parametrize("backend", ["lance", "qdrant"])
def test_a_write_that_fails_leaves_complete_files_and_a_rerun_finishes(tmp_path, embedder, monkeypatch, backend):
    if backend == "qdrant":
        pytest.importorskip("qdrant_client")
        from tunelab.rag.stores.qdrant import QdrantStore as cls
    else:
        from tunelab.rag.stores.lance import LanceStore as cls
    docs = _corpus(tmp_path / "docs", 8)
    split = SplitConfig(kind="recursive", size=150, overlap=30)
    ingest.index([docs], tmp_path / "clean", embedder=embedder, split=split, backend=backend)
    clean = _ids(tmp_path / "clean")

    monkeypatch.setattr(ingest, "BATCH_CHUNKS", 5)
    writes = []
    original = cls.write

    def failing(self, chunks):
        if writes:
            raise RuntimeError("disk full")
        writes.append(len(chunks))
        return original(self, chunks)

    monkeypatch.setattr(cls, "write", failing)
    store_dir = tmp_path / "store"
    with pytest.raises(RuntimeError, match="disk full"):
        ingest.index([docs], store_dir, embedder=embedder, split=split, backend=backend)
    manifest = _manifest(store_dir)
    assert 0 < len(manifest) < 8
    assert all(rows == want for _, rows, want in manifest.values())

    monkeypatch.setattr(cls, "write", original)
    report = ingest.index([docs], store_dir, embedder=embedder, backend=backend)
    assert report.unchanged == len(manifest) and report.indexed == 8 - len(manifest)
    assert _ids(store_dir) == clean


KILL_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from tunelab.rag import ingest
from tunelab.rag.split import SplitConfig
from tunelab.rag.stores.lance import LanceStore
ingest.BATCH_CHUNKS = 1
original, calls = LanceStore.write, []
def write(self, chunks):
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    calls.append(1)
    original(self, chunks)
LanceStore.write = write
ingest.index([sys.argv[1]], sys.argv[2], embedder=sys.argv[3], split=SplitConfig(kind="recursive", size=300, overlap=50))
print("not killed")
"""


def test_an_ingest_killed_mid_way_leaves_a_consistent_store(tmp_path, embedder, tiny_embedder_dir):
    docs, store_dir = _corpus(tmp_path / "docs", 30), tmp_path / "store"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_SCRIPT), str(docs), str(store_dir),
                           str(tiny_embedder_dir)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == -9, done.stdout + done.stderr[-2000:]
    manifest = _manifest(store_dir)
    assert len(manifest) == 3  # three whole writes, nothing of the fourth
    assert all(rows == want for _, rows, want in manifest.values())

    report = ingest.index([docs], store_dir, embedder=embedder)
    assert (report.unchanged, report.indexed) == (3, 27)
    manifest = _manifest(store_dir)
    assert {Path(s).name for s in manifest} == {f"f{i}.txt" for i in range(30)}
    assert all(rows == want for _, rows, want in manifest.values())
    assert report.store_chunks == sum(rows for _, rows, _ in manifest.values())


def test_ten_thousand_small_files_index_in_few_commits(tmp_path, embedder, monkeypatch):
    from tunelab.rag.stores.lance import LanceStore

    docs = tmp_path / "many"
    docs.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    for i in range(10_000):
        (docs / f"{i:05d}.txt").write_text(f"Note {i} mentions {words[i % 10]} and {words[i // 10 % 10]}.\n")
    writes = []
    original = LanceStore.write
    monkeypatch.setattr(LanceStore, "write", lambda self, chunks: (writes.append(len(chunks)), original(self, chunks)))
    store_dir = tmp_path / "store"
    report = ingest.index([docs], store_dir, embedder=embedder)
    assert (report.files, report.indexed, report.chunks, report.store_chunks) == (10_000, 10_000, 10_000, 10_000)
    assert sum(writes) == 10_000 and len(writes) <= 10_000 // ingest.BATCH_CHUNKS + 1
    store = open_store(store_dir)
    try:
        assert store.count() == 10_000 and store.table.version < 50
        version = store.version()
    finally:
        store.close()
    again = ingest.index([docs], store_dir, embedder=embedder)
    assert (again.indexed, again.unchanged, again.chunks) == (0, 10_000, 0)
    assert len(writes) <= 10_000 // ingest.BATCH_CHUNKS + 1
    store = open_store(store_dir)
    assert store.version() == version and store.count() == 10_000
    store.close()


def test_an_ann_index_serves_searches_once_built(tmp_path, embedder):
    from tunelab.rag.retrieve import RetrievalConfig, Retriever

    docs = tmp_path / "docs"
    docs.mkdir()
    words = ["river", "mountain", "forest", "desert", "ocean", "valley", "glacier", "meadow", "canyon", "island"]
    for i in range(300):
        (docs / f"{i:03d}.txt").write_text(f"Note {i}: the {words[i % 10]} near {words[i // 10 % 10]} town {i}.")
    with pytest.raises(ConfigError, match="--ann"):
        ingest.index([docs], tmp_path / "q", embedder=embedder, backend="qdrant", ann=True)
    store_dir = tmp_path / "store"
    ingest.index([docs], store_dir, embedder=embedder, ann=True)
    store = open_store(store_dir)
    try:
        assert store.table.list_indices() and not store._exact()
        target = next(c for c in store.chunks() if c.source.endswith("/123.txt"))
        hits = store.search(embedder.embed_query(target.text), 3)
        assert hits[0].chunk.id == target.id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    finally:
        store.close()
    retriever = Retriever(store_dir, RetrievalConfig(mode="dense", k=1), embedder=embedder)
    assert retriever.retrieve(target.text)[0].chunk.id == target.id
    retriever.close()
