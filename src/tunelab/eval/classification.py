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
    fairly enough for short labels).

    Each batch of prompts is read once, left-padded, and its key/value cache shared by every
    name: only a name's own tokens are run per name, and the output head only where a name
    token is predicted. On 160 SST-2 dev prompts with two names (the default model, bf16, 2
    cores) that took 7.4 s against 27.5 s for scoring each prompt+name whole. Prompt-learning
    adapters (virtual tokens) are scored whole.
    """
    model.eval()
    prefix = [_prompt(tokenizer, q, system) for q in questions]
    name_ids = [tokenizer(n, add_special_tokens=False).input_ids for n in names]
    if _prompt_learning(model):
        return _whole_sequence_scores(model, tokenizer, prefix, name_ids, batch_size)
    device = next(model.parameters()).device
    scores = torch.empty(len(questions), len(names))
    for start in range(0, len(questions), batch_size):
        rows = prefix[start:start + batch_size]
        n, width = len(rows), max(map(len, rows))
        ids = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):  # left-padded: every prompt ends at the last column
            ids[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                    use_cache=True, logits_to_keep=1)
        first = F.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()  # (rows, vocab): each name's first token
        cache, lengths = out.past_key_values, mask.sum(-1, keepdim=True)
        for j, tokens in enumerate(name_ids):
            total = first[:, tokens[0]]
            if len(tokens) > 1:  # the rest of the name, on the prompt's cache; then the cache is cut back
                k = len(tokens) - 1
                step = model(input_ids=torch.tensor([tokens[:-1]] * n, device=device),
                             attention_mask=torch.cat([mask, torch.ones(n, k, dtype=mask.dtype)], 1).to(device),
                             position_ids=(lengths + torch.arange(k)).to(device), past_key_values=cache,
                             use_cache=True)
                logp = F.log_softmax(step.logits.float(), dim=-1).cpu()  # (rows, k, vocab)
                total = total + logp.gather(-1, torch.tensor(tokens[1:]).expand(n, k)[..., None])[..., 0].sum(-1)
                try:
                    cache.crop(-k)
                except (RuntimeError, ValueError):  # a sliding-window cache that cannot roll back
                    return _whole_sequence_scores(model, tokenizer, prefix, name_ids, batch_size)
            scores[start:start + n, j] = total
    return scores


def _prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


@torch.no_grad()
def _whole_sequence_scores(model, tokenizer, prefix: list[list[int]], name_ids: list[list[int]],
                           batch_size: int) -> torch.Tensor:
    """Each prompt+name as one right-padded sequence (for models that prepend virtual tokens)."""
    device = next(model.parameters()).device
    scores = torch.empty(len(prefix), len(name_ids))
    for j, ids in enumerate(name_ids):
        for start in range(0, len(prefix), batch_size):
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
