"""RAG: files or folders indexed into a store, then questions answered with citations shown next to
the chunks retrieved for them (`tunelab rag index` and `tunelab rag ask`)."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from tunelab.errors import ConfigError
from tunelab.ui.context import Context, error_text
from tunelab.ui.forms import Form
from tunelab.ui.settings import safe_name

DOCUMENT_TYPES = [".txt", ".md", ".pdf", ".docx", ".html", ".htm", ".json", ".jsonl", ".csv"]
SOURCE_COLUMNS = ["source", "cited", "where", "score", "text"]


def build(ctx: Context) -> None:
    from tunelab.rag.ingest import IndexConfig
    from tunelab.rag.pipeline import RagConfig

    with gr.Tab("RAG", id="rag"):
        store = gr.Textbox("documents", label="store", info="a name: stores live in the UI's folder",
                           elem_id="rag-store")
        with gr.Row():
            paths = gr.Textbox(label="files and folders to index", lines=3, scale=4, elem_id="rag-paths",
                               info="one per line, inside the UI's folders; or upload files")
            upload = gr.UploadButton("Upload", file_types=DOCUMENT_TYPES, file_count="multiple", scale=1,
                                     elem_id="rag-upload")
        with gr.Accordion("indexing options", open=False):
            index_form = Form(IndexConfig, "rag-index", only=("embedder", "split", "field", "prune"))
        index_button = gr.Button("Index", variant="primary", elem_id="rag-index-button")
        indexed = gr.Markdown(elem_id="rag-indexed")
        gr.Markdown("---")
        with gr.Row():
            question = gr.Textbox(label="question", elem_id="rag-question", scale=4)
            model = gr.Textbox(ctx.default_model, label="model", elem_id="rag-model", scale=2)
        with gr.Accordion("retrieval and answering options", open=False):
            answer_form = Form(RagConfig, "rag-answer", skip=("system",))
        ask_button = gr.Button("Ask", variant="primary", elem_id="rag-ask")
        error = gr.Markdown(elem_id="rag-error")
        answer = gr.Markdown(elem_id="rag-answer")
        sources = gr.Dataframe(pd.DataFrame(columns=SOURCE_COLUMNS), label="retrieved chunks (cited ones marked)",
                               wrap=True, interactive=False, elem_id="rag-sources")

        upload.upload(lambda files, now: "\n".join([*(now or "").splitlines(), *files]), [upload, paths], paths)
        n = len(index_form.inputs)
        index_button.click(lambda name, text, *v: run_index(ctx, index_form, name, text, v[:n]),
                           [store, paths, *index_form.inputs], [error, indexed])
        for event in (ask_button.click, question.submit):
            event(lambda name, q, m, *v: ask(ctx, answer_form, name, q, m, v), [store, question, model,
                                                                             *answer_form.inputs],
                  [error, answer, sources])


def _store(ctx: Context, name: str):
    return ctx.state / "stores" / safe_name(name, "store")


def run_index(ctx: Context, form: Form, name: str, text: str, values):
    from tunelab.rag.ingest import IndexConfig, index

    try:
        cfg = IndexConfig.load(form.raw(values), "index")
        paths = [ctx.sandbox.path(line, "path") for line in (text or "").splitlines() if line.strip()]
        if not paths:
            raise ConfigError("nothing to index: give files or folders, one per line, or upload files")
        embedder = ctx.sandbox.model(cfg.embedder, "embedder") if cfg.embedder != IndexConfig().embedder \
            else cfg.embedder
        report = index(paths, _store(ctx, name), embedder=embedder, split=cfg.split, field=cfg.field,
                       prune=cfg.prune)
    except Exception as e:  # noqa: BLE001
        return error_text(e), ""
    skipped = "".join(f"  \nskipped {f}: {why}" for f, why in report.skipped)
    return "", (f"{report.indexed} files indexed, {report.unchanged} unchanged, {report.removed} removed; "
                f"{report.chunks} chunks embedded, {report.store_chunks} in the store ({report.seconds:.1f} s)"
                + skipped)


def ask(ctx: Context, form: Form, name: str, question: str, model: str, values):
    from tunelab.rag.pipeline import RagConfig, RagPipeline

    empty = pd.DataFrame(columns=SOURCE_COLUMNS)
    try:
        if not (question or "").strip():
            raise ConfigError("question: empty; type a question")
        store = _store(ctx, name)
        if not (store / "store.json").is_file():
            raise ConfigError(f"store {name}: not indexed yet; index files into it first")
        cfg = RagConfig.load(form.raw(values), "answer")
        engine = ctx.engines.get(ctx.sandbox.model(model) or ctx.default_model, None, streams=4)
        pipeline = RagPipeline(store, engine, cfg)
        try:
            result = pipeline.ask(question)
        finally:
            pipeline.close()
    except Exception as e:  # noqa: BLE001
        return error_text(e), "", empty
    cited = ", ".join(f"[{n}] {s.chunk.where()}" for s in result.sources for n in [s.number]
                      if n in result.citations)
    text = result.text + (f"\n\n**cited**: {cited}" if cited else "\n\n*no source cited*")
    rows = [{"source": f"[{s.number}]", "cited": "yes" if s.number in result.citations else "",
             "where": s.chunk.where(), "score": round(s.score, 3), "text": s.chunk.text} for s in result.sources]
    return "", text, pd.DataFrame(rows, columns=SOURCE_COLUMNS)
