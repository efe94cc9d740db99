"""`tunelab rag index | search | ask | eval`: the command-line face of the rag package."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

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


def _retrieval(args):
    from tunelab.rag.retrieve import RetrievalConfig

    return RetrievalConfig(mode=args.mode, k=args.k, min_score=args.min_score, candidates=max(args.candidates, args.k),
                           fusion=args.fusion, alpha=args.alpha,
                           multi_query=args.multi_query, hyde=args.hyde, rerank=args.rerank, mmr=args.mmr,
                           mmr_lambda=args.mmr_lambda, where=args.where or []).check()


def cmd_index(args) -> int:
    from tunelab.rag.ingest import index
    from tunelab.rag.split import SplitConfig

    split = SplitConfig(kind=args.split, size=args.chunk_size or (256 if args.split == "tokens" else 600),
                        overlap=args.overlap if args.overlap is not None else (32 if args.split == "tokens" else 100),
                        tokenizer=args.tokenizer).check()
    with _progress() as progress:
        report = index(args.paths, args.store, embedder=args.embedder, split=split, backend=args.backend,
                       url=args.url, field=args.field, prune=args.prune, ann=args.ann, progress=progress)
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


def _pipeline(args):
    from tunelab.infer.load import load_engine
    from tunelab.rag.pipeline import REFUSAL, RagConfig, RagPipeline

    engine = load_engine(args.model, adapters=args.adapter, max_batch_size=8)
    cfg = RagConfig(retrieval=_retrieval(args), refusal=args.refusal or REFUSAL, injection=args.injection,
                    max_new_tokens=args.max_new_tokens)
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
    if args.model or args.adapter:
        pipeline, engine = _pipeline(args)
    if args.judge or args.judge_url:
        from tunelab.eval.judge import JudgeConfig, make_judge

        judge = make_judge(JudgeConfig(model=args.judge, base_url=args.judge_url, endpoint_model=args.judge_model,
                                       max_new_tokens=8))
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    try:
        with _progress() as progress:
            report = evaluate(args.qa, args.store, modes=modes, retrieval=_retrieval(args), pipeline=pipeline,
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


def _retrieval_flags(p: argparse.ArgumentParser, k: int = 5, min_score: float | None = None) -> None:
    p.add_argument("--store", required=True, help="the store folder tunelab rag index wrote")
    p.add_argument("--mode", default="hybrid", help="dense | bm25 | hybrid (both, fused)")
    p.add_argument("--fusion", default="convex", help="hybrid: convex (normalised scores, weighted by --alpha) | rrf "
                   "(reciprocal rank fusion)")
    p.add_argument("--alpha", type=float, default=0.5, help="convex fusion: the dense weight (BM25 gets 1 - alpha)")
    p.add_argument("-k", type=int, default=k, help="chunks to retrieve")
    p.add_argument("--min-score", type=float, default=min_score, help="least cosine similarity of a chunk to the "
                   "question; below it the chunk is dropped (and with none left, ask refuses)")
    p.add_argument("--candidates", type=int, default=50, help="chunks each retriever proposes before fusion")
    p.add_argument("--where", action="append", help="metadata filter, e.g. source=docs/guide.md, page>=2, "
                   "'source in a.md,b.md' (repeatable; all must hold)")
    p.add_argument("--multi-query", type=int, default=0, help="also search N rewrites of the question by the model")
    p.add_argument("--hyde", action="store_true", help="also search with a passage the model writes (HyDE)")
    p.add_argument("--rerank", default=None, help="a cross-encoder (folder or Hub id) that reorders the candidates")
    p.add_argument("--mmr", action="store_true", help="diversify the chunks (maximal marginal relevance)")
    p.add_argument("--mmr-lambda", type=float, default=0.7)


def _answer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="alias, folder, .gguf or Hub id (default smollm2-135m-instruct)")
    p.add_argument("--adapter", default=None, help="a training run folder whose adapter to answer with")
    p.add_argument("--refusal", default=None, help="the answer when nothing relevant is retrieved")
    p.add_argument("--injection", default="flag", help="chunks that look like instructions to the model: flag "
                   "(label and report) | drop | off")
    p.add_argument("--max-new-tokens", type=int, default=256)


def add_parser(sub) -> None:
    """Register `tunelab rag ...` on the main command table."""
    rag = sub.add_parser("rag", help="retrieval-augmented generation over your documents: index, search, ask, eval")
    commands = rag.add_subparsers(dest="rag_command", required=True)

    p = commands.add_parser("index", help="add files and folders to a store (re-running adds only what changed)")
    p.add_argument("paths", nargs="+", help=".txt .md .html .pdf .docx .json .jsonl files, or folders of them")
    p.add_argument("--store", required=True, help="the store folder (created if missing)")
    p.add_argument("--backend", default=None, help="for a new store: lance (embedded, default) | qdrant (a server "
                   "with --url, else local mode in the store folder); an existing store keeps its own")
    p.add_argument("--url", default=None, help="Qdrant server URL, e.g. http://localhost:6333")
    p.add_argument("--embedder", default="all-minilm-l6-v2", help="sentence-transformers model (packaged "
                   "all-minilm-l6-v2, a folder or a Hub id)")
    p.add_argument("--split", default="auto", help="auto (markdown for .md/.html/.docx, else recursive) | recursive "
                   "| markdown | tokens")
    p.add_argument("--chunk-size", type=int, default=None, help="characters (600), or tokens for --split tokens (256)")
    p.add_argument("--overlap", type=int, default=None, help="characters (100), or tokens for --split tokens (32)")
    p.add_argument("--tokenizer", default="embedder", help="for --split tokens: embedder (its own) or a model name")
    p.add_argument("--field", default="text", help="the text field of JSON/JSONL records (dotted for nested ones)")
    p.add_argument("--prune", action="store_true", help="also remove files that are gone from the folders given")
    p.add_argument("--ann", action="store_true", help="build an approximate index (IVF_FLAT) for stores beyond a few "
                   "million chunks; smaller stores are searched exactly in memory")
    p.set_defaults(func=cmd_index)

    p = commands.add_parser("search", help="the chunks retrieval finds for a query, with scores")
    p.add_argument("query")
    _retrieval_flags(p)
    p.set_defaults(func=cmd_search)

    p = commands.add_parser("ask", help="answer a question from the store, citing sources")
    p.add_argument("question", nargs="?", help="the question (or --chat for a conversation)")
    _retrieval_flags(p, min_score=0.3)
    _answer_flags(p)
    p.add_argument("--chat", action="store_true", help="a conversation: follow-ups are made standalone with memory")
    p.add_argument("--json", action="store_true", help="print the answer, citations and sources as JSON")
    p.set_defaults(func=cmd_ask)

    p = commands.add_parser("eval", help="retrieval hit@k / recall@k / MRR / nDCG per mode; with --model, answer "
                            "exact match, F1 and faithfulness")
    p.add_argument("qa", help="JSONL: question, answer(s), and the gold passage (context) or gold_source")
    _retrieval_flags(p)
    _answer_flags(p)
    p.add_argument("--modes", default="dense,bm25,hybrid", help="retrieval modes compared side by side")
    p.add_argument("--judge", default=None, help="a local judge model for faithfulness (else word overlap only)")
    p.add_argument("--judge-url", default=None, help="an OpenAI-compatible judge endpoint (key from OPENAI_API_KEY)")
    p.add_argument("--judge-model", default=None, help="the model name to ask the judge endpoint for")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--output", default=None, help="write the report (with samples) to this JSON file")
    p.set_defaults(func=cmd_eval)

