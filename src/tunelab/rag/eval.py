"""`tunelab rag eval`: how well the store finds the gold passages, and how well answers use them.

A QA file is JSONL, one question per line:

    {"question": "...", "answer": "..." | [...],            # gold answers (optional)
     "context": "the gold passage text",                    # or "gold_source": "guide.md" (+ "gold_page": 3)
     "answer_start": 120}                                   # optional: the answer's offset in the context

SQuAD-style rows (`answers: {"text": [...], "answer_start": [...]}`) are read as they are.

A chunk is relevant when it comes from the gold passage (its text lies inside `context`, or its
source is `gold_source`), and, when the answer's offset is known, when it overlaps the answer.
Retrieval: hit@k, recall@k (relevant chunks found / relevant chunks in the store), MRR@10 and
nDCG@10 (binary gains). Answers: SQuAD exact match and token F1, how often the system refused
and cited, and faithfulness: whether each cited sentence is supported by the sources it cites,
graded by a judge model when one is given, and always by word overlap (the share of the
sentence's content words found in its cited sources).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.readers import read_records
from tunelab.errors import DataError
from tunelab.rag.documents import Chunk

KS = (1, 3, 5, 10)
FAITHFUL_PROMPT = ("Source:\n{source}\n\nClaim: {claim}\n\nIs the claim fully supported by the source? "
                   "Answer with one word, yes or no.")


@dataclass
class QA:
    question: str
    answers: list[str] = field(default_factory=list)
    context: str | None = None
    answer_start: int | None = None
    gold_source: str | None = None
    gold_page: int | None = None
    where: str = ""

    def relevant(self, chunk: Chunk) -> bool:
        if self.gold_source is not None:
            name = self.gold_source
            if not (chunk.source == name or chunk.source.endswith("/" + name.lstrip("./"))):
                return False
            return self.gold_page is None or chunk.page == self.gold_page
        if self.context is None or chunk.text not in self.context:
            return False
        if self.answer_start is None or not self.answers:
            return True
        start = chunk.start if self.context[chunk.start:chunk.end] == chunk.text else self.context.find(chunk.text)
        end_answer = self.answer_start + len(self.answers[0])
        return start < end_answer and self.answer_start < start + len(chunk.text)  # the spans overlap


def read_qa(path: str | Path, limit: int | None = None) -> list[QA]:
    """The questions of a QA file, each checked; DataError names file:line and the missing field."""
    out = []
    for record in read_records(str(path)):
        d = record.data
        if not isinstance(d.get("question"), str) or not d["question"].strip():
            raise DataError(f"{record.where}: needs a 'question' text")
        answers = d.get("answers", d.get("answer"))
        start = d.get("answer_start")
        if isinstance(answers, dict):  # SQuAD: {"text": [...], "answer_start": [...]}
            starts = answers.get("answer_start") or [None]
            answers, start = answers.get("text", []), starts[0] if start is None else start
        answers = [answers] if isinstance(answers, str) else [str(a) for a in answers or []]
        qa = QA(d["question"], answers, d.get("context"), start, d.get("gold_source"), d.get("gold_page"),
                record.where)
        if qa.context is None and qa.gold_source is None:
            raise DataError(f"{record.where}: needs the gold passage: a 'context' text or a 'gold_source' file name "
                            "(retrieval is scored against it)")
        out.append(qa)
        if limit and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{path}: no questions in this file")
    return out


def retrieval_metrics(ranked: list[list[Chunk]], questions: list[QA], store_chunks: list[Chunk]) -> dict:
    """hit@k, recall@k, MRR@10 and nDCG@10, averaged over the questions that have a relevant chunk."""
    sums: dict[str, float] = {}
    n = 0
    for chunks, qa in zip(ranked, questions):
        total = sum(qa.relevant(c) for c in store_chunks)
        if not total:
            continue  # the gold passage is not in the store (or no chunk holds the answer)
        n += 1
        rel = [qa.relevant(c) for c in chunks[:max(KS)]]
        for k in KS:
            sums[f"hit@{k}"] = sums.get(f"hit@{k}", 0) + any(rel[:k])
            sums[f"recall@{k}"] = sums.get(f"recall@{k}", 0) + sum(rel[:k]) / total
        first = next((i for i, r in enumerate(rel) if r), None)
        sums["mrr@10"] = sums.get("mrr@10", 0) + (1 / (first + 1) if first is not None else 0)
        dcg = sum(1 / math.log2(i + 2) for i, r in enumerate(rel) if r)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(total, max(KS))))
        sums["ndcg@10"] = sums.get("ndcg@10", 0) + dcg / ideal
    out = {key: round(value / n, 4) for key, value in sums.items()} if n else {}
    out["questions"] = n
    out["without_gold_in_store"] = len(questions) - n
    return out


def cited_claims(answer) -> list[tuple[str, list[Chunk]]]:
    """(sentence without its markers, the chunks it cites) for each sentence of an answer that cites."""
    from tunelab.rag.pipeline import parse_citations, sentences, strip_citations

    by_number = {s.number: s.chunk for s in answer.sources}
    claims = []
    for sentence in sentences(answer.text):
        numbers = parse_citations(sentence, len(answer.sources))
        claim = strip_citations(sentence).strip()
        if numbers and claim:
            claims.append((claim, [by_number[i] for i in numbers]))
    return claims


def overlap_support(claim: str, chunks: list[Chunk]) -> float:
    """The share of the claim's content words (SQuAD-normalised) found in the cited chunks."""
    from tunelab.eval.metrics import normalize_answer

    words = normalize_answer(claim).split()
    source = set(normalize_answer(" ".join(c.text for c in chunks)).split())
    return sum(w in source for w in words) / len(words) if words else 1.0


def answer_metrics(answers: list, questions: list[QA], judge=None) -> dict:
    """EM/F1 against gold answers, refusal and citation rates, faithfulness by overlap (and by the judge)."""
    from tunelab.eval.metrics import exact_match, token_f1

    graded = [(a, q) for a, q in zip(answers, questions) if q.answers]
    out = {"answered": len(answers), "refused": round(sum(a.refused for a in answers) / len(answers), 4),
           "cites": round(sum(bool(a.citations) for a in answers) / len(answers), 4)}
    if graded:
        from tunelab.rag.pipeline import strip_citations

        preds = [strip_citations(a.text) for a, _ in graded]  # scored without the [n] markers
        golds = [q.answers for _, q in graded]
        out["exact_match"], out["f1"] = exact_match(preds, golds), token_f1(preds, golds)
    claims = [c for a in answers if not a.refused for c in cited_claims(a)]
    out["claims"] = len(claims)
    if claims:
        out["faithfulness_overlap"] = round(sum(overlap_support(c, cs) for c, cs in claims) / len(claims), 4)
        if judge is not None:
            prompts = [[{"role": "user", "content": FAITHFUL_PROMPT.format(
                source="\n\n".join(c.text for c in cs), claim=claim)}] for claim, cs in claims]
            verdicts = judge.complete(prompts)
            yes = [bool(re.match(r"\W*yes\b", v.strip(), re.IGNORECASE)) for v in verdicts]
            out["faithfulness_judge"] = round(sum(yes) / len(yes), 4)
    return out


def evaluate(qa_file: str | Path, store_dir: str | Path, modes: tuple[str, ...] = ("dense", "bm25", "hybrid"),
             retrieval=None, pipeline=None, answer_mode: str | None = None, judge=None, limit: int | None = None,
             progress=None) -> dict:
    """Retrieval metrics for each mode, and answer metrics when a `RagPipeline` is given.

    Args:
        retrieval: a RetrievalConfig whose other settings (filters, rerank, MMR...) every mode shares.
        pipeline: answers the questions (in `answer_mode`, default the last of `modes`).
        judge: a `tunelab.eval.judge` Judge for faithfulness.
    Returns:
        {"retrieval": {mode: metrics}, "answers": metrics or None, "samples": [...]}.
    """

    from tunelab.rag.retrieve import RetrievalConfig, Retriever

    questions = read_qa(qa_file, limit)
    base = (retrieval or RetrievalConfig()).model_copy(update={"min_score": None})
    base = base.model_copy(update={"k": max(KS), "candidates": max(base.candidates, max(KS))})
    report: dict = {"qa_file": str(qa_file), "store": str(store_dir), "retrieval": {}, "answers": None}
    embedder, store_chunks = None, None
    for mode in modes:
        retriever = Retriever(store_dir, base.model_copy(update={"mode": mode}),
                              llm=pipeline.complete if pipeline else None, embedder=embedder)
        embedder = retriever.embedder
        store_chunks = store_chunks if store_chunks is not None else retriever.store.chunks()
        ranked = []
        for i, qa in enumerate(questions):
            ranked.append([h.chunk for h in retriever.retrieve(qa.question)])
            if progress:
                progress(f"retrieval ({mode})", i + 1, len(questions))
        retriever.close()
        report["retrieval"][mode] = retrieval_metrics(ranked, questions, store_chunks)
    if pipeline is not None:
        answers = pipeline.ask_many([q.question for q in questions])
        report["answers"] = answer_metrics(answers, questions, judge)
        report["samples"] = [{"question": q.question, "gold": q.answers, "answer": a.text, "refused": a.refused,
                              "citations": a.citations, "sources": [s.chunk.where() for s in a.sources]}
                             for q, a in zip(questions, answers)]
    return report


def save_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return path
