"""Data synthesis: Self-Instruct's and Evol-Instruct's filters, answers, pairs, resuming, and the teacher's errors.

A scripted teacher (the Teacher protocol: conversations in, (reply, cut off) out) makes the filters'
outcomes exact; one test runs the real local teacher on a tiny model through the command line.
"""

from __future__ import annotations

import json
import socket

import pytest

from tunelab.cli import main
from tunelab.data.synth.answers import PairsConfig, answer, pairs
from tunelab.data.synth.evol import EvolConfig, evolve
from tunelab.data.synth.output import Output
from tunelab.data.synth.self_instruct import SelfInstructConfig, read_seeds, self_instruct, task_rule
from tunelab.data.synth.teacher import EndpointTeacher, TeacherConfig
from tunelab.errors import ConfigError, ModelError


class Scripted:
    """Replies in turn from a list, cycling; records every conversation it was sent."""

    def __init__(self, replies):
        self.replies, self.sent, self.i = list(replies), [], 0

    def complete(self, conversations, decoding):
        out = []
        for c in conversations:
            self.sent.append(c)
            reply = self.replies[self.i % len(self.replies)]
            self.i += 1
            out.append(reply if isinstance(reply, tuple) else (reply, False))
        return out


def test_the_shipped_seeds_and_the_task_filters():
    seeds = read_seeds(None)
    assert len(seeds) == 30 and all(s["instruction"] and s["output"] for s in seeds)
    cfg = SelfInstructConfig()
    assert task_rule("Write a short poem about the sea at night.", cfg) is None
    assert task_rule("Draw a map.", cfg) == "blocked_word"
    assert task_rule("Go.", cfg) == "too_short"
    assert task_rule("- List three fruits please.", cfg) == "starts_with_punctuation"
    assert task_rule("Here's a new task:", cfg) == "preamble"


def test_self_instruct_keeps_novel_answered_tasks_and_counts_every_drop(tmp_path):
    tasks = ["1. Name three rivers in Africa and one fact about each.", "Name three rivers in Africa and a fact each.",
             "Describe the picture of a cat.", "Here's a new task:", "List five uses of a paperclip at the office."]
    answers_ = ["The Nile, the Congo and the Niger.", ("A paperclip can hold paper and", True)]
    class Split:  # tasks for task prompts, answers for the rest
        def complete(self, conversations, decoding):
            asks_task = "Write one new task" in conversations[0][-1]["content"]
            return (task_teacher if asks_task else answer_teacher).complete(conversations, decoding)

    task_teacher, answer_teacher = Scripted(tasks), Scripted(answers_)
    out = Output(tmp_path / "si.jsonl", resume=False)
    summary = self_instruct(Split(), out, SelfInstructConfig(count=1, batch=5, max_rounds=1), "scripted")
    out.close()
    assert summary["kept"] == 1 and summary["dropped"] == {"similar": 1, "blocked_word": 1, "preamble": 1,
                                                           "unfinished_answer": 1}
    record = json.loads((tmp_path / "si.jsonl").read_text())
    assert record["instruction"] == "Name three rivers in Africa and one fact about each."  # "1. " stripped
    assert record["provenance"] == {"method": "self-instruct", "teacher": "scripted",
                                    "prompt_version": "self-instruct-v1", "seed": 0, "round": 0}
    shown = task_teacher.sent[0][-1]["content"]
    assert shown.count("\n") >= 8 and "Write one new task" in shown  # 8 examples, then the ask


def test_a_stopped_run_resumes_from_its_output_and_redoes_nothing(tmp_path):
    path = tmp_path / "answers.jsonl"
    records = [{"instruction": f"Question {i}?"} for i in range(5)]
    out = Output(path, resume=False)
    answer(Scripted([f"Answer {i}." for i in range(5)]), records[:3], out, "t")
    out.close()
    path.write_text(path.read_text() + '{"instruction": "Question 3?", "out')  # a crash mid-line
    with pytest.raises(ConfigError, match="add --resume"):
        Output(path, resume=False)
    again = Scripted(["Late answer."])
    out = Output(path, resume=True)
    summary = answer(again, records, out, "t")
    out.close()
    assert summary["kept"] == 5 and [c[-1]["content"] for c in again.sent] == ["Question 3?", "Question 4?"]
    assert [json.loads(line)["instruction"] for line in path.read_text().splitlines()] == \
        [f"Question {i}?" for i in range(5)]


def test_evol_instruct_eliminates_as_the_paper_does(tmp_path):
    originals = [{"instruction": f"Explain topic {i} to a child."} for i in range(5)]
    rewrites = ["Explain topic 0 to a child.",  # no gain
                "Rewrite the #Given Prompt# to be harder.",  # copies the evolving prompt
                "#Rewritten Prompt#: Compare volcanoes and geysers for a ten-year-old, with two examples each.",
                "Describe how bees dance to share where food is, step by step.",  # answered with an apology
                "Write a limerick about a robot that learns to cook pasta."]  # answered with punctuation only
    replies = ["ok", "ok", "Water heats underground.", "Sorry, I cannot.", "..."]

    class Split:
        def complete(self, conversations, decoding):
            rewriting = "#Given Prompt#" in conversations[0][-1]["content"]
            return (rewrite if rewriting else reply).complete(conversations, decoding)

    rewrite, reply = Scripted(rewrites), Scripted(replies)
    out = Output(tmp_path / "evol.jsonl", resume=False)
    summary = evolve(Split(), originals, out, EvolConfig(), "scripted")
    out.close()
    assert summary["dropped"] == {"no_gain": 1, "copied_prompt": 1, "refused": 1, "empty_answer": 1}
    kept = json.loads((tmp_path / "evol.jsonl").read_text())
    assert kept["instruction"].startswith("Compare volcanoes") and kept["provenance"]["source"] == \
        "Explain topic 2 to a child." and kept["provenance"]["evolution"] in ("constraints", "deepen", "concretize",
                                                                               "reasoning", "breadth")


def test_pairs_ranked_by_a_judge_in_both_orders(tmp_path):
    records = [{"prompt": "Say hello."}, {"prompt": "Say bye."}]

    class Teacher:
        def __init__(self):
            # both pairs in order A-B, then both swapped: pair 1 agrees that its first answer wins, pair 2 does not
            self.verdicts = iter(["[[A]]", "[[A]]", "[[B]]", "[[A]]"])

        def complete(self, conversations, decoding):
            if "impartial judge" in conversations[0][0]["content"]:
                return [(next(self.verdicts), False) for _ in conversations]
            return [(f"{c[-1]['content']} v{decoding.seed % 2}", False) for c in conversations]

    out = Output(tmp_path / "pairs.jsonl", resume=False)
    summary = pairs(Teacher(), records, out, PairsConfig(), "t")
    out.close()
    assert summary["kept"] == 1 and summary["dropped"] == {"tie": 1}
    pair = json.loads((tmp_path / "pairs.jsonl").read_text())
    assert pair["prompt"] == "Say hello." and pair["chosen"] == "Say hello. v0" and pair["rejected"] == "Say hello. v1"


def test_an_endpoint_that_cannot_be_reached_is_named_and_the_key_is_not(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-123")
    teacher = EndpointTeacher(TeacherConfig(teacher_url=f"http://127.0.0.1:{port}/v1", teacher_model="big",
                                            max_retries=0, timeout=5))
    out = Output(tmp_path / "a.jsonl", resume=False)
    with pytest.raises(ModelError) as error:
        answer(teacher, [{"instruction": "Hi?"}], out, "big")
    out.close()
    assert f"127.0.0.1:{port}" in str(error.value) and "sk-secret" not in str(error.value)
    assert (tmp_path / "a.jsonl").exists()  # what there is stays, for --resume


def test_the_synth_command_runs_a_local_teacher(tmp_path, tiny_model_dir, capsys):
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps({"instruction": f"Question {i}"}) + "\n" for i in range(3)))
    code = main(["data", "synth", "answers", str(source), "-o", str(tmp_path / "a.jsonl"), "--teacher",
                 str(tiny_model_dir), "--max-new-tokens", "512"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["candidates"] == 3
    for line in (tmp_path / "a.jsonl").read_text().splitlines():
        assert json.loads(line)["provenance"]["teacher"] == str(tiny_model_dir)
