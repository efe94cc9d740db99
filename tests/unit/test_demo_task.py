"""The built-in requests-to-JSON task: data generation and its metric."""

import json

from tunelab.demo.requests import make_examples
from tunelab.eval.json_match import parse_json_object, score_json


def test_examples_are_seeded_and_gold_matches_answer():
    a, b = make_examples(30, seed=5), make_examples(30, seed=5)
    assert a == b
    assert make_examples(30, seed=6) != a
    for ex in a:
        assert json.loads(ex["messages"][-1]["content"]) == ex["gold"]
        assert ex["gold"]["intent"] in {"schedule_meeting", "send_message", "set_reminder"}
        assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant"]


def test_train_and_test_splits_differ():
    train = {e["messages"][1]["content"] for e in make_examples(400, seed=1)}
    test = [e["messages"][1]["content"] for e in make_examples(60, seed=2)]
    assert sum(t in train for t in test) < len(test) / 2


def test_score_json():
    gold = [{"a": 1, "b": "X"}, {"a": 2, "b": "y"}, {"a": 3}]
    preds = ['{"a": 1, "b": "x"}', 'Sure! {"a": 2, "b": "z"} done', "not json"]
    s = score_json(preds, gold)
    assert s["json_valid"] == 200 / 3
    assert s["exact_match"] == 100 / 3
    assert s["field_accuracy"] == 100 * 3 / 5
    assert parse_json_object("[1, 2]") is None
    assert score_json(['{"a": 1, "b": "X", "extra": 0}'], gold[:1])["exact_match"] == 0
