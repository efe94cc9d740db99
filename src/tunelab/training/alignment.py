"""What DPO and its relatives (KTO, ORPO, SimPO) share: preference data, a trl trainer,
held-out reward accuracy before and after, and the run record.

Each objective module only says which trl trainer and which of its options to use (an
`AlignmentSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from rich.console import Console

from tunelab.config import RunConfig
from tunelab.data.preference import PreferenceData, build_pairs, build_unpaired, unpair
from tunelab.errors import ConfigError
from tunelab.eval.preference import completion_logps, pair_metrics
from tunelab.training.library import make_library_trainer
from tunelab.training.records import RunRecord, is_main_process
from tunelab.training.setup import (
    cost_summary,
    load_for_training,
    save_result,
    task_for,
    train,
)


@dataclass
class AlignmentSpec:
    """How one objective trains.

    trainer_class/args_class: the trl trainer and its TrainingArguments subclass.
    args: the trainer's own options (loss type, beta, ...).
    beta: the scale of the implicit reward reported on held-out pairs.
    unpaired: KTO: trains on single completions labelled good or bad.
    """

    trainer_class: type
    args_class: type
    args: dict = field(default_factory=dict)
    beta: float = 0.1
    unpaired: bool = False


def build_trainer(cfg: RunConfig, spec: AlignmentSpec, record: RunRecord, console: Console | None = None):
    """Data, policy and trainer of one run; returns (trainer, tokenizer, data)."""
    console = console or Console(stderr=True, quiet=True)
    name = cfg.objective_name
    if task_for(cfg) != "causal_lm":
        raise ConfigError(f"objective {name} trains decoder-only models; {cfg.model.name} is an encoder-decoder")
    data = (build_unpaired if spec.unpaired else build_pairs)(cfg.data, cfg.train.seed, name)
    console.print(f"{data.stats['format']} records: {len(data.train)} train, {len(data.validation)} held-out pairs; "
                  f"{len(data.bad)} bad skipped")
    model, tokenizer = load_for_training(cfg, "causal_lm")
    watch = cfg.train.eval_steps > 0 and data.validation  # trl's own evaluation during training
    validation = (unpair(data.validation) if spec.unpaired else data.validation) if watch else []
    trainer = make_library_trainer(cfg, spec.trainer_class, spec.args_class, model, tokenizer, record, data.train,
                                   validation, console, args={"max_length": cfg.data.max_length, **spec.args})
    return trainer, tokenizer, data


def run_alignment(cfg: RunConfig, spec: AlignmentSpec) -> dict:
    """Train a policy on preferences and return the summary written to summary.json, with
    held-out reward accuracy (and its 95% interval) and the mean margin of
    beta * (log pi - log pi_start) on the held-out pairs."""
    main = is_main_process()
    console = Console(stderr=True, quiet=not main)
    record = RunRecord.create(cfg, active=main)
    trainer, tokenizer, data = build_trainer(cfg, spec, record, console)
    start = held_out_logps(trainer, tokenizer, data, cfg)  # before any step: the start model
    result, resume = train(trainer, cfg, record)
    scores = {}
    if start is not None:
        end = held_out_logps(trainer, tokenizer, data, cfg)
        scores = pair_metrics(spec.beta * (end[0] - start[0]), spec.beta * (end[1] - start[1]))
        record.log({"step": trainer.state.global_step, **{f"eval_reward_{k}": v for k, v in scores.items()}})
    saved = save_result(trainer, tokenizer, cfg, record.folder)
    return record.finish({
        "objective": cfg.objective_name, "method": cfg.method_name, "model": cfg.model.name,
        **cost_summary(trainer, result, saved),
        **{f"reward_{k}": v for k, v in scores.items()},
        "skipped_records": len(data.bad), "data": data.stats, "resumed_from": resume.name if resume else None,
    })


def held_out_logps(trainer, tokenizer, data: PreferenceData, cfg: RunConfig):
    """(chosen, rejected) log-probabilities of the policy's completions of the held-out
    pairs, each ending with EOS as trl trains them; None without held-out pairs."""
    if not data.validation:
        return None
    model = trainer.accelerator.unwrap_model(trainer.model)
    prompts = [p["prompt"] for p in data.validation]
    eos = tokenizer.eos_token or ""
    with trainer.accelerator.autocast(), torch.no_grad():
        return tuple(completion_logps(model, tokenizer, prompts, [p[side] + eos for p in data.validation],
                                      cfg.data.max_length, cfg.train.batch_size) for side in ("chosen", "rejected"))
