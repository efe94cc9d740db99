"""`tunelab rag index | search | ask | eval`: the command-line face of the rag package."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

from tunelab.config.flags import add_flags, given
from tunelab.errors import DataError


@contextmanager
def _progress():
    """A rich progress bar fed by (stage, done, total) callbacks, one bar per stage."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bars: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True, disable=not sys.stderr.isatty()) as progress:
        def update(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=total)
            progress.update(bars[stage], completed=done, total=total)

        yield update


def _need_store(path: str) -> None:
    """Refuse a missing store before any model is loaded (libraries would create an empty one)."""
    from tunelab.rag.stores import read_info

    read_info(path)


def _retrieval(args, answering: bool = False):
    """The retrieval options given; answering applies the answer route's defaults (min_score 0.3)."""
    from tunelab.rag.pipeline import RagConfig
    from tunelab.rag.retrieve import RetrievalConfig

    if answering:
        return RagConfig.load(given(args, "answer"), "flags").retrieval
    return RetrievalConfig.load(given(args, "answer").get("retrieval", {}), "flags")


def cmd_index(args) -> int:
    from tunelab.rag.ingest import IndexConfig, index

    cfg = IndexConfig.load(given(args, "index"), "flags")
    with _progress() as progress:
        report = index(args.paths, args.store, embedder=cfg.embedder, split=cfg.split, backend=cfg.backend,
                       url=cfg.url, field=cfg.field, prune=cfg.prune, ann=cfg.ann, progress=progress)
    for path, why in report.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"{args.store}: {report.indexed} files indexed ({report.chunks} chunks, {report.chunks_per_s:.0f} chunks/s), "
          f"{report.unchanged} unchanged, {report.removed} removed, {len(report.skipped)} skipped; "
          f"{report.store_chunks} chunks in the store")
    return 0 if report.indexed or report.unchanged or not report.files else 2


def cmd_search(args) -> int:
    from tunelab.rag.retrieve import Retriever

    _need_store(args.store)
    retriever = Retriever(args.store, _retrieval(args))
    try:
        hits = retriever.retrieve(args.query)
    finally:
        retriever.close()
    for i, hit in enumerate(hits, start=1):
        similarity = f" cos={hit.similarity:.3f}" if hit.similarity is not None else ""
        print(f"[{i}] score={hit.score:.4f}{similarity}  {hit.chunk.where()}  chars {hit.chunk.start}-{hit.chunk.end}")
        print("    " + hit.chunk.text.strip().replace("\n", "\n    ")[:500])
    if not hits:
        print("nothing relevant found", file=sys.stderr)
    return 0


def _pipeline(args, retrieval=None):
    from tunelab.infer.load import LoadConfig
    from tunelab.rag.pipeline import RagConfig, RagPipeline

    load = LoadConfig.load(given(args, "model"), "flags").model_copy(update={"max_batch_size": 8})
    cfg = RagConfig.load(given(args, "answer"), "flags")
    if retrieval is not None:
        cfg = cfg.model_copy(update={"retrieval": retrieval})
    engine = load.engine()
    return RagPipeline(args.store, engine, cfg), engine


def _show(answer, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"question": answer.question, "standalone": answer.standalone, "answer": answer.text,
                          "refused": answer.refused, "citations": answer.citations, "flagged": answer.flagged,
                          "sources": [{"number": s.number, "where": s.chunk.where(), "source": s.chunk.source,
                                       "page": s.chunk.page, "start": s.chunk.start, "end": s.chunk.end,
                                       "score": s.score, "flagged": s.flagged} for s in answer.sources]},
                         ensure_ascii=False))
        return
    print(answer.text)
    for s in answer.sources:
        mark = "*" if s.number in answer.citations else " "
        flag = f"  FLAGGED: {', '.join(s.flagged)}" if s.flagged else ""
        print(f" {mark}[{s.number}] {s.chunk.where()} (chars {s.chunk.start}-{s.chunk.end}){flag}", file=sys.stderr)


def cmd_ask(args) -> int:
    _need_store(args.store)
    if not args.question and not args.chat:
        raise DataError("tunelab rag ask: give a question, or --chat for a conversation")
    pipeline, engine = _pipeline(args)
    try:
        if args.question:
            _show(pipeline.ask(args.question), args.json)
        if args.chat:  # follow-ups are condensed with the conversation so far
            history: list[tuple[str, str]] = []
            while True:
                try:
                    question = input("> ").strip()
                except (EOFError, KeyboardInterrupt):
                    break
                if question in ("/exit", "/quit"):
                    break
                if question == "/reset":
                    history = []
                    continue
                if question:
                    answer = pipeline.ask(question, history)
                    _show(answer, args.json)
                    history.append((question, answer.text))
    finally:
        pipeline.close()
        engine.close()
    return 0


def cmd_eval(args) -> int:
    from tunelab.rag.eval import evaluate, save_report

    _need_store(args.store)
    pipeline = engine = judge = None
    retrieval = _retrieval(args)  # retrieval is measured without the answer route's threshold
    if given(args, "model"):
        pipeline, engine = _pipeline(args, retrieval)
    if given(args, "judge"):
        from tunelab.eval.judge import JudgeConfig, make_judge

        judge = make_judge(JudgeConfig.load({"max_new_tokens": 8, **given(args, "judge")}, "flags"))
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    try:
        with _progress() as progress:
            report = evaluate(args.qa, args.store, modes=modes, retrieval=retrieval, pipeline=pipeline,
                              judge=judge, limit=args.limit, progress=progress)
    finally:
        if pipeline is not None:
            pipeline.close()
            engine.close()
    print(retrieval_table(report))
    if report["answers"]:
        print("answers: " + "  ".join(f"{k}={v}" for k, v in report["answers"].items()))
    if args.output:
        print(f"wrote {save_report(report, args.output)}")
    return 0


def retrieval_table(report: dict) -> str:
    """The modes side by side as a Markdown table."""
    columns = ["hit@1", "hit@5", "recall@5", "recall@10", "mrr@10", "ndcg@10"]
    lines = ["| mode | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for mode, m in report["retrieval"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{m.get(c, 0):.4f}" for c in columns) + " |")
    return "\n".join(lines)


def _store_flag(p: argparse.ArgumentParser, help: str = "the store folder tunelab rag index wrote") -> None:
    p.add_argument("--store", required=True, help=help)


def _answer_flags(p: argparse.ArgumentParser) -> None:
    """The model and how it answers: retrieval, decoding, refusal, injection handling."""
    from tunelab.infer.load import LoadConfig
    from tunelab.rag.pipeline import RagConfig

    add_flags(p, LoadConfig, "model", only=("model", "adapter"), title="model")
    add_flags(p, RagConfig, "answer", title="answering")


def add_parser(sub) -> None:
    """Register `tunelab rag ...` on the main command table; option flags come from the config schema."""
    from tunelab.eval.judge import JudgeConfig
    from tunelab.rag.ingest import IndexConfig
    from tunelab.rag.retrieve import RetrievalConfig

    rag = sub.add_parser("rag", help="retrieval-augmented generation over your documents: index, search, ask, eval")
    commands = rag.add_subparsers(dest="rag_command", required=True)

    p = commands.add_parser("index", help="add files and folders to a store (re-running adds only what changed)")
    p.add_argument("paths", nargs="+", help=".txt .md .html .pdf .docx .json .jsonl files, or folders of them")
    _store_flag(p, "the store folder (created if missing)")
    add_flags(p, IndexConfig, "index", title="indexing")
    p.set_defaults(func=cmd_index)

    p = commands.add_parser("search", help="the chunks retrieval finds for a query, with scores")
    p.add_argument("query")
    _store_flag(p)
    add_flags(p, RetrievalConfig, "answer", title="retrieval", _path="retrieval.")
    p.set_defaults(func=cmd_search)

    p = commands.add_parser("ask", help="answer a question from the store, citing sources")
    p.add_argument("question", nargs="?", help="the question (or --chat for a conversation)")
    _store_flag(p)
    _answer_flags(p)
    p.add_argument("--chat", action="store_true", help="a conversation: follow-ups are made standalone with memory")
    p.add_argument("--json", action="store_true", help="print the answer, citations and sources as JSON")
    p.set_defaults(func=cmd_ask)

    p = commands.add_parser("eval", help="retrieval hit@k / recall@k / MRR / nDCG per mode; with --model, answer "
                            "exact match, F1 and faithfulness")
    p.add_argument("qa", help="JSONL: question, answer(s), and the gold passage (context) or gold_source")
    _store_flag(p)
    _answer_flags(p)
    p.add_argument("--modes", default="dense,bm25,hybrid", help="retrieval modes compared side by side")
    add_flags(p, JudgeConfig, "judge", only=("model", "base_url", "endpoint_model"), title="faithfulness judge "
              "(else word overlap only)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--output", default=None, help="write the report (with samples) to this JSON file")
    p.set_defaults(func=cmd_eval)

