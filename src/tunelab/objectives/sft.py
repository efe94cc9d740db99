"""Supervised fine-tuning / instruction tuning: next-token loss on the answers only.

Data: instruction, chat, prompt-completion, text or classification (label names as
answers: generative classification) records; see tunelab.data. Decoder models learn the
answer after the prompt; encoder-decoder models (T5) map the prompt to the answer.
Generative classifiers are also scored by accuracy and macro-F1 on the validation split.
"""

from __future__ import annotations

from typing import Literal


from rich.console import Console

from tunelab.config import RunConfig
from tunelab.config.options import Options
from tunelab.data import Collator, build_sft, describe
from tunelab.data.dataset import label_name, load_records, split_records
from tunelab.errors import ConfigError
from tunelab.eval.classification import label_accuracy
from tunelab.methods import METHODS
from tunelab.objectives import register
from tunelab.training import (
    RunRecord,
    cost_summary,
    load_for_training,
    make_trainer,
    save_result,
    task_for,
    train,
)
from tunelab.training.records import is_main_process


class Config(Options):
    """Supervised fine-tuning has no options of its own."""

    name: Literal["sft"] = "sft"


def run(cfg: RunConfig) -> dict:
    """Train, save and summarise one SFT run; returns the summary written to summary.json."""
    main = is_main_process()
    console = Console(stderr=True, quiet=not main)
    if cfg.data.packing and not METHODS[cfg.method_name].packing:
        raise ConfigError(f"data.packing: method {cfg.method_name} prepends virtual tokens and cannot keep packed "
                          "examples apart; set data.packing: false")
    task = task_for(cfg)
    record = RunRecord.create(cfg, active=main)

    model, tokenizer = load_for_training(cfg, task)
    data = build_sft(cfg.data, tokenizer, seed=cfg.train.seed, seq2seq=task == "seq2seq")
    console.print(describe(data.stats))

    trainer = make_trainer(cfg, model, tokenizer, record, data.train, data.validation,
                           Collator(tokenizer.pad_token_id), console)
    result, resume = train(trainer, cfg, record)
    final = trainer.evaluate() if data.validation else {}
    scores = label_scores(cfg, trainer, tokenizer) if data.format == "classification" and task == "causal_lm" else {}
    if scores:
        record.log({"step": trainer.state.global_step, **{f"eval_{k}": v for k, v in scores.items()}})
    saved = save_result(trainer, tokenizer, cfg, record.folder)

    return record.finish({
        "objective": "sft", "method": cfg.method_name, "model": cfg.model.name, "task": task,
        **cost_summary(trainer, result, saved),
        "eval_loss": round(final["eval_loss"], 5) if "eval_loss" in final else None, **scores,
        "skipped_records": len(data.bad), "data": data.stats, "resumed_from": resume.name if resume else None,
    })


def label_scores(cfg: RunConfig, trainer, tokenizer) -> dict:
    """Generative classification: accuracy and macro-F1 of ranking the label names on the
    validation records (the same split build_sft held out)."""
    records, validation, _ = split_records(load_records(cfg.data.train, cfg.data), cfg.data, cfg.train.seed)
    if not validation:
        return {}
    names = sorted({label_name(r["label"], cfg.data) for r in records + validation})
    questions = [cfg.data.prompt_template.format(text=r["text"]) for r in validation]
    gold = [names.index(label_name(r["label"], cfg.data)) for r in validation]
    model = trainer.accelerator.unwrap_model(trainer.model)
    with trainer.accelerator.autocast():
        return label_accuracy(model, tokenizer, questions, gold, names, system=cfg.data.system_prompt,
                              batch_size=cfg.train.batch_size)


register("sft", Config, run)
