"""The per-sequence token picker (penalties, warpers, sampling, log-probs).

The warpers are transformers' own logits processors, so temperature, top-k, top-p, min-p
and the repetition penalty mean exactly what they mean in `model.generate`. Presence and
frequency penalties follow the OpenAI definition (on generated tokens only). The options
themselves (`DecodingConfig`) are a shared group of the config schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tunelab.config.groups import DecodingConfig

__all__ = ["DecodingConfig", "TokenLogprob", "TokenPicker"]


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), most likely first


class TokenPicker:
    """Picks one sequence's next tokens under its DecodingConfig, with its own random generator.

    A per-sequence generator makes a seeded request give the same answer whatever else is
    in the batch.
    """

    def __init__(self, cfg: DecodingConfig, prompt_ids: list[int], device: torch.device | str = "cpu"):
        from transformers.generation.logits_process import (
            MinPLogitsWarper,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.cfg = cfg
        self.device = device
        self.penalty = RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty) if cfg.repetition_penalty != 1 else None
        self.seen = torch.tensor([prompt_ids], dtype=torch.long, device=device) if self.penalty else None
        self.counts: dict[int, int] = {}
        self.warpers = []
        if not cfg.greedy:
            self.warpers.append(TemperatureLogitsWarper(cfg.temperature))
            if cfg.top_k:
                self.warpers.append(TopKLogitsWarper(cfg.top_k))
            if cfg.top_p < 1:
                self.warpers.append(TopPLogitsWarper(cfg.top_p))
            if cfg.min_p > 0:
                self.warpers.append(MinPLogitsWarper(cfg.min_p))
        self.generator = None
        if not cfg.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, (1,))))

    def pick(self, logits: torch.Tensor, constrain=None) -> tuple[int, TokenLogprob | None]:
        """Next token from one row of logits [V] (float32).

        `constrain(scores)`, when given, masks the [1, V] scores in place (a grammar's allowed tokens).
        """
        scores = logits.unsqueeze(0)  # [1, V]: the processors work on batches
        raw = scores
        if self.penalty is not None:
            scores = self.penalty(self.seen, scores.clone())
        if self.counts and (self.cfg.presence_penalty or self.cfg.frequency_penalty):
            ids = torch.tensor(list(self.counts), device=scores.device)
            n = torch.tensor(list(self.counts.values()), dtype=scores.dtype, device=scores.device)
            scores = scores.clone() if scores is raw else scores
            scores[0, ids] -= self.cfg.presence_penalty + self.cfg.frequency_penalty * n
        if constrain is not None:
            scores = scores.clone() if scores is raw else scores
            constrain(scores)
        if self.cfg.greedy:
            token = int(scores.argmax(-1))
        else:
            for warp in self.warpers:
                scores = warp(None, scores)
            probs = torch.softmax(scores, dim=-1)
            if torch.isfinite(probs).all():
                token = int(torch.multinomial(probs, 1, generator=self.generator))
            else:  # a temperature so small that the division overflowed: that is greedy
                token = int(scores.argmax(-1))
        self.counts[token] = self.counts.get(token, 0) + 1
        if self.seen is not None:
            self.seen = torch.cat([self.seen, torch.tensor([[token]], device=self.seen.device)], dim=1)
        return token, self._logprob(raw[0], token) if self.cfg.logprobs else None

    def _logprob(self, logits: torch.Tensor, token: int) -> TokenLogprob:
        """The model's own log-probabilities (before penalties and warpers), as OpenAI reports them."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        top = []
        if self.cfg.top_logprobs:
            values, ids = logp.topk(self.cfg.top_logprobs)
            top = list(zip(ids.tolist(), values.tolist()))
        return TokenLogprob(token, float(logp[token]), top)
