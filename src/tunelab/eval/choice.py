"""Multiple choice by log-likelihood, scored exactly as lm-evaluation-harness scores it.

Each question is a context and several endings; the model's answer is the ending with
the highest log-likelihood given the context. The harness's definitions (Gao et al.,
"A framework for few-shot language model evaluation"):

- `acc`: argmax of the sum of the ending's token log-probabilities;
- `acc_norm`: argmax of that sum divided by the ending's length in characters;
- `acc_bytes`: the same divided by its length in UTF-8 bytes (equal to `acc_norm` for ASCII).

Tokenization follows the harness too: trailing spaces of the context move to the
ending, the whole text is encoded once and the context's tokens are split off, so BPE
merges across the boundary come out the same.

Speed: a question's endings share its context. The shared token prefix is run once per
question (batched over questions, left-padded), its KV cache is copied to each ending,
and only the ending tokens are run again. Models whose adapters prepend virtual tokens
(prompt, prefix and P-tuning) cannot take a cache and are scored whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tunelab.eval.perplexity import token_logprobs


@dataclass
class Question:
    context: str
    endings: list[str]  # each ending as scored, delimiter included (" positive")
    lengths: list[str]  # the text whose length normalises each ending (the choice without the delimiter)
    gold: int


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as the harness splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    if n_context == 0:  # an empty context: the ending is scored from the BOS (else EOS) token
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], whole
    return whole[:n_context], whole[n_context:]


def _common_prefix(rows: Sequence[list[int]]) -> int:
    n = min(map(len, rows))
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows[1:]):
            return i
    return n


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


@torch.inference_mode()
def ending_loglikelihoods(model, tokenizer, questions: Sequence[Question], batch_size: int = 32,
                          progress=None) -> list[list[float]]:
    """For each question, the summed log-probability of each ending given its context.

    Args:
        batch_size: questions per forward pass (their endings run together in a second pass).
        progress: optional callable(n_done) called after each batch.
    """
    max_len = getattr(model.config, "max_position_embeddings", None) or 2048
    encoded = []  # per question: (shared prefix length k, [full token rows], [continuation lengths])
    for q in questions:
        pairs = [encode_pair(tokenizer, q.context, e) for e in q.endings]
        rows = [(c + e)[-(max_len + 1):] for c, e in pairs]  # left-truncate as the harness does
        n_cont = [min(len(e), len(r) - 1) for (_, e), r in zip(pairs, rows)]
        # the shared part must stop before every ending's first scored token
        k = min(_common_prefix(rows), *(len(r) - n for r, n in zip(rows, n_cont)))
        encoded.append((k, rows, n_cont))
    share = not _is_prompt_learning(model)
    was_training = model.training
    model.eval()
    scores: list[list[float]] = [[] for _ in questions]
    # similar prefix lengths together: less padding
    order = sorted(range(len(questions)), key=lambda i: encoded[i][0])
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            cached = [i for i in idx if share and encoded[i][0] >= 2]
            whole = [i for i in idx if not (share and encoded[i][0] >= 2)]
            if cached:
                for i, s in zip(cached, _score_shared(model, tokenizer, [encoded[i] for i in cached])):
                    scores[i] = s
            if whole:
                for i, s in zip(whole, _score_whole(model, tokenizer, [encoded[i] for i in whole])):
                    scores[i] = s
            if progress:
                progress(len(idx))
    finally:
        model.train(was_training)
    return scores


def _score_shared(model, tokenizer, items) -> list[list[float]]:
    """Run each question's shared prefix once, then all endings on copies of its cache."""
    device, pad = _device(model), tokenizer.pad_token_id or 0
    prefixes = [rows[0][:k - 1] for k, rows, _ in items]  # the last shared token is re-run with the endings
    width = max(map(len, prefixes))
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prefixes):  # left padding: every prefix ends at the same column
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                use_cache=True, logits_to_keep=1)
    cache = out.past_key_values

    owner, suffixes, n_conts = [], [], []  # one row per ending
    for q, (k, rows, n_cont) in enumerate(items):
        for row, n in zip(rows, n_cont):
            owner.append(q)
            suffixes.append(row[k - 1:])  # inputs are suffix[:-1], targets suffix[1:]
            n_conts.append(n)
    cache.reorder_cache(torch.tensor(owner, device=device))
    width2 = max(len(s) for s in suffixes) - 1
    ids2 = torch.full((len(suffixes), width2), pad, dtype=torch.long)
    targets = torch.zeros_like(ids2)
    mask2 = torch.zeros_like(ids2)
    for r, s in enumerate(suffixes):
        ids2[r, :len(s) - 1] = torch.tensor(s[:-1])
        targets[r, :len(s) - 1] = torch.tensor(s[1:])
        mask2[r, :len(s) - 1] = 1
    owner_t = torch.tensor(owner)
    full_mask = torch.cat([mask[owner_t], mask2], dim=1)
    positions2 = torch.tensor([len(prefixes[q]) for q in owner]).unsqueeze(1) + torch.arange(width2)
    logits = model(input_ids=ids2.to(device), attention_mask=full_mask.to(device),
                   position_ids=positions2.to(device), past_key_values=cache, use_cache=True).logits
    logp = token_logprobs(logits, targets.to(device)).cpu()
    return _collect(items, logp, [len(s) - 1 for s in suffixes], n_conts)


def _score_whole(model, tokenizer, items) -> list[list[float]]:
    """Every ending as one full sequence (no cache): for prompt-learning adapters and one-token contexts."""
    device, pad = _device(model), tokenizer.pad_token_id or 0
    rows = [row for _, rs, _ in items for row in rs]
    n_conts = [n for _, _, ns in items for n in ns]
    width = max(map(len, rows)) - 1
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    targets, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, :len(row) - 1] = torch.tensor(row[:-1])
        targets[r, :len(row) - 1] = torch.tensor(row[1:])
        mask[r, :len(row) - 1] = 1
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -width:]  # drop virtual tokens
    logp = token_logprobs(logits, targets.to(device)).cpu()
    return _collect(items, logp, [len(r) - 1 for r in rows], n_conts)


def _collect(items, logp: torch.Tensor, used: list[int], n_conts: list[int]) -> list[list[float]]:
    """Sum each row's last n_cont scored positions, grouped back per question."""
    flat = [float(logp[r, u - n:u].sum()) for r, (u, n) in enumerate(zip(used, n_conts))]
    out, at = [], 0
    for _, rows, _ in items:
        out.append(flat[at:at + len(rows)])
        at += len(rows)
    return out


def choice_metrics(loglikelihoods: Sequence[Sequence[float]], questions: Sequence[Question]) -> dict:
    """acc, acc_norm and acc_bytes (fractions), plus the per-question predictions."""
    acc = norm = byts = 0
    predictions = []
    for lls, q in zip(loglikelihoods, questions):
        lls = np.asarray(lls)
        chars = np.array([float(len(t)) for t in q.lengths])
        nbytes = np.array([float(len(t.encode("utf-8"))) for t in q.lengths])
        pred, pred_norm, pred_bytes = int(np.argmax(lls)), int(np.argmax(lls / chars)), int(np.argmax(lls / nbytes))
        acc += pred == q.gold
        norm += pred_norm == q.gold
        byts += pred_bytes == q.gold
        predictions.append({"pred": pred, "pred_norm": pred_norm, "gold": q.gold})
    n = len(questions)
    out = {"acc": acc / max(n, 1), "acc_norm": norm / max(n, 1), "acc_bytes": byts / max(n, 1)}
    # the harness's standard error of a mean of 0/1 scores: sqrt(p(1-p)/(n-1))
    out.update({f"{k}_stderr": math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0 for k, p in list(out.items())})
    return {**{k: round(v, 5) for k, v in out.items()}, "n": n, "predictions": predictions}
