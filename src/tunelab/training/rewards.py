"""Rewards for online RL (GRPO): Python callables named in the config, or reward models.

A reward function takes the batch's `prompts` and `completions` (text, or chat message
lists) plus every other field of the records as keyword lists, and returns one float
per completion, as trl's GRPOTrainer calls it. Names in `objective.rewards`:

- `format`: 1 when the answer ends with `#### <number>` (GSM8K's answer format), else 0;
- `has_answer`: 1 when `#### <number>` appears anywhere (a gentler step toward `format`);
- `exact_answer`: 1 when that number equals the record's `answer` (its `####` number, or
  the whole field);
- `module:function` or `path/to/file.py:function`: your own callable;
- a reward model: a tunelab `rm` run folder or any sequence-classification model folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

from tunelab.errors import ConfigError

ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*\.?\s*$")
ANYWHERE = re.compile(r"####\s*-?[\d,]*\.?\d+")
NUMBER = re.compile(r"-?[\d,]*\.?\d+")


def completion_text(completion) -> str:
    """The text of a completion: plain text, or the content of chat messages."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return str(completion)


def final_answer(text: str) -> str | None:
    """The number after a closing `####`, normalised ('1,000' -> '1000'), or None."""
    m = ANSWER.search(text.strip())
    return _number(m.group(1)) if m else None


def _number(raw: str) -> str:
    value = raw.replace(",", "")
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() else str(number)


def format_reward(prompts, completions, **_) -> list[float]:
    """1.0 when a completion ends with `#### <number>`, else 0.0."""
    return [1.0 if final_answer(completion_text(c)) is not None else 0.0 for c in completions]


def has_answer_reward(prompts, completions, **_) -> list[float]:
    """1.0 when `#### <number>` appears anywhere in a completion, else 0.0."""
    return [1.0 if ANYWHERE.search(completion_text(c)) else 0.0 for c in completions]


def exact_answer_reward(prompts, completions, answer=None, **_) -> list[float]:
    """1.0 when the `#### <number>` answer equals the record's gold `answer`, else 0.0."""
    if answer is None:
        raise ConfigError("reward exact_answer: the records have no 'answer' field; add one, or map yours with "
                          "data.columns (e.g. {solution: answer})")
    out = []
    for completion, gold in zip(completions, answer, strict=True):
        gold_text = str(gold)
        gold_number = final_answer(gold_text) or (_number(m[-1]) if (m := NUMBER.findall(gold_text)) else None)
        out.append(1.0 if gold_number is not None and final_answer(completion_text(completion)) == gold_number else 0.0)
    return out


BUILT_IN: dict[str, Callable] = {"format": format_reward, "has_answer": has_answer_reward,
                                 "exact_answer": exact_answer_reward}


def load_reward(spec: str):
    """A reward named in the config -> a callable, or (model, tokenizer) for a reward model."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    path = Path(spec)
    if path.is_dir():
        from tunelab.models.loading import load_run

        return load_run(path)
    if ":" in spec:
        where, name = spec.rsplit(":", 1)
        module = _module(where, spec)
        if not callable(getattr(module, name, None)):
            raise ConfigError(f"objective.rewards: '{spec}': {where} has no function {name}")
        return getattr(module, name)
    raise ConfigError(f"objective.rewards: '{spec}' is not a built-in reward ({', '.join(BUILT_IN)}), a "
                      "module:function, a file.py:function, or a reward model folder")


def _module(where: str, spec: str):
    if where.endswith(".py"):
        if not Path(where).is_file():
            raise ConfigError(f"objective.rewards: '{spec}': file {where} not found")
        loaded = importlib.util.spec_from_file_location(Path(where).stem, where)
        module = importlib.util.module_from_spec(loaded)
        loaded.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(where)
    except ImportError as e:
        raise ConfigError(f"objective.rewards: '{spec}': cannot import {where} ({e})") from None
