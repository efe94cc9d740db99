"""Held-out preference metrics: how often a model scores `chosen` above `rejected`.

A reward model scores each text directly. A policy trained by DPO and its relatives has
an implicit reward, beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023), where
the reference is the model before training. Accuracy is reported with its 95% Wilson
interval, so "above chance" can be read off as a lower bound above 0.5.
"""

from __future__ import annotations

import math

import torch


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for z=1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    """Accuracy (chosen strictly above rejected), its 95% interval, and the mean margin."""
    wins = int((chosen > rejected).sum())
    n = int(chosen.numel())
    lo, hi = wilson_interval(wins, n)
    return {"accuracy": round(wins / max(n, 1), 5), "accuracy_lo95": round(lo, 5), "accuracy_hi95": round(hi, 5),
            "margin": round(float((chosen - rejected).float().mean()), 5), "pairs": n}


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def completion_logps(model, tokenizer, prompts: list[str], completions: list[str], max_length: int = 1024,
                     batch_size: int = 8) -> torch.Tensor:
    """Sum of log p(completion token | everything before) for each (prompt, completion).

    The completion starts where the tokens of the prompt and of prompt+completion part
    (as trl's trainers split them). Too long: the prompt loses its start, the completion
    is kept. Returns (n,) float32.
    """
    rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        full = tokenizer(prompt + completion, add_special_tokens=False).input_ids
        start = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), min(len(p), len(full)))
        start = max(1, start)  # the first token has nothing to be predicted from
        cut = max(0, len(full) - max_length)
        rows.append((full[cut:], max(1, start - cut)))
    was_training = model.training
    model.eval()
    out = torch.zeros(len(rows))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths together: less padding
    for b in range(0, len(order), batch_size):
        batch = [rows[i] for i in order[b:b + batch_size]]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (seq, _) in enumerate(batch):
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, :len(seq)] = 1
        logits = model(input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model))).logits
        logits = logits[:, -width:]  # prompt methods prepend virtual tokens
        for r, (seq, start) in enumerate(batch):
            # position t predicts token t+1: (len-1-start+1, vocab) rows for the completion tokens
            lp = torch.log_softmax(logits[r, start - 1:len(seq) - 1].float(), dim=-1)
            target = torch.tensor(seq[start:], device=lp.device)
            out[order[b + r]] = lp.gather(1, target[:, None]).sum().cpu()
    model.train(was_training)
    return out


@torch.no_grad()
def reward_scores(model, tokenizer, texts: list[str], max_length: int = 1024, batch_size: int = 8) -> torch.Tensor:
    """A sequence-classification reward model's scalar score for each text (EOS appended,
    as trl's reward trainer trains it; too long: the start is cut). Returns (n,) float32."""
    eos = tokenizer.eos_token or ""
    seqs = [tokenizer(t if t.endswith(eos) else t + eos, add_special_tokens=False).input_ids[-max_length:]
            for t in texts]
    was_training = model.training
    model.eval()
    out = torch.zeros(len(seqs))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.pad_token_id
    for b in range(0, len(order), batch_size):
        batch = [seqs[i] for i in order[b:b + batch_size]]
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(batch):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        scores = model(input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model))).logits[:, 0]
        for r in range(len(batch)):
            out[order[b + r]] = scores[r].float().cpu()
    model.train(was_training)
    return out
