"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300)
through trl's GRPOTrainer.

For each prompt the policy samples `num_generations` answers; each answer's advantage is
its reward relative to its group's. Rewards are Python callables or reward models named
in `objective.rewards` (see tunelab.training.rewards). Records need a `prompt` (map
yours with data.columns, e.g. {question: prompt}); their other fields reach the reward
functions (e.g. `answer` for exact_answer). Held-out prompts are answered greedily before
and after training, and each reward's mean is reported.
"""

from __future__ import annotations

from typing import Literal


import torch
from pydantic import model_validator
from rich.console import Console
from trl import GRPOConfig, GRPOTrainer

from tunelab.config import RunConfig
from tunelab.config.options import Options, fail, opt
from tunelab.data.dataset import LoadedRecords, split_records
from tunelab.data.readers import read_records
from tunelab.errors import ConfigError, DataError
from tunelab.infer.generate import DecodingConfig, generate
from tunelab.objectives import register
from tunelab.training import (
    RunRecord,
    cost_summary,
    load_for_training,
    save_result,
    task_for,
    train,
)
from tunelab.training.library import make_library_trainer
from tunelab.training.records import is_main_process
from tunelab.training.rewards import load_reward


class Config(Options):
    """GRPO options (trl's GRPOConfig)."""

    name: Literal["grpo"] = "grpo"
    rewards: list[str] = opt(["format"], "reward functions: format, has_answer, exact_answer, file.py:fn or a reward "
                             "model folder (see tunelab.training.rewards)", min_length=1, aka=("reward_funcs",))
    reward_weights: list[float] = opt([], "one weight per reward; empty: 1 each")
    prompt_template: str = opt("{prompt}", "the user message, from a record's fields")
    num_generations: int = opt(8, "answers sampled per prompt (the group); advantages compare them", ge=2)
    max_completion_length: int = opt(128, "the most tokens an answer may have", ge=1)
    temperature: float = opt(1.0, "sampling temperature", gt=0)
    beta: float = opt(0.0, "KL penalty to the reference (0: none, as in recent GRPO practice)", ge=0)
    eval_prompts: int = opt(64, "held-out prompts answered before and after", ge=0)

    @model_validator(mode="after")
    def _one_weight_per_reward(self) -> Config:
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            fail("reward_weights", f"{len(self.reward_weights)} weights for {len(self.rewards)} rewards")
        return self


def check_run(cfg: RunConfig) -> None:
    """Rules across sections: each prompt's group of answers trains together."""
    o = cfg.objective
    if (cfg.train.batch_size * cfg.train.grad_accum) % o.num_generations:
        fail("train.batch_size", f"batch_size x grad_accum ({cfg.train.batch_size} x {cfg.train.grad_accum}) must "
             f"be a multiple of objective.num_generations ({o.num_generations}): each prompt's group of answers "
             "trains together")


def run(cfg: RunConfig) -> dict:
    """Train a policy with GRPO; returns the summary with held-out rewards before and after."""
    o = cfg.objective
    main = is_main_process()
    console = Console(stderr=True, quiet=not main)
    if task_for(cfg) != "causal_lm":
        raise ConfigError(f"objective grpo trains decoder-only models; {cfg.model.name} is an encoder-decoder")
    records, held_out, _ = split_records(LoadedRecords("prompts", read_prompts(cfg)), cfg.data, cfg.train.seed)
    held_out = held_out[:o.eval_prompts]
    rewards = [load_reward(spec) for spec in o.rewards]
    record = RunRecord.create(cfg, active=main)
    model, tokenizer = load_for_training(cfg, "causal_lm")

    funcs, processors = [], []
    for reward in rewards:  # a reward model comes as (model, tokenizer)
        funcs.append(reward[0] if isinstance(reward, tuple) else reward)
        processors.append(reward[1] if isinstance(reward, tuple) else None)
    args = {"num_generations": o.num_generations, "max_completion_length": o.max_completion_length,
            "temperature": o.temperature, "beta": o.beta, "reward_weights": o.reward_weights or None,
            "log_completions": False}
    trainer = make_library_trainer(cfg, ComputeDtypeGRPOTrainer, GRPOConfig, model, tokenizer, record,
                                   [as_conversation(r, cfg) for r in records], [], console, args=args,
                                   reward_funcs=funcs, reward_processing_classes=processors)
    before, answers_before = held_out_rewards(trainer, tokenizer, held_out, cfg) if held_out else ({}, [])
    result, resume = train(trainer, cfg, record)
    after, answers_after = held_out_rewards(trainer, tokenizer, held_out, cfg) if held_out else ({}, [])
    record.log({"step": trainer.state.global_step, **{f"eval_{k}_before": v for k, v in before.items()},
                **{f"eval_{k}_after": v for k, v in after.items()}})
    saved = save_result(trainer, tokenizer, cfg, record.folder)
    return record.finish({
        "objective": "grpo", "method": cfg.method_name, "model": cfg.model.name,
        **cost_summary(trainer, result, saved),
        "rewards_before": before, "rewards_after": after, "eval_prompts": len(held_out),
        "answers_before": answers_before[:3], "answers_after": answers_after[:3],
        "resumed_from": resume.name if resume else None,
    })


class ComputeDtypeGRPOTrainer(GRPOTrainer):
    """GRPOTrainer that also samples and scores under the training autocast: frozen weights
    are kept in bfloat16 where the hardware has it, and trl runs this step outside it."""

    def _generate_and_score_completions(self, inputs):
        with self.accelerator.autocast():
            return super()._generate_and_score_completions(inputs)


def read_prompts(cfg: RunConfig) -> list[dict]:
    """Records with a `prompt` field (after data.columns renames), other fields kept for rewards."""
    if not cfg.data.train:
        raise DataError("data.train: no prompt file given; objective grpo needs records with a 'prompt' field")
    out = []
    for r in read_records(cfg.data.train, cfg.data.max_record_bytes, cfg.data.skip_bad):
        data = {cfg.data.columns.get(k, k): v for k, v in r.data.items()}
        if not isinstance(data.get("prompt"), str):
            raise DataError(f"{r.where}: no text 'prompt' field (fields: {sorted(data)}); map yours with "
                            "data.columns, e.g. {question: prompt}")
        out.append(data)
        if cfg.data.limit and len(out) >= cfg.data.limit:
            break
    if not out:
        raise DataError(f"{cfg.data.train}: no records")
    return out


def as_conversation(record: dict, cfg: RunConfig) -> dict:
    """The record with its prompt as a chat turn (trl applies the model's chat template)."""
    try:
        content = cfg.objective.prompt_template.format(**record)
    except KeyError as e:
        raise ConfigError(f"objective.prompt_template: field {e} is not in the records (fields: {sorted(record)})") from None
    messages = [{"role": "user", "content": content}]
    if cfg.data.system_prompt:
        messages.insert(0, {"role": "system", "content": cfg.data.system_prompt})
    return {**record, "prompt": messages}


def held_out_rewards(trainer, tokenizer, records: list[dict], cfg: RunConfig) -> tuple[dict, list[str]]:
    """({reward name: mean}, answers) over greedy answers to the held-out prompts."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    conversations = [as_conversation(r, cfg) for r in records]
    decoding = DecodingConfig(max_new_tokens=cfg.objective.max_completion_length)
    with trainer.accelerator.autocast(), torch.no_grad():
        answers = generate(model, tokenizer, [c["prompt"] for c in conversations], decoding,
                           batch_size=max(cfg.train.batch_size, 8))
    fields = {k: [r.get(k) for r in records] for k in records[0] if k != "prompt"}
    scores = {}
    for name, func in zip(cfg.objective.rewards, trainer.reward_funcs, strict=True):
        if isinstance(func, torch.nn.Module):
            from tunelab.eval.preference import reward_scores

            processor = trainer.reward_processing_classes[cfg.objective.rewards.index(name)]
            texts = [tokenizer.apply_chat_template(c["prompt"], tokenize=False, add_generation_prompt=True) + a
                     for c, a in zip(conversations, answers, strict=True)]
            values = reward_scores(func, processor, texts, cfg.data.max_length).tolist()
        else:
            values = func(prompts=[c["prompt"] for c in conversations], completions=answers, **fields)
        scores[name] = round(sum(values) / len(values), 5)
    return scores, answers


register("grpo", Config, run, check=check_run)
