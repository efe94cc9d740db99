"""GRPO's reward functions: the `#### <number>` format, exact answers, and loading by name."""

from __future__ import annotations

import pytest

from tunelab.errors import ConfigError
from tunelab.training.rewards import (
    exact_answer_reward,
    final_answer,
    format_reward,
    has_answer_reward,
    load_reward,
)


@pytest.mark.parametrize("text, number", [
    ("so 3 + 4 = 7\n#### 7", "7"),
    ("#### 1,250", "1250"),
    ("#### -3.50 ", "-3.5"),
    ("#### 12.", "12"),
    ("the answer is 7", None),
    ("#### 7 apples", None),  # more text after the number: not the format
    ("#### seven", None),
])
def test_final_answer(text, number):
    assert final_answer(text) == number


def test_format_reward_reads_text_and_chat_completions():
    completions = ["x\n#### 5", "no answer", [{"role": "assistant", "content": "ok #### 2"}]]
    assert format_reward(prompts=[None] * 3, completions=completions) == [1.0, 0.0, 1.0]


def test_has_answer_rewards_the_marker_anywhere():
    assert has_answer_reward(None, ["#### 24\nThe answer is: 24", "24", "#### x"]) == [1.0, 0.0, 0.0]


def test_exact_answer_compares_with_the_gold_number():
    gold = ["48/2 = 24\n#### 72", "#### 1,000", "5"]
    answers = ["#### 72", "#### 1000", "#### 6"]
    assert exact_answer_reward(prompts=None, completions=answers, answer=gold) == [1.0, 1.0, 0.0]
    with pytest.raises(ConfigError, match="no 'answer' field"):
        exact_answer_reward(prompts=None, completions=answers)


def test_rewards_load_by_name_module_or_file(tmp_path):
    assert load_reward("format") is format_reward
    assert load_reward("tunelab.training.rewards:exact_answer_reward") is exact_answer_reward
    (tmp_path / "mine.py").write_text("def short(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n")
    assert load_reward(f"{tmp_path / 'mine.py'}:short")(None, ["ab", "a"]) == [-2, -1]
    with pytest.raises(ConfigError, match="not a built-in reward"):
        load_reward("fromat")
    with pytest.raises(ConfigError, match="has no function nope"):
        load_reward("tunelab.training.rewards:nope")
