"""Perplexity of text with a sliding window, reported per token, per word and per byte.

Every token of a document is scored once. A window of `window` tokens moves `stride`
tokens at a time and scores only the tokens the previous window did not, so each token
sees at least `window - stride` tokens of context (stride = window: disjoint windows,
the fastest and the harshest). The first token is predicted from the tokenizer's BOS
(else EOS) token, so every byte of the text counts.

Figures, as the harness defines them for rolling log-likelihood:
perplexity = exp(NLL / tokens), word_perplexity = exp(NLL / words) with words split on
whitespace, byte_perplexity = exp(NLL / UTF-8 bytes), bits_per_byte = NLL / bytes / ln 2.
The per-word and per-byte figures compare across tokenizers; per-token perplexity does not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch


def prefix_token(tokenizer) -> int:
    """The token the first real token is predicted from."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start documents with")
    return token


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(rows, width) log-probabilities of `targets` under `logits` (rows, width, vocab), in fp32.

    gather minus logsumexp: one fp32 copy of the logits, not a second full log-softmax.
    """
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def windows(n: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) over a sequence of n tokens (position 0 is the prefix token).

    The model reads seq[begin:end] (at most `window` tokens) and scores the tokens at
    positions first_scored..end-1, each from all the tokens before it in the window. A
    stride of `window` or more means disjoint windows (kept one token apart for context).
    """
    if window < 2 or stride < 1:
        raise ValueError(f"perplexity needs window >= 2 and stride >= 1, got window={window} stride={stride}")
    stride = min(stride, window - 1)
    out, scored = [], 1
    while scored < n:
        end = min(scored + stride if out else window, n)
        out.append((max(0, end - window), end, scored))
        scored = end
    return out


@torch.inference_mode()
def document_nll(model, tokenizer, documents: Sequence[str], window: int = 1024, stride: int = 512,
                 batch_size: int = 8, progress=None) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, scored tokens) of each document."""
    prefix = prefix_token(tokenizer)
    seqs = [[prefix] + tokenizer.encode(d, add_special_tokens=False) for d in documents]
    jobs = [(d, b, e, s) for d, seq in enumerate(seqs) for b, e, s in windows(len(seq), window, stride)]
    jobs.sort(key=lambda j: j[2] - j[1])  # similar lengths together: less padding
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    totals = [[0.0, len(seq) - 1] for seq in seqs]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start:start + batch_size]
            width = max(e - b for _, b, e, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, (d, b, e, _) in enumerate(batch):
                ids[r, :e - b] = torch.tensor(seqs[d][b:e])
                mask[r, :e - b] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, -width:]
            token_logp = token_logprobs(logits[:, :-1], ids[:, 1:].to(device)).cpu()  # (rows, width-1)
            for r, (d, b, e, s) in enumerate(batch):
                # target at sequence position t sits at column t - b - 1
                totals[d][0] -= float(token_logp[r, s - b - 1:e - b - 1].double().sum())
            if progress:
                progress(len(batch))
    finally:
        model.train(was_training)
    return [(nll, n) for nll, n in totals]


def perplexity_metrics(documents: Sequence[str], nll: Sequence[tuple[float, int]]) -> dict:
    """Token, word and byte perplexity and bits per byte over all documents together."""
    total = sum(n for n, _ in nll)
    tokens = sum(t for _, t in nll)
    words = sum(len(re.split(r"\s+", d)) for d in documents)  # the harness's word count, as is
    nbytes = sum(len(d.encode("utf-8")) for d in documents)
    return {
        "perplexity": round(math.exp(total / max(tokens, 1)), 6),
        "word_perplexity": round(math.exp(total / max(words, 1)), 6),
        "byte_perplexity": round(math.exp(total / max(nbytes, 1)), 6),
        "bits_per_byte": round(total / max(nbytes, 1) / math.log(2), 6),
        "nll_per_token": round(total / max(tokens, 1), 6),
        "tokens": tokens, "words": words, "bytes": nbytes, "documents": len(documents),
    }
