"""Turn normalised records into token ids and labels; pack; collate.

Labels are -100 wherever the loss must not look: by default everything but the
assistant's answers (each answer including the token that ends it, so the model learns
to stop). Rendering uses the model's own chat template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunelab.data.templates import answer_end_ids
from tunelab.errors import DataError

IGNORE = -100
TRAIN_ON = ("assistant", "last", "all")


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def tokenize_messages(messages: list[dict], tokenizer, max_length: int, train_on: str = "assistant",
                      end_ids: list[int] | None = None) -> Tokenized:
    """Tokenize one conversation with the chat template, labelling the answers.

    The rendered text is cut at every answer's start and end, and each piece is tokenized
    on its own, so label boundaries are exact whatever the tokenizer merges.
    """
    if train_on not in TRAIN_ON:
        raise DataError(f"data.train_on: expected one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    end_ids = answer_end_ids(tokenizer) if end_ids is None else end_ids
    answers = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last":
        answers = answers[-1:]
    cuts: list[tuple[int, int]] = []  # (start, end) character spans of labelled answers
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    for i in answers:
        start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        if not full.startswith(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)):
            raise DataError("the chat template renders a conversation differently from its prefixes, so answer "
                            "tokens cannot be located; use a template that appends turns (e.g. ChatML)")
        cuts.append((start, end))
    ids: list[int] = []
    labels: list[int] = []
    pos = 0
    for start, end in cuts:
        ids += (prompt := _encode(tokenizer, full[pos:start]))
        labels += [IGNORE] * len(prompt) if train_on != "all" else prompt
        answer = _encode(tokenizer, full[start:end])
        n_learn = _through_end(answer, end_ids)
        if n_learn is None:  # the template puts no end token after answers: add EOS so the model learns to stop
            answer = answer + [tokenizer.eos_token_id]
            n_learn = len(answer)
        ids += answer
        labels += answer[:n_learn] + ([IGNORE] * (len(answer) - n_learn) if train_on != "all" else answer[n_learn:])
        pos = end
    rest = _encode(tokenizer, full[pos:])
    ids += rest
    labels += [IGNORE] * len(rest) if train_on != "all" else rest
    truncated = len(ids) > max_length
    return Tokenized(ids[:max_length], labels[:max_length], truncated)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _through_end(answer: list[int], end_ids: list[int]) -> int | None:
    """Number of answer tokens up to and including the first end-of-answer token."""
    for k, t in enumerate(answer):
        if t in end_ids:
            return k + 1
    return None


def tokenize_text(text: str, tokenizer, max_length: int) -> Tokenized:
    """Plain text: every token is learned, EOS appended so documents end."""
    ids = _encode(tokenizer, text) + [tokenizer.eos_token_id]
    return Tokenized(ids[:max_length], ids[:max_length], len(ids) > max_length)


def tokenize_seq2seq(messages: list[dict], tokenizer, max_length: int) -> Tokenized:
    """Encoder-decoder pair: the conversation up to the last answer is the source (plain
    text, one turn per line), the last answer the target; the tokenizer adds its own
    end token (T5's </s>). Both sides are cut at `max_length`."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    source = "\n".join(m["content"] for m in messages[:last])
    src = tokenizer(source, add_special_tokens=True).input_ids
    tgt = tokenizer(messages[last]["content"], add_special_tokens=True).input_ids
    if tokenizer.eos_token_id is not None and tgt[-1:] != [tokenizer.eos_token_id]:
        tgt.append(tokenizer.eos_token_id)  # the model must learn to stop
    return Tokenized(src[:max_length], tgt[:max_length], len(src) > max_length or len(tgt) > max_length)


# ---------------------------------------------------------------- packing and batching


def pack(examples: list[dict], max_length: int) -> list[dict]:
    """Pack examples into rows of at most `max_length` tokens (first-fit decreasing).

    Each row restarts `position_ids` at 0 for every example; transformers turns that
    into a block-diagonal attention mask, so packed examples never see each other
    (it does so only without a KV cache: the model must run with use_cache=False).
    Raises DataError if an example is longer than `max_length` (truncate first).
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    if order and len(examples[order[0]]["input_ids"]) > max_length:
        raise DataError(f"packing: an example has {len(examples[order[0]]['input_ids'])} tokens, more than "
                        f"max_length={max_length}; truncate examples before packing")
    rows: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        for r, free in enumerate(space):
            if n <= free:
                rows[r].append(i)
                space[r] -= n
                break
        else:
            rows.append([i])
            space.append(max_length - n)
    packed = []
    for row in rows:
        packed.append({
            "input_ids": [t for i in row for t in examples[i]["input_ids"]],
            # An example's first label is what the previous example's last token would be trained
            # to predict after the shift: ignore it, so no loss crosses example boundaries.
            "labels": [IGNORE if k == 0 else t for i in row for k, t in enumerate(examples[i]["labels"])],
            "position_ids": [p for i in row for p in range(len(examples[i]["input_ids"]))],
        })
    return packed


class Collator:
    """Pad a batch on the right; packed rows get position ids and no attention mask.

    Labels follow the example: one per token (causal LM), a target sequence of its own
    length (seq2seq), or one class id per example (classification).
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        packed = "position_ids" in batch[0]
        extra = torch.zeros((len(batch), width), dtype=torch.long)
        for row, x in enumerate(batch):
            n = len(x["input_ids"])
            ids[row, :n] = torch.tensor(x["input_ids"])
            if packed:
                extra[row, :n] = torch.tensor(x["position_ids"])
                extra[row, n:] = torch.arange(width - n)  # padding forms its own (ignored) sequence
            else:
                extra[row, :n] = 1
        out = {"input_ids": ids, "labels": _labels([x["labels"] for x in batch])}
        out["position_ids" if packed else "attention_mask"] = extra
        return out


def _labels(labels: list) -> torch.Tensor:
    if isinstance(labels[0], int):  # classification: (batch,)
        return torch.tensor(labels, dtype=torch.long)
    # (batch, longest labels): causal-LM labels are as long as their inputs, seq2seq targets their own length
    out = torch.full((len(labels), max(len(y) for y in labels)), IGNORE, dtype=torch.long)
    for row, y in enumerate(labels):
        out[row, :len(y)] = torch.tensor(y)
    return out
