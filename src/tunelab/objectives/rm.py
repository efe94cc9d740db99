"""Reward model: a scalar head trained on preference pairs with the Bradley-Terry loss,
-log sigmoid(r(x, chosen) - r(x, rejected)) (Ouyang et al. 2022, arXiv:2203.02155), through
trl's RewardTrainer.

The model is the base as a sequence classifier with one output; any weights method
trains it (LoRA also trains the new head). Reported: pairwise accuracy on held-out pairs
with its 95% interval, and the mean margin. The saved run loads with
`tunelab.load_run` as a one-output classifier, which `ppo` and `grpo` use as a reward.
"""

from __future__ import annotations

from typing import Literal


import torch
from rich.console import Console
from trl import RewardConfig, RewardTrainer

from tunelab.config import RunConfig
from tunelab.config.options import Options, opt
from tunelab.data.preference import build_pairs
from tunelab.eval.preference import pair_metrics, reward_scores
from tunelab.objectives import register
from tunelab.training import (
    RunRecord,
    cost_summary,
    load_for_training,
    save_result,
    train,
)
from tunelab.training.library import make_library_trainer
from tunelab.training.records import is_main_process

REWARD_LABELS = {"labels": ["reward"], "names": ["reward"]}  # labels.json: a classifier with one output


class Config(Options):
    """Reward model options (trl's RewardConfig)."""

    name: Literal["rm"] = "rm"
    center_rewards: float = opt(0.0, "weight of a penalty on the mean reward squared (keeps scores near 0)", ge=0,
                                aka=("center_rewards_coefficient",))


def run(cfg: RunConfig) -> dict:
    """Train, evaluate and save a reward model; returns the summary."""
    main = is_main_process()
    console = Console(stderr=True, quiet=not main)
    data = build_pairs(cfg.data, cfg.train.seed, "rm")
    console.print(f"preference pairs: {len(data.train)} train, {len(data.validation)} held out; "
                  f"{len(data.bad)} bad skipped")
    record = RunRecord.create(cfg, active=main)
    model, tokenizer = load_for_training(cfg, "classify", num_labels=1, id2label={0: "reward"},
                                         label2id={"reward": 0})
    watch = data.validation if cfg.train.eval_steps > 0 else []
    trainer = make_library_trainer(cfg, RewardTrainer, RewardConfig, model, tokenizer, record, data.train, watch,
                                   console, args={"max_length": cfg.data.max_length,
                                                  "center_rewards_coefficient": cfg.objective.center_rewards or None})
    result, resume = train(trainer, cfg, record)
    scores = held_out_accuracy(trainer, tokenizer, data.validation, cfg) if data.validation else {}
    if scores:
        record.log({"step": trainer.state.global_step, **{f"eval_{k}": v for k, v in scores.items()}})
    saved = save_result(trainer, tokenizer, cfg, record.folder, extra_files={"labels.json": REWARD_LABELS})
    return record.finish({
        "objective": "rm", "method": cfg.method_name, "model": cfg.model.name,
        **cost_summary(trainer, result, saved), **scores,
        "skipped_records": len(data.bad), "data": data.stats, "resumed_from": resume.name if resume else None,
    })


def held_out_accuracy(trainer, tokenizer, pairs: list[dict], cfg: RunConfig) -> dict:
    """Pairwise accuracy, its 95% interval and the mean margin of the trained model."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    with trainer.accelerator.autocast(), torch.no_grad():
        chosen = reward_scores(model, tokenizer, [p["prompt"] + p["chosen"] for p in pairs], cfg.data.max_length,
                               cfg.train.batch_size)
        rejected = reward_scores(model, tokenizer, [p["prompt"] + p["rejected"] for p in pairs], cfg.data.max_length,
                                 cfg.train.batch_size)
    return pair_metrics(chosen, rejected)


register("rm", Config, run)
