"""Supervised fine-tuning / instruction tuning: next-token loss on the answers only.

Data: instruction, chat, prompt-completion, text or classification (label words as
answers) records; see tunelab.data.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from tunelab.config import RunConfig
from tunelab.data import Collator, build_sft, describe
from tunelab.objectives import register
from tunelab.training import (RunLogger, RunRecord, TunelabTrainer, latest_checkpoint, load_for_training,
                              parameter_counts, save_result, training_arguments)
from tunelab.training.records import artifact_bytes, is_main_process


@dataclass
class Config:
    name: str = "sft"


def run(cfg: RunConfig) -> dict:
    """Train, save and summarise one SFT run; returns the summary written to summary.json."""
    main = is_main_process()
    console = Console(stderr=True, quiet=not main)
    record = RunRecord.create(cfg, active=main)

    model, tokenizer = load_for_training(cfg)
    data = build_sft(cfg.data, tokenizer, seed=cfg.train.seed)
    console.print(describe(data.stats))

    args = training_arguments(cfg.train, record.folder, has_eval=bool(data.validation))
    trainer = TunelabTrainer(model=model, args=args, train_dataset=data.train,
                             eval_dataset=data.validation or None, data_collator=Collator(tokenizer.pad_token_id),
                             processing_class=tokenizer)
    tokens = lambda: trainer.real_tokens_seen * trainer.accelerator.num_processes  # noqa: E731
    trainer.add_callback(RunLogger(record, tokens, console))

    resume = latest_checkpoint(record.folder) if cfg.train.resume else None
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = trainer.evaluate() if data.validation else {}
    saved = save_result(trainer, tokenizer, cfg, record.folder)

    trained = trainer.tokens_trained()  # exact over processes; tokens() scales rank 0's count for progress only
    return record.finish({
        "objective": "sft", "method": cfg.method_name, "model": cfg.model.name,
        "steps": trainer.state.global_step, "train_loss": round(result.training_loss, 5),
        "eval_loss": round(final["eval_loss"], 5) if "eval_loss" in final else None,
        "tokens_trained": trained, "tokens_per_s": round(trained / max(result.metrics["train_runtime"], 1e-9), 1),
        "train_runtime_s": round(result.metrics["train_runtime"], 2),
        **parameter_counts(trainer.model), "artifact": saved.name, "artifact_bytes": artifact_bytes(saved),
        "skipped_records": len(data.bad), "data": data.stats, "resumed_from": resume.name if resume else None,
    })


register("sft", Config, run)
