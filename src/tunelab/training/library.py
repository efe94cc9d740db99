"""Library trainers (trl's DPO, KTO, ORPO, CPO/SimPO, reward and GRPO trainers) set up
like tunelab's own: arguments from cfg.train, the method's optimizer, atomic
checkpoints, and the run's metrics log and progress line."""

from __future__ import annotations

import datasets
import torch
from datasets import Dataset
from transformers import PrinterCallback, Trainer

from tunelab.config import RunConfig
from tunelab.methods import METHODS
from tunelab.training.callbacks import RunLogger, StopOnSignal
from tunelab.training.trainer import AtomicCheckpoints, training_arguments


def make_library_trainer(cfg: RunConfig, trainer_class: type, args_class: type, model, tokenizer, record,
                         train: list[dict], validation: list[dict], console, args: dict | None = None, **kwargs):
    """Build `trainer_class` (a transformers Trainer subclass) on record lists.

    Args:
        args_class: its TrainingArguments subclass (DPOConfig, ...); `args` its own fields.
        kwargs: further constructor arguments (reward_funcs, ...).
    Returns the trainer, with checkpoints written atomically and logs in metrics.jsonl.
    """
    # trl tokenizes inside the trainer: there are no lengths to group by yet
    targs = training_arguments(cfg.train, record.folder, bool(validation), args_class=args_class,
                               **{"train_sampling_strategy": "random", **(args or {})})
    method = METHODS[cfg.method_name]
    if method.optimizer:  # LoRA+ gives B its own learning rate
        cls, opt_kwargs = Trainer.get_optimizer_cls_and_kwargs(targs, model)
        kwargs["optimizers"] = (method.optimizer(model, cfg.method, cls,
                                                 {"weight_decay": targs.weight_decay, **opt_kwargs}), None)
    datasets.disable_progress_bars()  # the trainers' tokenizing passes; the run shows its own progress
    atomic = type(f"Tunelab{trainer_class.__name__}", (AtomicCheckpoints, CountsTokens, trainer_class), {})
    trainer = atomic(model=model, args=targs, train_dataset=Dataset.from_list(train),
                     eval_dataset=Dataset.from_list(validation) if validation else None,
                     processing_class=tokenizer, **kwargs)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        # trl stores a quantized model's trainable weights in bfloat16; tunelab keeps them in
        # float32 under the run's autocast, like every other method (and fp32 runs then work)
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    _reference_is_base(trainer, cfg)
    trainer.remove_callback(PrinterCallback)
    tokens = lambda: trainer.real_tokens_seen * trainer.accelerator.num_processes
    trainer.add_callback(RunLogger(record, tokens, console))
    trainer.add_callback(StopOnSignal())
    return trainer


def _reference_is_base(trainer, cfg: RunConfig) -> None:
    """trl keeps a copy of a peft policy's adapter as the reference ("ref") in DPO, KTO and
    GRPO. A freshly initialised adapter changes nothing, so the base with the adapter
    disabled is the same reference without the copy; PiSSA/OLoRA move weights into the
    adapter and keep it."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    init = str(getattr(cfg.method, "init", "default"))
    if "ref" in getattr(model, "peft_config", {}) and not init.startswith(("pissa", "olora")):
        model.delete_adapter("ref")


class CountsTokens:
    """Trainer mixin: count the real (unpadded) tokens of every training forward, whatever
    the trainer calls its inputs (DPO's attention_mask, ORPO's chosen_/rejected_attention_mask,
    GRPO's prompt_mask and completion_mask)."""

    real_tokens_seen = 0

    def compute_loss(self, model, inputs, *args, **kwargs):
        if model.training:
            masks = [v for k, v in inputs.items() if k.endswith("attention_mask") and torch.is_tensor(v)]
            masks = masks or [inputs[k] for k in ("prompt_mask", "completion_mask") if k in inputs]
            self.real_tokens_seen += sum(int(m.sum()) for m in masks)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def tokens_trained(self) -> int:
        """Real tokens trained on all processes together; every process must call it (a reduce)."""
        seen = torch.tensor(self.real_tokens_seen, device=self.accelerator.device)
        return int(self.accelerator.reduce(seen, reduction="sum"))
