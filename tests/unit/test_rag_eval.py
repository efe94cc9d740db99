"""RAG evaluation: retrieval metrics by hand, QA files, answer metrics and the faithfulness judge."""

from __future__ import annotations

import json
import math

import pytest

from tunelab.errors import DataError
from tunelab.rag.documents import Chunk
from tunelab.rag.eval import QA, answer_metrics, read_qa, retrieval_metrics
from tunelab.rag.pipeline import Answer, Source


def _chunk(name: str, text: str, source: str, page: int | None = None, start: int = 0) -> Chunk:
    return Chunk(text=text, source=source, doc_hash="h", page=page, start=start, end=start + len(text), id=name)


CONTEXT = "alpha beta gamma delta"
STORE = {
    "a1": _chunk("a1", "first part of a", "/d/a.txt"),
    "a2": _chunk("a2", "second part of a", "/d/a.txt", start=20),
    "b1": _chunk("b1", "all of b", "/d/b.txt"),
    "c1": _chunk("c1", "page one of c", "/d/c.pdf", page=1),
    "c2": _chunk("c2", "page two of c", "/d/c.pdf", page=2),
    "c3": _chunk("c3", "page three of c", "/d/c.pdf", page=3),
    "k1": _chunk("k1", "alpha beta", "/d/rec.jsonl", page=1, start=0),
    "k2": _chunk("k2", "gamma delta", "/d/rec.jsonl", page=1, start=11),
}


def test_retrieval_metrics_on_a_hand_built_example():
    questions = [
        QA("q1", gold_source="a.txt"),  # relevant: a1, a2
        QA("q2", gold_source="c.pdf", gold_page=2),  # relevant: c2
        QA("q3", gold_source="missing.txt"),  # not in the store: left out of the averages
        QA("q4", answers=["delta"], context=CONTEXT, answer_start=CONTEXT.index("delta")),  # relevant: k2 only
    ]
    ranked = [["b1", "a1", "c1", "a2"], ["c2", "a1"], ["a1"], ["k1", "k2", "a1"]]
    metrics = retrieval_metrics([[STORE[i] for i in r] for r in ranked], questions, list(STORE.values()))
    # per question (q1, q2, q4): first relevant rank 2, 1, 2; relevant in store 2, 1, 1
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    expected = {
        "hit@1": (0 + 1 + 0) / 3, "hit@3": 1.0, "hit@5": 1.0, "hit@10": 1.0,
        "recall@1": (0 + 1 + 0) / 3, "recall@3": (0.5 + 1 + 1) / 3, "recall@5": 1.0, "recall@10": 1.0,
        "mrr@10": (0.5 + 1 + 0.5) / 3, "ndcg@10": (ndcg_q1 + 1 + 1 / math.log2(3)) / 3,
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-4), key
    assert metrics["questions"] == 3 and metrics["without_gold_in_store"] == 1


def test_relevance_by_context_and_answer_offset():
    qa = QA("q", answers=["delta"], context=CONTEXT, answer_start=17)
    assert not qa.relevant(STORE["k1"]) and qa.relevant(STORE["k2"])
    assert QA("q", context=CONTEXT).relevant(STORE["k1"])  # no offset: any chunk of the passage
    assert not QA("q", context=CONTEXT).relevant(STORE["a1"])
    assert QA("q", gold_source="d/c.pdf").relevant(STORE["c3"])
    assert not QA("q", gold_source="c.pdf", gold_page=1).relevant(STORE["c3"])


def test_read_qa_reads_squad_rows_and_names_the_bad_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": "How many points?", "context": "They gave up 308 points.",
             "answers": {"text": ["308", "308 points"], "answer_start": [13, 13]}},
            {"question": "Where?", "answer": "Paris", "gold_source": "guide.md", "gold_page": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    first, second = read_qa(path)
    assert (first.question, first.answers, first.answer_start) == ("How many points?", ["308", "308 points"], 13)
    assert first.context == "They gave up 308 points." and first.where.endswith("qa.jsonl:1")
    assert (second.answers, second.gold_source, second.gold_page, second.context) == (["Paris"], "guide.md", 3, None)
    assert len(read_qa(path, limit=1)) == 1

    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"question": "No gold?", "answer": "x"}) + "\n",
                    encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_qa(path)
    assert "qa.jsonl:2" in str(e.value) and "context" in str(e.value) and "gold_source" in str(e.value)
    path.write_text(json.dumps({"context": "c"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="qa.jsonl:1.*question"):
        read_qa(path)


def _answer(text: str, sources: list[str], citations: list[int], refused: bool = False) -> Answer:
    numbered = [Source(i, Chunk(text=t, source=f"/d/{i}.txt", doc_hash="h"), 1.0) for i, t in enumerate(sources, 1)]
    return Answer("q", "q", text, numbered, citations, refused)


class FakeJudge:
    def __init__(self, verdicts):
        self.verdicts, self.conversations = verdicts, []

    def complete(self, conversations):
        self.conversations += conversations
        return self.verdicts[:len(conversations)]


def _answers():
    return [
        _answer("Paris is the capital of France [1].", ["The capital of France is Paris."], [1]),
        _answer("Berlin is big [1]. This sentence cites nothing.", ["Berlin is a city."], [1]),
        _answer("I could not find the answer.", ["Unrelated."], [], refused=True),
        _answer("Rome [2].", ["Madrid.", "Rome is old."], [2]),
    ]


def test_faithfulness_by_word_overlap_and_by_a_judge():
    answers = _answers()
    questions = [QA("q", answers=["Paris"], context="x"), QA("q", context="x"), QA("q", context="x"),
                 QA("q", answers=["Rome"], context="x")]
    metrics = answer_metrics(answers, questions)
    # claims: "Paris is the capital of France" (all words in [1]), "Berlin is big" (2 of 3), "Rome" (1 of 1)
    assert metrics["claims"] == 3
    assert metrics["faithfulness_overlap"] == pytest.approx((1 + 2 / 3 + 1) / 3, abs=1e-4)
    assert metrics["refused"] == 0.25 and metrics["cites"] == 0.75 and metrics["answered"] == 4
    assert "faithfulness_judge" not in metrics

    judge = FakeJudge(["Yes.", "no", " yes, fully"])
    metrics = answer_metrics(answers, questions, judge=judge)
    assert metrics["faithfulness_judge"] == pytest.approx(2 / 3, abs=1e-4)
    assert len(judge.conversations) == 3
    berlin = judge.conversations[1][0]["content"]
    assert "Claim: Berlin is big" in berlin and "Berlin is a city." in berlin and "[1]" not in berlin
    assert "Rome is old." in judge.conversations[2][0]["content"]
    assert "Madrid" not in judge.conversations[2][0]["content"]  # only the cited source


def test_exact_match_ignores_citation_markers():
    answers = [_answer("Paris [1].", ["Paris is the capital."], [1])]
    metrics = answer_metrics(answers, [QA("q", answers=["Paris"], context="x")])
    assert metrics["exact_match"] == 1.0 and metrics["f1"] == 1.0
