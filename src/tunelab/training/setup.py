"""Steps every objective shares: load the model for a method, count parameters, save the result."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, set_seed

from tunelab.config import RunConfig
from tunelab.data.templates import ensure_chat_template, eos_ids_for_generation
from tunelab.errors import ConfigError, RunStopped
from tunelab.hardware import compute_dtype
from tunelab.methods import METHODS, save_adapter
from tunelab.models.families import auto_class, family, task_of
from tunelab.models.hub import resolve
from tunelab.models.loading import load_model
from tunelab.training.autocast import adapters_follow_autocast, store_frozen_in
from tunelab.training.callbacks import RunLogger, StopOnSignal
from tunelab.training.records import artifact_bytes
from tunelab.training.trainer import (
    TunelabTrainer,
    latest_checkpoint,
    training_arguments,
)

log = logging.getLogger(__name__)


def load_for_training(cfg: RunConfig, task: str = "causal_lm", **model_kwargs):
    """Load the base model with `task`'s head, apply the method, and store frozen weights
    in the compute dtype. `model_kwargs` go to from_pretrained (e.g. num_labels).

    Returns (model, tokenizer).
    """
    method = METHODS[cfg.method_name]
    if task not in method.tasks:
        raise ConfigError(f"method {method.name} does not train {task} models (it supports {', '.join(method.tasks)}); "
                          f"choose another method")
    # Methods initialise new weights (LoRA's A) here, before the Trainer seeds: seed now, or
    # the same config trains differently depending on what ran before in this process.
    set_seed(cfg.train.seed)
    extra = method.load_kwargs(cfg.method) if method.load_kwargs else {}
    with _quiet_load_report(task == "classify"):  # a new head is "missing" from the checkpoint by design
        model, tokenizer = load_model(cfg.model, dtype=torch.float32, auto_class=auto_class(task), **extra,
                                      **model_kwargs)
    if task != "classify":  # a classifier reads plain text; encoders have no chat template or EOS
        ensure_chat_template(tokenizer)
    model.config.use_cache = False
    if task == "classify" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders find each row's last token through it
    model = method.apply(model, cfg.method)
    dtype = compute_dtype(cfg.train.precision)
    if method.freezes_base and dtype != torch.float32:
        store_frozen_in(model, dtype)
        adapters_follow_autocast(model)
    if cfg.train.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input when embeddings are frozen
    return model, tokenizer


@contextlib.contextmanager
def _quiet_load_report(quiet: bool):
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def task_for(cfg: RunConfig) -> str:
    """The task a generative run trains: seq2seq for encoder-decoders, causal_lm for
    decoders; encoders cannot generate and only classify."""
    config = AutoConfig.from_pretrained(str(resolve(cfg.model.name, cfg.model.revision)),
                                        trust_remote_code=cfg.model.trust_remote_code)
    fam = family(config)
    if fam == "encoder":
        raise ConfigError(f"model {cfg.model.name} is an encoder-only ({config.model_type}) model: it cannot generate "
                          "text; train it with objective classify (methods head, freeze, lora, full, probe)")
    return "seq2seq" if fam == "encoder-decoder" else "causal_lm"


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}


def save_result(trainer, tokenizer, cfg: RunConfig, run_dir: Path, extra_files: dict | None = None) -> Path:
    """Save the adapter (adapter/) or the whole model (model/) with tokenizer and stop tokens.

    `extra_files` ({name: json-able}) are written beside them (a classifier's labels).
    The folder loads with plain transformers / peft, without tunelab (a bottleneck adapter
    or a head needs tunelab's loader).
    """
    method = METHODS[cfg.method_name]
    folder = run_dir / ("adapter" if method.saves == "adapter" else "model")
    model = trainer.accelerator.unwrap_model(trainer.model)
    if method.saves == "model":
        model = model.float()  # frozen parts were kept in the compute dtype during training
    gen = getattr(model, "generation_config", None)
    if gen is not None and task_of(model) != "classify":
        gen.eos_token_id = eos_ids_for_generation(tokenizer, gen.eos_token_id)
        gen.pad_token_id = tokenizer.pad_token_id
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        if method.saves == "adapter":
            save_adapter(method, model, folder)
            _record_base(folder, model)
        else:
            model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        if gen is not None and task_of(model) != "classify":
            gen.save_pretrained(str(folder))
        for name, data in (extra_files or {}).items():
            (folder / name).write_text(json.dumps(data, indent=2))
        _record_system_prompt(folder, cfg, model)
    trainer.accelerator.wait_for_everyone()
    return folder


def _record_system_prompt(folder: Path, cfg: RunConfig, model) -> None:
    """Record the system prompt every training record carried: chat, generate, serve and every export use it
    by default for this run, so the model is asked as it was trained."""
    from tunelab.compress.source import SYSTEM_PROMPT_FILE, common_system_prompt
    from tunelab.errors import TunelabError

    if task_of(model) == "classify" or not cfg.data.train:
        return
    try:
        system = common_system_prompt(cfg.data)
    except (TunelabError, KeyError, TypeError):  # records this reader does not take as chat (pairs, prompts)
        return
    if system:
        (folder / SYSTEM_PROMPT_FILE).write_text(json.dumps({"system_prompt": system}, ensure_ascii=False, indent=2))


def _record_base(folder: Path, model) -> None:
    """Point adapter_config.json at the local base folder, so peft alone can reload it."""
    path = folder / "adapter_config.json"
    if not path.is_file():
        return  # not a peft adapter
    data = json.loads(path.read_text())
    base = model.get_base_model().config.name_or_path
    if base and Path(base).is_dir():
        data["base_model_name_or_path"] = str(Path(base).resolve())
        path.write_text(json.dumps(data, indent=2))


def make_trainer(cfg: RunConfig, model, tokenizer, record, train, validation, collator, console,
                 compute_metrics=None, trainer_class: type | None = None, perplexity: bool | None = None,
                 **trainer_kwargs) -> TunelabTrainer:
    """The Trainer every objective uses: arguments from cfg.train, the method's optimizer
    (if it has its own), and the run's progress/metrics logger.

    `trainer_class` is TunelabTrainer or a subclass (given `trainer_kwargs`); evaluation
    rows carry perplexity when the loss is a language model's (`perplexity` overrides).
    """
    method = METHODS[cfg.method_name]
    args = training_arguments(cfg.train, record.folder, has_eval=bool(validation))
    make_optimizer = (lambda m, cls, kw: method.optimizer(m, cfg.method, cls, kw)) if method.optimizer else None
    trainer = (trainer_class or TunelabTrainer)(
        model=model, args=args, train_dataset=train, eval_dataset=validation or None, data_collator=collator,
        processing_class=tokenizer, compute_metrics=compute_metrics, make_optimizer=make_optimizer, **trainer_kwargs)
    tokens = lambda: trainer.real_tokens_seen * trainer.accelerator.num_processes
    perplexity = trainer.lm_loss if perplexity is None else perplexity
    trainer.add_callback(RunLogger(record, tokens, console, perplexity=perplexity))
    trainer.add_callback(StopOnSignal())
    return trainer


def train(trainer, cfg: RunConfig, record) -> tuple[Any, Path | None]:
    """Train (from the latest complete checkpoint when cfg.train.resume); returns (result, resumed_from)."""
    resume = latest_checkpoint(record.folder) if cfg.train.resume else None
    stopper = next((c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnSignal)), None)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        if stopper is not None:
            stopper.restore()
    if stopper is not None and stopper.requested:
        raise RunStopped(f"{record.folder}: stopped at step {trainer.state.global_step} of {trainer.state.max_steps}; "
                         f"a checkpoint is saved: continue with tunelab train {record.folder / 'config.yaml'} --resume")
    return result, resume


def cost_summary(trainer, result, saved: Path) -> dict:
    """Steps, throughput, parameters and artifact size: the part of every summary that is about cost.
    Every process must call it (the token count is a reduce)."""
    trained = trainer.tokens_trained()  # exact over processes; the progress line scales rank 0's count
    runtime = result.metrics["train_runtime"]
    return {
        "steps": trainer.state.global_step, "train_loss": round(result.training_loss, 5),
        "tokens_trained": trained, "tokens_per_s": round(trained / max(runtime, 1e-9), 1),
        "train_runtime_s": round(runtime, 2),
        **parameter_counts(trainer.model), "artifact": saved.name, "artifact_bytes": artifact_bytes(saved),
    }
