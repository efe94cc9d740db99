"""Classification metrics (accuracy, macro-F1), for heads and for generative classifiers.

A generative classifier (an LM trained to answer with the label's name) is scored by
ranking: each candidate name's log-likelihood as the answer, the highest wins. Unlike
parsing a free generation, every prediction is a valid label.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def classification_metrics(predicted: Sequence, gold: Sequence) -> dict[str, float]:
    """{"accuracy", "macro_f1"} of predicted vs gold labels (any hashable labels)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": round(float(accuracy_score(gold, predicted)), 5),
            "macro_f1": round(float(f1_score(gold, predicted, average="macro")), 5)}


def trainer_metrics(eval_prediction) -> dict[str, float]:
    """compute_metrics for a Trainer over a classification head: logits (n, classes) -> metrics."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    return classification_metrics(np.argmax(logits, axis=-1), labels)


def rank_labels(model, tokenizer, questions: list[str], names: list[str], batch_size: int = 16,
                system: str | None = None) -> list[int]:
    """For each question (a user turn), the index of the name the model most likely answers."""
    return name_scores(model, tokenizer, questions, names, batch_size, system).argmax(dim=1).tolist()


@torch.no_grad()
def name_scores(model, tokenizer, questions: list[str], names: list[str], batch_size: int = 16,
                system: str | None = None) -> torch.Tensor:
    """(questions, names) log-likelihoods: the sum of the log-probabilities of each name's
    tokens after the chat template's assistant prefix (names of different lengths compete
    fairly enough for short labels)."""
    model.eval()
    prefix = [_prompt(tokenizer, q, system) for q in questions]
    name_ids = [tokenizer(n, add_special_tokens=False).input_ids for n in names]
    device = next(model.parameters()).device
    scores = torch.empty(len(questions), len(names))
    for j, ids in enumerate(name_ids):
        for start in range(0, len(questions), batch_size):
            rows = [p + ids for p in prefix[start:start + batch_size]]
            width = max(map(len, rows))
            pad = tokenizer.pad_token_id
            batch = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(batch)
            for r, row in enumerate(rows):
                batch[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            logits = model(input_ids=batch.to(device), attention_mask=mask.to(device)).logits
            logits = logits[:, -width:].float()  # prompt methods prepend virtual tokens: keep the input's positions
            logp = F.log_softmax(logits, dim=-1)  # (rows, width, vocab)
            for r, row in enumerate(rows):
                n = len(row)
                positions = torch.arange(n - len(ids) - 1, n - 1)  # the positions that predict the name's tokens
                scores[start + r, j] = logp[r, positions, torch.tensor(ids)].sum().cpu()
    return scores


def _prompt(tokenizer, question: str, system: str | None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def label_accuracy(model, tokenizer, questions: list[str], gold: list[int], names: list[str], **kw: Any) -> dict:
    """Accuracy and macro-F1 of ranking `names` for each question against gold indices."""
    return classification_metrics(rank_labels(model, tokenizer, questions, names, **kw), gold)
