"""PPO: reinforcement learning from human feedback with a reward model (RLHF).

The policy (the model as `method` lets it change: LoRA by default, or full, qlora ...)
samples answers to prompts, a frozen reward model scores each answer, and PPO (Schulman
et al. 2017, arXiv:1707.06347) makes better-scored answers more likely while a per-token
KL penalty keeps the policy near the reference (the model it started from). As in
InstructGPT (Ouyang et al. 2022, arXiv:2203.02155), an answer y to a prompt x earns

    R(x, y) = RM(x, y) - kl_coef * sum_t [log pi(y_t | x, y_<t) - log ref(y_t | x, y_<t)]

and each iteration samples `rollout_batch` answers, then takes `ppo_epochs` passes of
minibatch updates over them: GAE advantages, the clipped surrogate objective and a
clipped value loss.

Implementation details followed from "The N+ Implementation Details of RLHF with PPO"
(Huang et al. 2024, arXiv:2403.17031):
* dropout off: the policy stays in eval mode while it trains, so the probability ratio
  is exactly 1 before the first update;
* logits are divided by the sampling temperature wherever log-probabilities are taken;
* an answer ends at its first EOS: later tokens are masked out of every loss; the score
  goes to the last real token, and every token carries its own KL penalty (k1 estimator);
* the EOS trick (`missing_eos_penalty`): answers that never finish lose that much score;
* GAE with gamma 1 and lambda 0.95; advantages whitened over the batch; value clipping;
* Adam with eps 1e-5; the learning rate follows train.lr_scheduler (linear in the paper).
Departures, to keep one model in memory: the value function is a small Linear head on the
policy's last hidden state (shared trunk, trained with the policy), not a separate model
initialised from the reward model; and reward-model scores are not normalised.

Reference: with an adapter method, the base model with the adapter switched off (no
second copy in memory); with full or freeze, a frozen copy taken before training.

Data: prompts as raw text (e.g. "\\n\\nHuman: ...\\n\\nAssistant:") from records with a
`prompt` field (preference pairs, prompt/completion, prompt-only) or an `instruction`
field, left-truncated to data.max_length tokens; a held-out split (data.val_split or
data.validation) is scored every `eval_every` iterations. The reward model
(`reward_model`) is a tunelab `rm` run or any sequence-classification folder with one
output; it reads prompt + answer as text through its own tokenizer.

Logged per iteration (metrics.jsonl): reward (mean reward-model score), kl (k1: the mean
over answers of sum_t log pi - log ref, the quantity the penalty uses), kl_k3, loss,
policy_loss, value_loss, clipfrac, approx_kl, entropy; evaluation rows hold eval_reward,
eval_kl and eval_kl_k3 on the held-out prompts, sampled with a fixed seed. Saved: the policy as an
sft run saves it (adapter/ or model/, reloads with tunelab.load_run), value_head.safetensors
beside it, samples.jsonl (the last evaluation's answers) and reward.png. Runs in one process.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Literal
from functools import partial
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import torch
from pydantic import model_validator
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.config import DataConfig, RunConfig
from tunelab.config.options import Options, fail, opt
from tunelab.data.dataset import LoadedRecords, split_records
from tunelab.data.readers import BadRecord, Record, read_records
from tunelab.data.templates import eos_ids_for_generation
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.eval.preference import reward_scores
from tunelab.methods import METHODS, adapter_disabled
from tunelab.models.families import task_of
from tunelab.objectives import register
from tunelab.training import (
    RunRecord,
    compute_dtype,
    latest_checkpoint,
    load_for_training,
    parameter_counts,
    save_result,
    task_for,
)
from tunelab.training.records import artifact_bytes, is_main_process
from tunelab.training.trainer import (
    CHECKPOINT_PREFIX,
    COMPLETE,
    fsync_tree,
    rotate_checkpoints,
)

VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_INIT_STD = 0.01  # small: the first values are near 0 and do not swamp the first advantages


class Config(Options):
    """PPO options: rollouts, the clipped update, the value head, the KL penalty, evaluation."""

    name: Literal["ppo"] = "ppo"
    reward_model: str = opt(help="an rm run folder (runs/<name>; train one with objective rm) or a "
                            "sequence-classification model folder with one output", min_length=1,
                            aka=("reward_model_path",))
    max_new_tokens: int = opt(32, "answer length limit", ge=1, aka=("response_length",))
    temperature: float = opt(1.0, "sampling temperature; also divides the logits in every log-probability", gt=0)
    top_k: int = opt(0, "0: off. Shapes sampling only (log-probabilities use the full distribution, as trl did)",
                     ge=0)
    rollout_batch: int = opt(16, "prompts answered per iteration", ge=1)
    ppo_epochs: int = opt(4, "passes over each batch of answers", ge=1, aka=("num_ppo_epochs",))
    minibatch: int = opt(8, "answers per optimizer step (train.batch_size of them per forward)", ge=1,
                         aka=("mini_batch_size",))
    clip_range: float = opt(0.2, "probability ratio kept within 1 +- clip_range", gt=0, aka=("cliprange",))
    clip_value: float = opt(0.2, "values kept within the rollout's value +- clip_value", gt=0,
                            aka=("cliprange_value",))
    vf_coef: float = opt(0.1, "weight of the value loss", ge=0)
    kl_coef: float = opt(0.05, "weight of the per-token KL penalty to the reference", ge=0)
    gamma: float = opt(1.0, "discount", ge=0, le=1)
    lam: float = opt(0.95, "GAE lambda", ge=0, le=1)
    whiten_advantages: bool = opt(True, "advantages to zero mean and unit variance per batch")
    missing_eos_penalty: float | None = opt(None, "subtracted from the score of answers cut off at max_new_tokens")
    reward_clip: float | None = opt(None, "clip reward-model scores to [-c, c]", gt=0)
    eval_prompts: int = opt(32, "held-out prompts scored before, during and after training", ge=1)
    eval_every: int = opt(5, "iterations between evaluations; 0: only before and after", ge=0)

    @model_validator(mode="after")
    def _minibatch_fits(self) -> Config:
        if self.minibatch > self.rollout_batch:
            fail("minibatch", f"{self.minibatch} is larger than rollout_batch ({self.rollout_batch}); lower it or "
                 "raise rollout_batch")
        return self


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (a scalar)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`x` shifted and scaled to mean 0, variance 1 over the kept positions; others become 0.

    x, mask: (B, T). Returns (B, T).
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def response_mask(response: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1.0 for each answer's tokens up to and including its first EOS, 0.0 after it.

    response: (B, R) token ids. Returns (B, R) float.
    """
    is_eos = torch.isin(response, torch.tensor(eos_ids, device=response.device))
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # an EOS strictly before this position
    return (~after_eos).float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature). logits: (B, T, V); tokens: (B, T). Returns (B, T)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) at each position. logits: (B, T, V). Returns (B, T)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                kind: str = "k1") -> torch.Tensor:
    """Per-answer estimate of KL(policy || reference) from tokens sampled from the policy.

    k1 = log pi - log ref summed over tokens: unbiased, the penalty PPO uses, can be negative
    per sample. k3 = (ref/pi - 1) - log(ref/pi) per token: unbiased too, never negative,
    lower variance (Schulman, "Approximating KL divergence", 2020).
    logprobs, ref_logprobs, mask: (B, T). Returns (B,).
    """
    log_ratio = logprobs - ref_logprobs
    per_token = log_ratio if kind == "k1" else torch.expm1(-log_ratio) + log_ratio
    return (per_token * mask).sum(1)


def per_token_rewards(score: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Each token's reward: -kl_coef * (log pi - log ref), plus the answer's score at its last real token.

    score: (B,); logprobs, ref_logprobs, mask: (B, T) with the mask a run of ones then zeros.
    Returns (B, T), 0 past each answer's end.
    """
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of each answer's last real token
    return rewards.scatter_add(1, last.unsqueeze(1), score.unsqueeze(1).to(rewards.dtype))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, arXiv:1506.02438).

    delta_t = r_t + gamma * V_{t+1} - V_t and A_t = delta_t + gamma * lam * A_{t+1}, where
    V and A past an answer's last real token are 0 (the episode is over).
    rewards, values, mask: (B, T). Returns (advantages, returns), each (B, T) and 0 past
    the end; returns = advantages + values are the value targets.
    """
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(next_adv)
    for t in reversed(range(T)):
        alive = mask[:, t + 1] if t + 1 < T else torch.zeros_like(next_adv)  # 0 once the answer has ended
        delta = rewards[:, t] + gamma * next_value * alive - values[:, t]
        next_adv = delta + gamma * lam * alive * next_adv
        advantages[:, t] = next_adv
        next_value = values[:, t]
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate: mean over tokens of max(-A * ratio, -A * clamp(ratio, 1 +- clip)).

    Where the clipped term is the larger (pessimistic) one the gradient is zero: a token
    whose ratio already moved `clip` in the advantage's direction is pushed no further.
    All inputs (B, T). Returns (loss, {clipfrac: share of tokens clipped, approx_kl: k3
    estimate of KL(old || new) per token}).
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean((ratio - 1) - log_ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: 0.5 * mean over tokens of max((V - R)^2, (V_clipped - R)^2), with
    V_clipped = old V + clamp(V - old V, +- clip). All inputs (B, T). Returns (loss, {value_clipfrac})."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        frac = masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).float(), mask)
    return loss, {"value_clipfrac": frac}


# ---------------------------------------------------------------- prompts

PROMPT_FIELDS = ("a `prompt` field (preference pairs prompt/chosen/rejected, prompt/completion or prompt-only "
                 "records) or an `instruction` field (instruction records)")


def prompt_of(record: Record) -> str:
    """The prompt text of one record; BadRecord (naming file:line and the fields expected) if it has none."""
    data = record.data
    if isinstance(data.get("prompt"), str):
        text = data["prompt"]
    elif isinstance(data.get("instruction"), str):
        extra = data.get("input")
        text = f"{data['instruction']}\n\n{extra}" if isinstance(extra, str) and extra.strip() else data["instruction"]
    else:
        raise BadRecord(f"{record.where}: no prompt; ppo needs {PROMPT_FIELDS}, but the fields are {sorted(data)}. "
                        "Rename yours with data.columns, e.g. {question: prompt}")
    if not text.strip():
        raise BadRecord(f"{record.where}: the prompt is empty")
    return text


def read_prompts(path: str, data: DataConfig) -> tuple[list[str], list[str]]:
    """(prompts, bad records) of one file, with data.columns, data.limit and data.skip_bad applied."""
    bad: list[str] = []
    prompts = []
    for record in islice(read_records(path, data.max_record_bytes, data.skip_bad, bad), data.limit or None):
        if data.columns:
            record = Record({data.columns.get(k, k): v for k, v in record.data.items()}, record.where)
        try:
            prompts.append(prompt_of(record))
        except BadRecord as e:
            if not data.skip_bad:
                raise
            bad.append(str(e))
    if not prompts:
        raise DataError(f"{path}: no prompts found ({len(bad)} bad records); ppo needs {PROMPT_FIELDS}")
    return prompts, bad


def load_prompts(data: DataConfig, seed: int) -> tuple[list[str], list[str], list[str]]:
    """(train prompts, held-out prompts, bad records): data.validation if given, else a seeded data.val_split."""
    if not data.train:
        raise DataError("data.train: no prompt file given; set data.train to a .jsonl/.json/.csv/.parquet file")
    prompts, bad = read_prompts(data.train, data)
    if data.validation:
        held, bad_held = read_prompts(data.validation, data)
        return prompts, held, bad + bad_held
    train, held, bad = split_records(LoadedRecords("prompt", [{"prompt": p} for p in prompts], bad),
                                     data.model_copy(update={"validation": None}), seed)
    return [r["prompt"] for r in train], [r["prompt"] for r in held], bad


def tokenize_prompts(prompts: list[str], tokenizer, max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each prompt, keeping the last `max_length` (the end leads into the answer)
    and a BOS token the tokenizer puts first. Returns (ids, how many were truncated)."""
    def keep(ids: list[int]) -> list[int]:
        if len(ids) <= max_length:
            return ids
        return ids[:1] + ids[len(ids) - max_length + 1:] if ids[0] == tokenizer.bos_token_id else ids[-max_length:]

    rows = tokenizer(prompts)["input_ids"]
    return [keep(r) for r in rows], sum(len(r) > max_length for r in rows)


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each (B, P): rows padded on the left so every answer starts at column P."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


# ---------------------------------------------------------------- models


class PolicyWithValue(nn.Module):
    """The policy language model and a value head: one Linear on its last hidden state."""

    def __init__(self, policy: nn.Module, std: float = VALUE_INIT_STD):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1, device=next(policy.parameters()).device)
        nn.init.normal_(self.value_head.weight, std=std)
        nn.init.zeros_(self.value_head.bias)


def answer_hidden(model, prompt_ids, prompt_mask, response, mask) -> torch.Tensor:
    """Last hidden states at the positions that predict each answer token: (B, R, H).

    prompt_ids, prompt_mask: (B, P) left-padded; response, mask: (B, R). Positions follow
    the attention mask, as they did during generation.
    """
    ids = torch.cat([prompt_ids, response], 1)  # (B, P + R)
    attention = torch.cat([prompt_mask, mask.long()], 1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    # The model's own head runs at one position only; the head is applied below, at the answer's.
    first = torch.zeros(1, dtype=torch.long, device=ids.device)
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, output_hidden_states=True,
                logits_to_keep=first, use_cache=False)
    R = response.shape[1]
    # Counted from the end: prompt methods prepend virtual tokens. Position t predicts token t + 1.
    return out.hidden_states[-1][:, -R - 1:-1]


def load_reward_model(path: str, dtype: torch.dtype, device):
    """The frozen reward model and its tokenizer.

    Raises ConfigError when `path` is missing or is not a one-output sequence classifier.
    """
    from tunelab.models.loading import load_run

    if not Path(path).exists():
        raise ConfigError(f"objective.reward_model: {path} does not exist; train a reward model first "
                          "(objective rm) or give the folder of one")
    try:
        model, tokenizer = load_run(path)
    except TunelabError as e:
        raise ConfigError(f"objective.reward_model: {e}") from None
    if task_of(model) != "classify" or model.config.num_labels != 1:
        raise ConfigError(f"objective.reward_model: {path} is not a sequence-classification model with one output "
                          f"(found {type(model).__name__}, {model.config.num_labels} labels); use an rm run")
    if hasattr(model, "merge_and_unload"):  # a LoRA reward model: fold the adapter in once, not on every forward
        with contextlib.suppress(AttributeError, ValueError, NotImplementedError):
            model = model.merge_and_unload()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders find each row's last token through it
    model.requires_grad_(False).eval().to(device, dtype)
    return model, tokenizer


def make_reference(policy, cfg: RunConfig):
    """(reference model, context factory under which it computes the reference).

    An adapter method's reference is the policy's own base with the adapter off; a
    full/freeze policy's is a frozen copy, taken now, before any update.
    """
    method = METHODS[cfg.method_name]
    if method.saves == "adapter":
        return policy, lambda: adapter_disabled(method, policy)
    # Kept in the policy's own dtypes: a bfloat16 copy would differ from the policy before any
    # update (its residual stream would be rounded), and the KL would not start at 0.
    return copy.deepcopy(policy).requires_grad_(False).eval(), contextlib.nullcontext


# ---------------------------------------------------------------- rollouts


@dataclass
class Rollouts:
    """One batch of sampled answers and what PPO needs about them. B answers, P prompt
    columns (left-padded), R answer columns (padded after each answer's first EOS)."""

    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    response: torch.Tensor  # (B, R)
    mask: torch.Tensor  # (B, R) float: 1 up to and including the first EOS
    logprobs: torch.Tensor  # (B, R) under the policy that sampled
    ref_logprobs: torch.Tensor  # (B, R) under the reference
    values: torch.Tensor  # (B, R)
    scores: torch.Tensor  # (B,) reward-model scores
    ended: torch.Tensor  # (B,) bool: the answer ended with EOS
    answers: list[str]

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(prompt_ids, prompt_mask, response, mask) of rows `idx`, trimmed of columns that
        are padding in every one of them (less compute for short batches)."""
        prompt_mask, mask = self.prompt_mask[idx], self.mask[idx]
        start = int((prompt_mask.sum(0) > 0).nonzero()[0])
        width = int(mask.sum(1).max())
        return self.prompt_ids[idx, start:], prompt_mask[:, start:], self.response[idx, :width], mask[:, :width]


class Sampler:
    """Samples answers and scores them: policy, reference, reward model and decoding settings."""

    def __init__(self, agent: PolicyWithValue, reference, reference_on, reward, reward_tokenizer, tokenizer,
                 opts: Config, reward_max_length: int, batch_size: int, autocast):
        from transformers import GenerationConfig

        self.agent, self.reference, self.reference_on = agent, reference, reference_on
        self.reward, self.reward_tokenizer, self.tokenizer = reward, reward_tokenizer, tokenizer
        self.opts, self.batch_size, self.autocast = opts, batch_size, autocast
        self.eos_ids = eos_ids_for_generation(tokenizer, agent.policy.generation_config.eos_token_id)
        # A fresh config, so no sampling default of the model's own (top_p, top_k 50) shapes the answers.
        self.generation = GenerationConfig(do_sample=True, temperature=opts.temperature, top_k=opts.top_k, top_p=1.0,
                                           max_new_tokens=opts.max_new_tokens, eos_token_id=self.eos_ids,
                                           pad_token_id=tokenizer.pad_token_id, use_cache=True)
        self.reward_max_length = reward_max_length

    @torch.no_grad()
    def __call__(self, rows: list[list[int]], prompts: list[str]) -> Rollouts:
        """Answer `prompts` (token ids `rows`) once each, with log-probabilities, values and scores."""
        device = self.agent.value_head.weight.device
        pad = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = left_pad(rows, pad, device)
        with self.autocast():
            out = self.agent.policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                             generation_config=self.generation)
        response = out[:, prompt_ids.shape[1]:]  # (B, R), R <= max_new_tokens
        mask = response_mask(response, self.eos_ids)
        response = response.masked_fill(mask == 0, pad)
        ended = (torch.isin(response, torch.tensor(self.eos_ids, device=device)) & (mask > 0)).any(1)
        logprobs, ref_logprobs, values = self.token_scores(prompt_ids, prompt_mask, response, mask)
        answers = self.tokenizer.batch_decode(response, skip_special_tokens=True)
        scores = self.score([p + a for p, a in zip(prompts, answers)])
        return Rollouts(prompt_ids, prompt_mask, response, mask, logprobs, ref_logprobs, values, scores, ended,
                        answers)

    def token_scores(self, prompt_ids, prompt_mask, response, mask):
        """(logprobs, ref_logprobs, values), each (B, R), in chunks of batch_size."""
        parts = []
        for idx in torch.arange(len(response)).split(self.batch_size):
            p_ids, p_mask = prompt_ids[idx], prompt_mask[idx]
            with self.autocast():
                hidden = answer_hidden(self.agent.policy, p_ids, p_mask, response[idx], mask[idx])
                logits = self.agent.policy.get_output_embeddings()(hidden)
                values = self.agent.value_head(hidden).squeeze(-1).float()
                with self.reference_on():
                    ref_hidden = answer_hidden(self.reference, p_ids, p_mask, response[idx], mask[idx])
                    ref_logits = self.reference.get_output_embeddings()(ref_hidden)
            t = self.opts.temperature
            parts.append((token_logprobs(logits, response[idx], t), token_logprobs(ref_logits, response[idx], t),
                          values))
        return tuple(torch.cat(p) for p in zip(*parts))

    def score(self, texts: list[str]) -> torch.Tensor:
        """Reward-model scores of `texts` (prompt + answer), read as the rm objective trained them: (B,) float."""
        with self.autocast():
            scores = reward_scores(self.reward, self.reward_tokenizer, texts, self.reward_max_length, self.batch_size)
        return scores.to(self.agent.value_head.weight.device)


def shaped_scores(batch: Rollouts, opts: Config) -> torch.Tensor:
    """Scores as PPO optimises them: clipped to +-reward_clip, minus missing_eos_penalty for unfinished answers."""
    scores = batch.scores
    if opts.reward_clip is not None:
        scores = scores.clamp(-opts.reward_clip, opts.reward_clip)
    if opts.missing_eos_penalty is not None:
        scores = scores - opts.missing_eos_penalty * (~batch.ended).float()
    return scores


# ---------------------------------------------------------------- the PPO update


def ppo_update(agent: PolicyWithValue, optimizer, scheduler, batch: Rollouts, advantages, returns,
               opts: Config, micro: int, max_grad_norm: float, autocast) -> dict[str, float]:
    """`ppo_epochs` passes of minibatch updates over one batch of rollouts; returns the mean statistics.

    Each minibatch of `opts.minibatch` answers is one optimizer step; it runs forward in
    chunks of `micro` answers whose gradients add up to the minibatch's token mean.
    """
    stats: dict[str, list[float]] = {}
    params = [p for p in agent.parameters() if p.requires_grad]
    head = agent.policy.get_output_embeddings()
    for _ in range(opts.ppo_epochs):
        order = torch.randperm(len(batch.response), device=batch.response.device)
        for minibatch in order.split(opts.minibatch):
            optimizer.zero_grad(set_to_none=True)
            tokens = batch.mask[minibatch].sum().clamp(min=1)
            for idx in minibatch.split(micro):
                prompt_ids, prompt_mask, response, mask = batch.rows(idx)
                width = response.shape[1]
                with autocast():
                    hidden = answer_hidden(agent.policy, prompt_ids, prompt_mask, response, mask)
                    logits = head(hidden)  # (b, width, V)
                    values = agent.value_head(hidden).squeeze(-1).float()
                logprobs = token_logprobs(logits, response, opts.temperature)
                pg, pg_stats = policy_loss(logprobs, batch.logprobs[idx, :width], advantages[idx, :width], mask,
                                           opts.clip_range)
                vf, vf_stats = value_loss(values, batch.values[idx, :width], returns[idx, :width], mask,
                                          opts.clip_value)
                loss = pg + opts.vf_coef * vf
                (loss * mask.sum() / tokens).backward()  # chunk means weighted into the minibatch's token mean
                with torch.no_grad():
                    row = {"loss": loss, "policy_loss": pg, "value_loss": vf, **pg_stats, **vf_stats,
                           "entropy": masked_mean(entropy(logits, opts.temperature), mask)}
                for k, v in row.items():
                    stats.setdefault(k, []).append(float(v.detach()))
            if max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            scheduler.step()
    return {k: sum(v) / len(v) for k, v in stats.items()}


def make_optimizer(agent: PolicyWithValue, cfg: RunConfig, total_steps: int):
    """AdamW (eps 1e-5, Huang et al.) over the trainable weights, or the method's own (LoRA+),
    and train.lr_scheduler with train.warmup_ratio (a ratio below 1, else steps)."""
    from transformers import get_scheduler

    method = METHODS[cfg.method_name]
    kwargs = {"lr": cfg.train.lr, "weight_decay": cfg.train.weight_decay, "eps": 1e-5}
    optimizer = method.optimizer(agent, cfg.method, torch.optim.AdamW, kwargs) if method.optimizer else None
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in agent.parameters() if p.requires_grad], **kwargs)
    warmup = cfg.train.warmup_ratio
    warmup_steps = math.ceil(warmup * total_steps) if warmup < 1 else int(warmup)
    return optimizer, get_scheduler(cfg.train.lr_scheduler, optimizer, num_warmup_steps=warmup_steps,
                                    num_training_steps=total_steps)


# ---------------------------------------------------------------- evaluation


def evaluate(sample: Sampler, rows: list[list[int]], prompts: list[str], seed: int) -> tuple[dict, list[dict]]:
    """Mean score and KL of answers to the held-out prompts, sampled with a fixed seed (the
    training random stream is left as it was). Returns (metrics, samples)."""
    scores, kls, kls3, lengths, samples = [], [], [], [], []
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        step = sample.opts.rollout_batch
        for start in range(0, len(rows), step):
            batch = sample(rows[start:start + step], prompts[start:start + step])
            scores.append(batch.scores)
            kls.append(kl_estimate(batch.logprobs, batch.ref_logprobs, batch.mask))
            kls3.append(kl_estimate(batch.logprobs, batch.ref_logprobs, batch.mask, "k3"))
            lengths.append(batch.mask.sum(1))
            samples += [{"prompt": p, "answer": a, "score": round(float(s), 4)}
                        for p, a, s in zip(prompts[start:start + step], batch.answers, batch.scores)]
    metrics = {"eval_reward": float(torch.cat(scores).mean()), "eval_kl": float(torch.cat(kls).mean()),
               "eval_kl_k3": float(torch.cat(kls3).mean()), "eval_answer_tokens": float(torch.cat(lengths).mean())}
    return metrics, samples


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(run_dir: Path, iteration: int, agent, optimizer, scheduler, state: dict, keep: int) -> Path:
    """checkpoints/checkpoint-<iteration>/: trainable weights (policy and value head),
    optimizer, scheduler and random state, written to a staging folder, synced, renamed,
    then marked COMPLETE (the convention of tunelab.training.trainer)."""
    root = run_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{iteration}"
    staging = root / f".staging-{final.name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file({n: p.detach().contiguous() for n, p in agent.named_parameters() if p.requires_grad},
              str(staging / "trainable.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng},
               staging / "optimizer.pt")
    (staging / "state.json").write_text(json.dumps({"iteration": iteration, **state}))
    fsync_tree(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    (final / COMPLETE).write_text(json.dumps({"step": iteration}))
    rotate_checkpoints(root, keep)
    return final


def load_checkpoint(folder: Path, agent, optimizer, scheduler) -> dict:
    """Restore what save_checkpoint wrote; returns its state (iteration, counters)."""
    _, unexpected = agent.load_state_dict(load_file(str(folder / "trainable.safetensors")), strict=False)
    if unexpected:
        raise ConfigError(f"{folder}: checkpoint weights {unexpected[:3]} do not fit this model; was the run's "
                          "method or model changed? Resume with the run's own config.yaml")
    saved = torch.load(folder / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"]["cpu"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
    return json.loads((folder / "state.json").read_text())


# ---------------------------------------------------------------- the run


def run(cfg: RunConfig) -> dict:
    """Train a policy with PPO against a reward model, save it and summarise; returns the summary."""
    opts: Config = cfg.objective
    check_run(cfg)
    console = Console(stderr=True, quiet=not is_main_process())
    train_prompts, held_prompts, bad = load_prompts(cfg.data, cfg.train.seed)
    eval_on = "validation" if held_prompts else "train"  # no held-out split: watch the first train prompts
    eval_prompts = (held_prompts or train_prompts)[:opts.eval_prompts]
    dtype = compute_dtype(cfg.train.precision)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast = partial(torch.autocast, device.type, dtype=dtype, enabled=dtype != torch.float32)
    reward, reward_tokenizer = load_reward_model(opts.reward_model, dtype, device)
    record = RunRecord.create(cfg, active=is_main_process())

    policy, tokenizer = load_for_training(cfg)
    if not getattr(policy, "is_loaded_in_4bit", False):  # bitsandbytes placed a 4-bit model already
        policy.to(device)
    agent = PolicyWithValue(policy)
    agent.eval()  # dropout off for the whole run: old and new log-probabilities agree before an update
    reference, reference_on = make_reference(policy, cfg)  # before any update or checkpoint is loaded
    # The reward model reads prompt + answer; room for a tokenizer that splits the answer finer.
    sample = Sampler(agent, reference, reference_on, reward, reward_tokenizer, tokenizer, opts,
                     cfg.data.max_length + 2 * opts.max_new_tokens, cfg.train.batch_size, autocast)
    train_rows, truncated = tokenize_prompts(train_prompts, tokenizer, cfg.data.max_length)
    eval_rows, _ = tokenize_prompts(eval_prompts, tokenizer, cfg.data.max_length)
    iterations = cfg.train.max_steps if cfg.train.max_steps > 0 else \
        max(1, math.ceil(cfg.train.epochs * len(train_rows) / opts.rollout_batch))
    optimizer, scheduler = make_optimizer(
        agent, cfg, iterations * opts.ppo_epochs * math.ceil(opts.rollout_batch / opts.minibatch))
    console.print(f"ppo: {len(train_rows)} train prompts ({truncated} truncated), {len(eval_rows)} eval prompts "
                  f"({eval_on}); {iterations} iterations of {opts.rollout_batch} answers x {opts.ppo_epochs} epochs; "
                  f"reference: {'the base, adapter off' if reference is policy else 'a frozen copy'}")

    state = {"tokens": 0, "runtime_s": 0.0, "reward_before": None}
    resume = latest_checkpoint(record.folder) if cfg.train.resume else None
    if resume:
        state = load_checkpoint(resume, agent, optimizer, scheduler)
        forget_rows_after(record, state["iteration"])
        console.print(f"resumed from {resume.name}")
    else:
        torch.manual_seed(cfg.train.seed)
    start = state.pop("iteration", 0)
    evaluate_now = partial(evaluate, sample, eval_rows, eval_prompts, cfg.train.seed)
    evaluation, samples = evaluate_now() if start == 0 else ({}, [])
    if start == 0:
        state["reward_before"] = evaluation["eval_reward"]
        record.log({"step": 0, **evaluation})

    loop_s = 0.0
    for iteration in range(start + 1, iterations + 1):
        t0 = time.time()
        idx = prompt_indices(iteration, opts.rollout_batch, len(train_rows), cfg.train.seed)
        batch = sample([train_rows[i] for i in idx], [train_prompts[i] for i in idx])
        rewards = per_token_rewards(shaped_scores(batch, opts), batch.logprobs, batch.ref_logprobs, batch.mask,
                                    opts.kl_coef)
        advantages, returns = gae(rewards, batch.values, batch.mask, opts.gamma, opts.lam)
        if opts.whiten_advantages:
            advantages = whiten(advantages, batch.mask)
        stats = ppo_update(agent, optimizer, scheduler, batch, advantages, returns, opts, cfg.train.batch_size,
                           cfg.train.max_grad_norm, autocast)
        elapsed = time.time() - t0
        loop_s += elapsed
        state["runtime_s"] += elapsed
        # tokens trained: every real prompt and answer token, once per PPO epoch
        state["tokens"] += opts.ppo_epochs * int(batch.prompt_mask.sum() + batch.mask.sum())
        row = {"step": iteration, **iteration_metrics(batch), **{k: round(v, 6) for k, v in stats.items()},
               "lr": scheduler.get_last_lr()[0], "tokens": state["tokens"], "time_s": round(state["runtime_s"], 2),
               "tokens_per_s": round(state["tokens"] / max(state["runtime_s"], 1e-9), 1)}
        record.log(row)
        console.print(f"ppo {iteration}/{iterations}  reward {row['reward']:.4f}  kl {row['kl']:.4f}  "
                      f"loss {row['loss']:.4f}  clipfrac {row['clipfrac']:.3f}  entropy {row['entropy']:.3f}  "
                      f"{elapsed:.1f} s/it  ETA {(iterations - iteration) * loop_s / (iteration - start):.0f} s")
        if iteration == iterations or (opts.eval_every and iteration % opts.eval_every == 0):
            evaluation, samples = evaluate_now()
            record.log({"step": iteration, **evaluation})
            console.print(f"  eval: reward {evaluation['eval_reward']:.4f}  kl {evaluation['eval_kl']:.4f}")
        if cfg.train.save_steps > 0 and iteration % cfg.train.save_steps == 0:
            save_checkpoint(record.folder, iteration, agent, optimizer, scheduler, state, cfg.train.save_total_limit)
    if not evaluation:  # resumed from the last iteration's checkpoint: evaluate what was restored
        evaluation, samples = evaluate_now()

    saved = save_policy(agent, tokenizer, cfg, record.folder)
    write_samples(record.folder / "samples.jsonl", samples)
    rows = record.metrics()
    plot_rewards(rows, record.folder / "reward.png")
    losses = [r["loss"] for r in rows if "loss" in r]
    before, after = state["reward_before"], evaluation["eval_reward"]
    return record.finish({
        "objective": "ppo", "method": cfg.method_name, "model": cfg.model.name, "reward_model": opts.reward_model,
        "steps": iterations, "reward_before": _round(before), "reward_after": _round(after),
        "reward_gain": _round(after - before), "kl_final": _round(evaluation["eval_kl"]),
        "kl_k3_final": _round(evaluation["eval_kl_k3"]), "eval_on": eval_on, "eval_prompts": len(eval_rows),
        "train_loss": _round(sum(losses) / len(losses)) if losses else None, "tokens_trained": state["tokens"],
        "tokens_per_s": round(state["tokens"] / max(state["runtime_s"], 1e-9), 1),
        "train_runtime_s": round(state["runtime_s"], 2), "s_per_iteration": round(loop_s / max(iterations - start, 1), 2),
        **parameter_counts(agent), "artifact": saved.name, "artifact_bytes": artifact_bytes(saved),
        "prompts": len(train_rows), "truncated_prompts": truncated, "skipped_records": len(bad),
        "resumed_from": resume.name if resume else None,
    })


def check_run(cfg: RunConfig) -> None:
    """Raise ConfigError for a model, method or training setting ppo cannot use."""
    if task_for(cfg) != "causal_lm":
        raise ConfigError(f"objective ppo: model {cfg.model.name} is an encoder-decoder; ppo trains decoder-only "
                          "language models")
    if METHODS[cfg.method_name].kind == "features":
        raise ConfigError(f"objective ppo: method {cfg.method_name} fits a separate classifier and cannot generate; "
                          "choose lora, qlora, full ...")


def iteration_metrics(batch: Rollouts) -> dict[str, float]:
    """What one batch of rollouts says: score, KL to the reference (k1 and k3), answer length, share that ended."""
    kl = kl_estimate(batch.logprobs, batch.ref_logprobs, batch.mask)
    kl3 = kl_estimate(batch.logprobs, batch.ref_logprobs, batch.mask, "k3")
    return {"reward": float(batch.scores.mean()), "reward_std": float(batch.scores.std()) if len(batch.scores) > 1
            else 0.0, "kl": float(kl.mean()), "kl_k3": float(kl3.mean()),
            "answer_tokens": float(batch.mask.sum(1).mean()), "eos_frac": float(batch.ended.float().mean())}


def forget_rows_after(record: RunRecord, iteration: int) -> None:
    """Drop metrics.jsonl rows past the checkpoint being resumed: those iterations run again."""
    if record.active:
        kept = [r for r in record.metrics() if r.get("step", 0) <= iteration]
        (record.folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def prompt_indices(iteration: int, batch: int, n: int, seed: int) -> list[int]:
    """The prompts of iteration `iteration` (1-based): consecutive slices of a stream of
    seeded shuffles of all n prompts, one shuffle per pass. The same iteration always
    gets the same prompts, so a resumed run needs no sampler state."""
    import random

    orders: dict[int, list[int]] = {}
    out = []
    for position in range((iteration - 1) * batch, iteration * batch):
        epoch, i = divmod(position, n)
        if epoch not in orders:
            orders[epoch] = list(range(n))
            random.Random(seed + epoch).shuffle(orders[epoch])
        out.append(orders[epoch][i])
    return out


def save_policy(agent: PolicyWithValue, tokenizer, cfg: RunConfig, run_dir: Path) -> Path:
    """Save the policy as every objective does (save_result: adapter/ or model/, tokenizer,
    stop tokens, the base it was trained on) and the value head beside it."""
    policy = agent.policy
    # save_result reads these three things of a Trainer; a PPO run has no Trainer.
    one_process = SimpleNamespace(model=policy, is_world_process_zero=lambda: True,
                                  accelerator=SimpleNamespace(unwrap_model=lambda m: m, wait_for_everyone=lambda: None))
    folder = save_result(one_process, tokenizer, cfg, run_dir)
    head = {k: v.detach().float().contiguous().cpu() for k, v in agent.value_head.state_dict().items()}
    save_file(head, str(folder / VALUE_HEAD_FILE), metadata={"hidden_size": str(head["weight"].shape[1])})
    return folder


def write_samples(path: Path, samples: list[dict]) -> None:
    path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")


def plot_rewards(rows: list[dict], path: Path) -> None:
    """Training and held-out reward, and KL to the reference, against iteration, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5), dpi=100, sharex=True)
    for key, label, style in (("reward", "train reward", "-"), ("eval_reward", "held-out reward", "o-")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            top.plot(*zip(*points), style, label=label)
    for key, label, style in (("kl", "train KL (k1)", "-"), ("eval_kl", "held-out KL (k1)", "o-")):
        points = [(r["step"], r[key]) for r in rows if key in r]
        if points:
            bottom.plot(*zip(*points), style, label=label)
    top.set_ylabel("reward")
    bottom.set_ylabel("KL to reference")
    bottom.set_xlabel("iteration")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.legend()
    top.set_title(path.parent.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 5)


def check_config(cfg: RunConfig) -> None:
    """Rules across sections, checked when the config is read."""
    if cfg.train.gradient_checkpointing:  # it only runs in training mode, and ppo trains in eval mode (no dropout)
        fail("train.gradient_checkpointing", "not supported by objective ppo; set it to false")


register("ppo", Config, run, check=check_config)
