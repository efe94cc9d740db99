"""Knowledge distillation: a student learns to match a teacher's next-token distributions.

The student is `model` (trained with any method that trains a causal LM: full, lora,
qlora, ...); the teacher (`objective.teacher`) is any causal LM with the same
vocabulary: a larger model of the same family, or a tunelab run folder (its adapter on
its base). Both read the same sft records (instruction, chat, prompt-completion, text);
the loss runs on the answer tokens only, where sft's labels are set.

Loss per answer token (Hinton, Vinyals and Dean 2015, "Distilling the Knowledge in a
Neural Network", arXiv:1503.02531):

    loss = (1 - ce_weight) * T^2 * KL + ce_weight * CE

KL compares the two distributions softened by temperature T (softmax(logits / T)); the
T^2 keeps its gradients the same size as CE's whatever T is. CE is the student's plain
cross-entropy on the data's own tokens (at T = 1). Forward KL, KL(teacher || student),
makes the student cover everything the teacher finds likely; reverse KL,
KL(student || teacher), makes it pick the teacher's main modes (Gu et al. 2024,
"MiniLLM: Knowledge Distillation of Large Language Models", arXiv:2306.08543).

The held-out KL(teacher || student) at T = 1, per answer token of the validation split,
is measured before and after training (kl_before, kl_after in metrics.jsonl and
summary.json): it says how much closer to the teacher the student came. eval_loss is the
distillation loss itself on that split; training rows log its parts, kl and ce.
"""

from __future__ import annotations

from typing import Literal

from pathlib import Path

import torch
from rich.console import Console

from tunelab.config import ModelConfig, RunConfig
from tunelab.config.options import Options, opt
from tunelab.data import Collator, build_sft, describe
from tunelab.data.tokenize import IGNORE
from tunelab.errors import ConfigError, ModelError
from tunelab.models.families import task_of
from tunelab.models.loading import load_model, load_run
from tunelab.objectives import register
from tunelab.training import (
    RunRecord,
    TunelabTrainer,
    compute_dtype,
    cost_summary,
    load_for_training,
    make_trainer,
    save_result,
    task_for,
    train,
)
from tunelab.training.autocast import store_frozen_in
from tunelab.training.records import is_main_process

class Config(Options):
    """Knowledge distillation options."""

    name: Literal["distill"] = "distill"
    teacher: str = opt(help="model alias, model folder, Hub id, or a tunelab run folder (runs/<name>)", min_length=1,
                       aka=("teacher_model", "teacher_model_name_or_path"))
    temperature: float = opt(2.0, "softens both distributions (1: as the models predict)", gt=0)
    kl: Literal["forward", "reverse"] = opt("forward", "forward: KL(teacher || student); reverse: KL(student || "
                                            "teacher)")
    ce_weight: float = opt(0.0, "share of the loss that is cross-entropy on the data's own answers", ge=0, le=1,
                           aka=("alpha",))


def run(cfg: RunConfig) -> dict:
    """Distil the teacher into the student, save and summarise; returns the summary written to summary.json.

    Raises:
        ConfigError: a bad objective option, no or an unloadable teacher, a teacher whose
            vocabulary differs from the student's, or a student that is not a causal LM.
    """
    main = is_main_process()
    console = Console(stderr=True, quiet=not main)
    opts = cfg.objective
    task = task_for(cfg)
    if task != "causal_lm":
        raise ConfigError(f"objective distill: model {cfg.model.name} is an encoder-decoder; distillation here trains "
                          "decoder-only (causal LM) students")

    # Both models load, and must agree, before the run folder is made: a refused config leaves nothing behind.
    teacher, teacher_tokenizer = load_teacher(opts.teacher, cfg.train.output_dir)
    model, tokenizer = load_for_training(cfg, task)
    check_same_vocabulary(teacher_tokenizer, tokenizer, output_size(teacher), output_size(model),
                          opts.teacher, cfg.model.name)
    record = RunRecord.create(cfg, active=main)
    data = build_sft(cfg.data, tokenizer, seed=cfg.train.seed)
    console.print(describe(data.stats))

    # exp of a distillation loss is no perplexity: evaluation rows leave it out
    trainer = make_trainer(cfg, model, tokenizer, record, data.train, data.validation,
                           Collator(tokenizer.pad_token_id), console, trainer_class=DistillTrainer, perplexity=False,
                           teacher=teacher, options=cfg.objective, precision=cfg.train.precision)
    kl_before = trainer.heldout_kl(data.validation)
    if kl_before is not None and not any("kl_before" in row for row in record.metrics()):  # once, also on resume
        record.log({"step": 0, "kl_before": kl_before})
    result, resume = train(trainer, cfg, record)
    final = trainer.evaluate() if data.validation else {}
    kl_after = trainer.heldout_kl(data.validation)
    if kl_after is not None:
        record.log({"step": trainer.state.global_step, "kl_after": kl_after})
        console.print(f"held-out KL(teacher || student): {kl_before:.4f} -> {kl_after:.4f}")
    saved = save_result(trainer, tokenizer, cfg, record.folder)

    return record.finish({
        "objective": "distill", "method": cfg.method_name, "model": cfg.model.name, "teacher": opts.teacher,
        "task": task, **cost_summary(trainer, result, saved),
        "eval_loss": round(final["eval_loss"], 5) if "eval_loss" in final else None,
        "kl_before": kl_before, "kl_after": kl_after,
        "skipped_records": len(data.bad), "data": data.stats, "resumed_from": resume.name if resume else None,
    })


# ---------------------------------------------------------------- options and the teacher


def load_teacher(name: str, runs_dir: str = "runs"):
    """Load the teacher as a frozen causal LM in evaluation mode; returns (model, tokenizer).

    A folder loads through load_run (a tunelab run folder: its adapter on its base, or its
    full model; a plain model folder as it is); any other name (alias, .gguf, Hub id)
    through load_model. `runs_dir` is where runs are written (train.output_dir).
    Raises ConfigError when no teacher is named, it cannot be loaded, or it is not a causal LM.
    """
    if not name:
        raise ConfigError("objective.teacher: no teacher given; set it to a model (alias, folder, Hub id) or a "
                          "finished tunelab run folder, e.g. --set objective.teacher=runs/sft-lora-example")
    path = Path(name).expanduser()
    if not path.exists() and len(path.parts) > 1 and (path.parent == Path(runs_dir) or path.parent.is_dir()):
        # runs/<name> has the form of a Hub id (org/name): say the folder is missing rather than ask the Hub.
        raise ConfigError(f"objective.teacher: {name}: no such run or model folder; train the teacher first "
                          f"(a run's folder is {runs_dir}/<run_name>), or name a model alias, folder or Hub id")
    try:
        if path.is_dir():
            model, tokenizer = load_run(path)
        else:
            model, tokenizer = load_model(ModelConfig(name=name))
    except ModelError as e:
        raise ConfigError(f"objective.teacher: {e}; a tunelab run folder must hold a finished run "
                          "(train the teacher first)") from None
    if tokenizer is None or task_of(model) != "causal_lm":
        raise ConfigError(f"objective.teacher: {name} is not a causal language model (it classifies or is an "
                          "encoder-decoder); the teacher must predict next tokens like the student")
    if hasattr(model, "merge_and_unload"):  # a frozen LoRA-style adapter folded into the weights: same outputs, faster
        model = model.merge_and_unload()
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def output_size(model) -> int:
    """Rows of the model's output layer: the number of tokens it gives a probability to."""
    return model.get_output_embeddings().weight.shape[0]


def check_same_vocabulary(teacher_tokenizer, student_tokenizer, teacher_size: int, student_size: int,
                          teacher_name: str, student_name: str) -> None:
    """Refuse a teacher whose tokens or output size differ from the student's.

    The loss compares the two distributions id by id, so id i must be the same token for
    both models. Raises ConfigError naming both models and what differs.
    """
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab:
        only_teacher = [t for t in teacher_vocab if t not in student_vocab]
        only_student = [t for t in student_vocab if t not in teacher_vocab]
        moved = [t for t in teacher_vocab if t in student_vocab and teacher_vocab[t] != student_vocab[t]]
        examples = ", ".join(repr(t) for t in (sorted(only_teacher) + sorted(only_student) + sorted(moved))[:3])
        raise ConfigError(
            f"objective.teacher: teacher {teacher_name} and student {student_name} have different vocabularies "
            f"(teacher {len(teacher_vocab)} tokens, student {len(student_vocab)}: {len(only_teacher)} only in the "
            f"teacher, {len(only_student)} only in the student, {len(moved)} with another id; e.g. {examples}); "
            "distillation compares the two distributions token by token, so choose a teacher with the student's "
            "tokenizer (a model of the same family)")
    if teacher_size != student_size:
        raise ConfigError(
            f"objective.teacher: teacher {teacher_name} predicts over {teacher_size} tokens but student "
            f"{student_name} over {student_size} (same tokenizer, output layers of different size); choose a "
            "teacher whose output layer matches the student's")


# ---------------------------------------------------------------- the loss


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
             kl: str = "forward") -> torch.Tensor:
    """KL divergence at each position between the temperature-softened distributions.

    Args:
        student_logits, teacher_logits: (n, vocab).
        kl: "forward" for KL(teacher || student), "reverse" for KL(student || teacher).
    Returns:
        (n,) float32, in nats.
    """
    log_s = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # (n, vocab)
    log_t = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (n, vocab)
    if kl == "forward":
        return (log_t.exp() * (log_t - log_s)).sum(-1)
    return (log_s.exp() * (log_s - log_t)).sum(-1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float = 2.0, kl: str = "forward", ce_weight: float = 0.0,
                      num_items: int | torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(1 - ce_weight) * T^2 * KL + ce_weight * CE, summed over labelled positions and averaged.

    Args:
        student_logits, teacher_logits: (..., vocab), e.g. (batch, seq, vocab) or (n, vocab),
            already aligned with `labels`: position i predicts labels[i] (shift first).
        labels: (...) the token each position should predict; IGNORE (-100) positions do not count.
        temperature: T > 0; both distributions are softmax(logits / T).
        kl: "forward" (KL(teacher || student)) or "reverse" (KL(student || teacher)).
        ce_weight: 0..1, the share of the student's cross-entropy on `labels` (at T = 1).
        num_items: divide the summed loss by this (the labelled-token count of a whole
            accumulated batch) instead of this call's labelled-token count.
    Returns:
        (loss, parts): the scalar loss, and detached per-token means of its parts:
        "kl" (at temperature T, without the T^2) and "ce".
    """
    keep = labels != IGNORE  # (...)
    student = student_logits[keep].float()  # (n, vocab)
    teacher = teacher_logits[keep].float().detach()  # the teacher only gives targets
    kl_per_token = token_kl(student, teacher, temperature, kl)  # (n,)
    ce_per_token = torch.nn.functional.cross_entropy(student, labels[keep], reduction="none")  # (n,)
    total = ((1 - ce_weight) * temperature**2 * kl_per_token + ce_weight * ce_per_token).sum()
    count = keep.sum().clamp(min=1)
    loss = total / (num_items if num_items is not None else count)
    parts = {"kl": kl_per_token.detach().sum() / count, "ce": ce_per_token.detach().sum() / count}
    return loss, parts


def answer_logits(model, inputs: dict, keep: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    """Logits at the labelled positions only: (n_labelled, vocab) float32.

    Like TunelabTrainer's loss, the vocabulary head runs only where `keep` (batch, seq-1)
    is set, not at every prompt and padding position: for a 49k vocabulary that is most of
    the memory of two sets of logits. `head` is the (unwrapped) model's output layer.
    """
    # The forward's own head sees one position, given as an index tensor (see TunelabTrainer.compute_loss).
    first = torch.zeros(1, dtype=torch.long, device=keep.device)
    out = model(**inputs, output_hidden_states=True, logits_to_keep=first, use_cache=False)
    # Prompt methods prepend virtual tokens: keep the last seq positions, the real ones.
    hidden = out.hidden_states[-1][:, -(keep.shape[1] + 1):-1]  # (batch, seq-1, hidden): position t predicts t+1
    return head(hidden[keep]).float()  # (n_labelled, vocab)


# ---------------------------------------------------------------- the trainer


class DistillTrainer(TunelabTrainer):
    """TunelabTrainer whose loss is distillation_loss against a frozen teacher.

    The teacher runs without gradients, in evaluation mode, stored in the compute dtype on
    the trainer's device; it is not part of the trained model, so checkpoints and the
    saved result hold the student only. Training logs add "kl" and "ce" (per-token means
    since the last log) beside "loss".
    """

    def __init__(self, *args, teacher, options: Config, precision: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        # Frozen weights lose nothing in the compute dtype (buffers such as rotary
        # frequencies stay float32, as in the student).
        store_frozen_in(teacher, compute_dtype(precision))
        self.teacher = teacher.to(self.accelerator.device).eval()
        self.options = options
        self.parts_sum: dict[str, torch.Tensor] = {}  # summed per-token means of the loss parts since the last log
        self.parts_n = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # evaluation batches pass through here too; they are not trained tokens
            mask = inputs.get("attention_mask")
            self.real_tokens_seen += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        labels = inputs.pop("labels")
        targets = labels[:, 1:]  # (batch, seq-1): position t predicts token t+1
        keep = targets != IGNORE
        with self.accelerator.autocast():  # the student's forward is autocast already; its head and the teacher are not
            student = answer_logits(model, inputs, keep, self.accelerator.unwrap_model(model).get_output_embeddings())
            with torch.no_grad():
                teacher = answer_logits(self.teacher, inputs, keep, self.teacher.get_output_embeddings())
        loss, parts = distillation_loss(student, teacher, targets[keep], self.options.temperature, self.options.kl,
                                        self.options.ce_weight, num_items=num_items_in_batch)
        if num_items_in_batch is not None and self.args.average_tokens_across_devices \
                and self.accelerator.num_processes > 1:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        if model.training:
            for key, value in parts.items():
                self.parts_sum[key] = self.parts_sum.get(key, 0.0) + value
            self.parts_n += 1
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.parts_n:  # a training log: add the parts' means since the last one
            logs.update({key: round(float(value) / self.parts_n, 5) for key, value in self.parts_sum.items()})
            self.parts_sum, self.parts_n = {}, 0
        super().log(logs, start_time)

    @torch.no_grad()
    def heldout_kl(self, examples: list[dict]) -> float | None:
        """Mean KL(teacher || student) at temperature 1 per answer token of `examples`; None if there are none."""
        if not examples:
            return None
        model = self.model
        was_training = model.training
        model.eval()
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        teacher_head = self.teacher.get_output_embeddings()
        total, count = torch.zeros((), device=self.accelerator.device), 0
        for start in range(0, len(examples), self.args.per_device_eval_batch_size):
            batch = self.data_collator(examples[start:start + self.args.per_device_eval_batch_size])
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            keep = batch.pop("labels")[:, 1:] != IGNORE  # (batch, seq-1)
            with self.accelerator.autocast():
                student = answer_logits(model, batch, keep, head)
                teacher = answer_logits(self.teacher, batch, keep, teacher_head)
            total += token_kl(student, teacher, 1.0, "forward").sum()
            count += int(keep.sum())
        model.train(was_training)
        return round(float(total) / max(count, 1), 5)


register("distill", Config, run)
