"""Decoding options and the per-sequence token picker (penalties, warpers, sampling, log-probs).

The warpers are transformers' own logits processors, so temperature, top-k, top-p, min-p
and the repetition penalty mean exactly what they mean in `model.generate`. Presence and
frequency penalties follow the OpenAI definition (on generated tokens only).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tunelab.errors import ConfigError


@dataclass
class DecodingConfig:
    """How to pick tokens. temperature 0 means greedy; num_beams > 1 means beam search."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # >1 discourages any token already in prompt or answer (CTRL)
    presence_penalty: float = 0.0  # OpenAI: subtract once from each token already generated
    frequency_penalty: float = 0.0  # OpenAI: subtract per occurrence in the answer
    num_beams: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False  # return the log-probability of each chosen token
    top_logprobs: int = 0  # and of this many most likely alternatives
    ignore_eos: bool = False

    def check(self) -> DecodingConfig:
        """Raise ConfigError naming the option when a value is out of range; return self."""
        rules = [
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
            ("temperature", 0 <= self.temperature <= 100, "between 0 (greedy) and 100"),
            ("top_k", self.top_k >= 0, "0 (off) or more"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p <= 1, "in [0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "above 0 (1 is off)"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "between -2 and 2"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "between -2 and 2"),
            ("num_beams", self.num_beams >= 1, "at least 1"),
            ("top_logprobs", 0 <= self.top_logprobs <= 20, "between 0 and 20"),
            ("seed", self.seed is None or 0 <= self.seed < 2**63, "between 0 and 2**63 - 1"),
        ]
        for name, ok, expected in rules:
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be {expected}")
        if self.num_beams > 1 and self.temperature > 0:
            raise ConfigError("num_beams > 1 is beam search, which is greedy: set temperature 0 (or num_beams 1)")
        if self.num_beams > 1 and (self.presence_penalty or self.frequency_penalty or self.logprobs or self.ignore_eos):
            raise ConfigError("beam search takes repetition_penalty but not presence/frequency penalties, logprobs "
                              "or ignore_eos; use num_beams 1 for those")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def plain_argmax(self) -> bool:
        """Nothing changes the logits before argmax: a row can be picked in one batched argmax."""
        return (self.greedy and self.repetition_penalty == 1 and not self.presence_penalty
                and not self.frequency_penalty and not self.logprobs)


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
