"""Formats: each record shape is detected and normalised; data.format overrides; unknown shapes are named."""

from __future__ import annotations

import json

import pytest

from tunelab.config import DataConfig
from tunelab.data import Record, detect_format, load_records, normalise
from tunelab.data.readers import BadRecord
from tunelab.errors import DataError


def rec(data: dict) -> Record:
    return Record(data, "f.jsonl:7")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


CASES = [
    pytest.param({"instruction": "Add", "input": "2 and 3", "output": "5"}, "instruction",
                 {"messages": [user("Add\n\n2 and 3"), assistant("5")]}, id="alpaca-with-input"),
    pytest.param({"instruction": "Say hi", "input": "", "output": "hi"}, "instruction",
                 {"messages": [user("Say hi"), assistant("hi")]}, id="alpaca-empty-input"),
    pytest.param({"instruction": "Say hi", "output": "hi", "system": "Be brief."}, "instruction",
                 {"messages": [system("Be brief."), user("Say hi"), assistant("hi")]}, id="alpaca-no-input-system"),
    pytest.param({"messages": [system("S"), user("u1"), assistant("a1"), user("u2"), assistant("a2")]}, "chat",
                 {"messages": [system("S"), user("u1"), assistant("a1"), user("u2"), assistant("a2")]},
                 id="chat-system-multi-turn"),
    pytest.param({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "u1"},
                                    {"from": "gpt", "value": "a1"}, {"from": "human", "value": "u2"},
                                    {"from": "gpt", "value": "a2"}]}, "chat",
                 {"messages": [system("S"), user("u1"), assistant("a1"), user("u2"), assistant("a2")]},
                 id="sharegpt"),
    pytest.param({"prompt": "p", "completion": "c"}, "prompt_completion",
                 {"messages": [user("p"), assistant("c")]}, id="prompt-completion"),
    pytest.param({"text": "raw text"}, "text", {"text": "raw text"}, id="text"),
    pytest.param({"prompt": "p", "chosen": "good", "rejected": "bad"}, "preference",
                 {"prompt": "p", "chosen": "good", "rejected": "bad"}, id="preference"),
    pytest.param({"text": "great film", "label": "positive"}, "classification",
                 {"text": "great film", "label": "positive"}, id="classification-str"),
    pytest.param({"text": "great film", "label": 1}, "classification",
                 {"text": "great film", "label": 1}, id="classification-int"),
    pytest.param({"text": "t", "label": 0, "id": 17, "source": "web"}, "classification",
                 {"text": "t", "label": 0}, id="extra-fields-ignored"),
]


@pytest.mark.parametrize("data, fmt, normalised", CASES)
def test_detect_and_normalise(data, fmt, normalised):
    assert detect_format(rec(data)) == fmt
    assert normalise(rec(data), fmt) == normalised


def test_detection_through_a_file(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    loaded = load_records(str(path), DataConfig())
    assert loaded.format == "chat"
    assert loaded.records[2] == {"messages": [user("q2"), assistant("a2")]}


def test_explicit_format_overrides_detection(tmp_path):
    path = tmp_path / "d.jsonl"
    row = {"prompt": "p", "completion": "c", "text": "the whole thing", "label": "x"}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert load_records(str(path), DataConfig()).format == "prompt_completion"
    forced = load_records(str(path), DataConfig(format="text"))
    assert forced.format == "text" and forced.records == [{"text": "the whole thing"}]
    forced = load_records(str(path), DataConfig(format="classification"))
    assert forced.records == [{"text": "the whole thing", "label": "x"}]


def test_explicit_format_that_does_not_fit_names_the_missing_field(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "t"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{path}:1: missing field 'instruction'"):
        load_records(str(path), DataConfig(format="instruction"))


def test_unknown_format_name_lists_the_known_ones():
    with pytest.raises(DataError) as info:
        normalise(rec({"text": "t"}), "alpaca")
    message = str(info.value)
    assert "'alpaca'" in message
    for name in ("instruction", "chat", "prompt_completion", "text", "preference", "classification"):
        assert name in message


def test_unknown_fields_are_named(tmp_path):
    with pytest.raises(DataError) as info:
        detect_format(rec({"question": "q", "answer": "a"}))
    message = str(info.value)
    assert message.startswith("f.jsonl:7: ")
    assert "'answer'" in message and "'question'" in message
    assert "instruction, output" in message and "data.format" in message  # what was expected, and the fix

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"query": "q", "response": "r"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"'query', 'response'"):
        load_records(str(path), DataConfig())


@pytest.mark.parametrize("data, fmt, fragment", [
    ({"messages": []}, "chat", "empty list"),
    ({"messages": [user("only a question")]}, "chat", "no assistant turn"),
    ({"messages": [{"role": "robot", "content": "x"}, assistant("a")]}, "chat", "messages[0] has role 'robot'"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": 3}]}, "chat",
     "conversations[1].content must be a string"),
    ({"messages": "hello"}, "chat", "field 'messages' must be list"),
    ({"text": "t", "label": True}, "classification", "field 'label' must be str or int, got bool"),
    ({"text": "t", "label": [1]}, "classification", "field 'label' must be str or int, got list"),
    ({"prompt": "p", "chosen": "c", "rejected": None}, "preference", "missing field 'rejected'"),
    ({"instruction": "i", "input": 5, "output": "o"}, "instruction", "field 'input' must be str"),
])
def test_bad_records_name_where_and_what(data, fmt, fragment):
    with pytest.raises(BadRecord) as info:
        normalise(rec(data), fmt)
    assert str(info.value).startswith("f.jsonl:7: ")
    assert fragment in str(info.value)
