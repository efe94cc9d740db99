"""Continued pretraining: next-token loss on every token of raw text.

Data: .txt files (or a folder of them) or the `text` field of records, joined with EOS
between documents and cut into blocks of data.max_length tokens (see
tunelab.data.pretrain). Validation perplexity is measured before and after training.
"""

from __future__ import annotations

from typing import Literal

import math

from rich.console import Console

from tunelab.config import RunConfig
from tunelab.config.options import Options
from tunelab.data import Collator
from tunelab.data.pretrain import build_pretrain
from tunelab.errors import ConfigError
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
    """Continued pretraining has no options of its own; block size is data.max_length."""

    name: Literal["pt"] = "pt"


def run(cfg: RunConfig) -> dict:
    """Train on raw text; returns the summary, with validation perplexity before and after."""
    main = is_main_process()
    console = Console(stderr=True, quiet=not main)
    if task_for(cfg) != "causal_lm":
        raise ConfigError(f"objective pt trains decoder-only models; {cfg.model.name} is an encoder-decoder")
    record = RunRecord.create(cfg, active=main)
    model, tokenizer = load_for_training(cfg, "causal_lm")
    data = build_pretrain(cfg.data, tokenizer, cfg.data.max_length)
    console.print(f"text: {data.stats['documents']} documents -> {len(data.train)} train blocks and "
                  f"{len(data.validation)} validation blocks of {cfg.data.max_length} tokens")

    trainer = make_trainer(cfg, model, tokenizer, record, data.train, data.validation,
                           Collator(tokenizer.pad_token_id), console)
    before = _perplexity(trainer) if data.validation else None  # logged as step 0's eval_perplexity
    result, resume = train(trainer, cfg, record)
    after = _perplexity(trainer) if data.validation else None
    saved = save_result(trainer, tokenizer, cfg, record.folder)
    return record.finish({
        "objective": "pt", "method": cfg.method_name, "model": cfg.model.name,
        **cost_summary(trainer, result, saved),
        "perplexity_before": before, "perplexity_after": after,
        "perplexity_drop": round(1 - after / before, 5) if before else None,
        "data": data.stats, "resumed_from": resume.name if resume else None,
    })


def _perplexity(trainer) -> float:
    """exp of the mean next-token loss over the validation blocks (equal lengths: a per-token mean)."""
    return round(math.exp(trainer.evaluate()["eval_loss"]), 4)


register("pt", Config, run)
