"""The shared trainer: transformers' Trainer with a leaner causal-LM loss, token counting
and atomic checkpoints. Objectives build it through `make_trainer`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, Trainer, TrainingArguments

from tunelab.config import TrainConfig
from tunelab.data.tokenize import IGNORE
from tunelab.hardware import compute_dtype
from tunelab.models.families import task_of

CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE = "COMPLETE"  # written last: a checkpoint without it is an interrupted write and is never resumed


def training_arguments(cfg: TrainConfig, run_dir: Path, has_eval: bool, args_class: type = TrainingArguments,
                       **extra) -> TrainingArguments:
    """TrainingArguments from tunelab's TrainConfig (one place, shared by every objective).

    `args_class` is a TrainingArguments subclass (trl's DPOConfig, GRPOConfig, ...) and
    `extra` its own fields.
    """
    bf16 = compute_dtype(cfg.precision) == torch.bfloat16
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    eval_steps = cfg.eval_steps if cfg.eval_steps > 0 else None
    settings = dict(
        output_dir=str(run_dir / "checkpoints"),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval and eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=cfg.save_steps if cfg.save_steps > 0 else 500,
        save_total_limit=cfg.save_total_limit,
        report_to="none",
        disable_tqdm=True,  # tunelab's own progress line shows loss, tokens/s and ETA
        remove_unused_columns=False,
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
    )
    return args_class(**{**settings, **extra})  # `extra` wins: a library trainer's own needs


class AtomicCheckpoints:
    """Trainer mixin: checkpoints are written to a staging folder, renamed, then marked
    COMPLETE, so a crash at any moment leaves the previous checkpoint usable. Mixed into
    tunelab's own trainer and into the library trainers (trl) objectives use."""

    def _save_checkpoint(self, model, trial):
        root = Path(self.args.output_dir)
        final = root / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        staging = root / f".staging-{final.name}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.save_model(str(staging), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(staging))
            self._save_rng_state(str(staging))
        self.accelerator.wait_for_everyone()  # every rank writes its own rng_state_<rank>.pth into staging
        if self.args.should_save:
            self.state.save_to_json(str(staging / "trainer_state.json"))
            fsync_tree(staging)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            (final / COMPLETE).write_text(json.dumps({"step": self.state.global_step}))
            rotate_checkpoints(root, self.args.save_total_limit)
        self.accelerator.wait_for_everyone()


class TunelabTrainer(AtomicCheckpoints, Trainer):
    """Trainer with four changes:

    * causal-LM loss computes the vocabulary projection only at positions that have a
      label (answers), not at every prompt and padding position (other heads, such as
      classification and seq2seq, use the model's own loss);
    * counts real (non-padding) tokens, for tokens/s;
    * a method may build its own optimizer (LoRA+ gives B its own learning rate);
    * checkpoints are written to a staging folder and renamed, then marked COMPLETE.
    """

    def __init__(self, *args, make_optimizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.remove_callback(PrinterCallback)  # RunLogger reports instead
        self.real_tokens_seen = 0
        self.make_optimizer = make_optimizer  # (model, optimizer_cls, kwargs) -> optimizer or None
        self.lm_loss = task_of(self.accelerator.unwrap_model(self.model)) == "causal_lm"
        # The LM loss divides by the token count of the whole accumulated batch; other heads'
        # losses are batch means that the Trainer scales for accumulation itself.
        self.loss_is_scaled_for_ga = True if self.lm_loss else None

    def create_optimizer(self, model=None):
        if self.optimizer is None and self.make_optimizer is not None:
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = self.make_optimizer(self.model, cls, {"weight_decay": self.args.weight_decay, **kwargs})
        return super().create_optimizer(model)

    def tokens_trained(self) -> int:
        """Real tokens trained on all processes together; every process must call it (a reduce)."""
        seen = torch.tensor(self.real_tokens_seen, device=self.accelerator.device)
        return int(self.accelerator.reduce(seen, reduction="sum"))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # evaluation batches pass through here too; they are not trained tokens
            mask = inputs.get("attention_mask")
            self.real_tokens_seen += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        if not self.lm_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        # The (possibly DDP-wrapped) forward returns hidden states; the vocabulary head then
        # runs only at labelled positions, saving most of the largest matmul and its backward.
        # The forward's own head sees one position, given as an index tensor: the int form
        # leaves a non-contiguous (batch, 1, hidden) view whose matmul copies the head weight.
        first = torch.zeros(1, dtype=torch.long, device=inputs["input_ids"].device)
        out = model(**inputs, output_hidden_states=True, logits_to_keep=first, use_cache=False)
        # Prompt methods prepend virtual tokens: keep the last `seq` positions, the real ones.
        hidden = out.hidden_states[-1][:, -labels.shape[1]:-1]  # (batch, seq-1, hidden): position t predicts t+1
        targets = labels[:, 1:]
        keep = targets != IGNORE
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        with self.accelerator.autocast():  # the forward's autocast does not reach this call
            logits = head(hidden[keep]).float()  # (n_labelled, vocab)
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
        if num_items_in_batch is None:
            loss = loss / keep.sum().clamp(min=1)
        else:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        return (loss, out) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if not self.lm_loss:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, dict(inputs))
        return loss.detach(), None, None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run that finished writing, or None."""
    root = run_dir / "checkpoints"
    done = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / COMPLETE).is_file()] if root.is_dir() else []
    return max(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def rotate_checkpoints(root: Path, keep: int | None) -> None:
    """Delete all but the newest `keep` complete checkpoints under `root`."""
    if not keep:
        return
    done = sorted((p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if (p / COMPLETE).is_file()),
                  key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder` to disk (before the rename that publishes it)."""
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
