"""Classification: a sequence-classification head trained on text/label records.

Works with every method that trains weights (head, freeze, lora and its variants, ia3,
adapter, full) on decoder and encoder models, and with the feature route (probe):
frozen embeddings + a scikit-learn classifier. Accuracy and macro-F1 on the validation
split go to metrics.jsonl and summary.json. (Generative classification, label names as
answers, is objective sft on the same records.)
"""

from __future__ import annotations

from typing import Literal


from rich.console import Console

from tunelab.config import RunConfig
from tunelab.config.options import Options
from tunelab.data import Collator, describe
from tunelab.data.classify import build_classification
from tunelab.eval.classification import trainer_metrics
from tunelab.methods import METHODS
from tunelab.models.hub import resolve
from tunelab.models.loading import load_tokenizer
from tunelab.objectives import register
from tunelab.training import (
    RunRecord,
    cost_summary,
    load_for_training,
    make_trainer,
    save_result,
    train,
)
from tunelab.training.records import artifact_bytes, is_main_process

LABELS_FILE = "labels.json"  # {"labels": [...], "names": [...]} beside the saved weights


class Config(Options):
    """Classification has no options of its own; the labels come from the data."""

    name: Literal["classify"] = "classify"


def run(cfg: RunConfig) -> dict:
    """Train, evaluate, save and summarise one classifier; returns the summary."""
    main = is_main_process()
    console = Console(stderr=True, quiet=not main)
    record = RunRecord.create(cfg, active=main)
    if METHODS[cfg.method_name].kind == "features":
        return _run_probe(cfg, record, console)

    tokenizer = load_tokenizer(resolve(cfg.model.name, cfg.model.revision), cfg.model.trust_remote_code)
    data = build_classification(cfg.data, tokenizer, seed=cfg.train.seed)
    console.print(describe(data.stats) + f"\nlabels: {', '.join(data.names)}")
    model, tokenizer = load_for_training(cfg, "classify", num_labels=len(data.labels),
                                         id2label=dict(enumerate(data.names)),
                                         label2id={n: i for i, n in enumerate(data.names)})
    trainer = make_trainer(cfg, model, tokenizer, record, data.train, data.validation,
                           Collator(tokenizer.pad_token_id), console, compute_metrics=trainer_metrics)
    result, resume = train(trainer, cfg, record)
    final = trainer.evaluate() if data.validation else {}
    saved = save_result(trainer, tokenizer, cfg, record.folder,
                        extra_files={LABELS_FILE: {"labels": data.labels, "names": data.names}})
    return record.finish({
        "objective": "classify", "method": cfg.method_name, "model": cfg.model.name,
        **cost_summary(trainer, result, saved),
        "eval_loss": _round(final.get("eval_loss")), "accuracy": _round(final.get("eval_accuracy")),
        "macro_f1": _round(final.get("eval_macro_f1")), "labels": data.names,
        "skipped_records": len(data.bad), "data": data.stats, "resumed_from": resume.name if resume else None,
    })


def _run_probe(cfg: RunConfig, record: RunRecord, console: Console) -> dict:
    """The feature route: embed with the frozen model (cached), fit a scikit-learn classifier."""
    from tunelab.methods.probe import FeatureProbe, fit_probe

    probe = FeatureProbe.from_config(cfg.model, cfg.method)
    tokenizer = probe.tokenizer or probe.encoder.tokenizer  # a sentence-transformers embedder keeps its own
    data = build_classification(cfg.data, tokenizer, seed=cfg.train.seed)
    console.print(describe(data.stats) + f"\nlabels: {', '.join(data.names)}")
    train_labels = [data.labels[x["labels"]] for x in data.train]
    val_labels = [data.labels[x["labels"]] for x in data.validation]
    probe, metrics = fit_probe(data.texts["train"], train_labels, data.texts["validation"], val_labels,
                               probe, cfg.method)
    folder = record.folder / "adapter"
    probe.save(folder)
    record.log({"step": 0, **{f"eval_{k}": v for k, v in metrics.items()}})
    return record.finish({
        "objective": "classify", "method": cfg.method_name, "model": cfg.model.name,
        **metrics,
        "trainable_params": probe.trainable_params(), "artifact": folder.name, "artifact_bytes": artifact_bytes(folder),
        "labels": data.names, "skipped_records": len(data.bad), "data": data.stats,
    })


def _round(value):
    return round(value, 5) if value is not None else None


register("classify", Config, run)
