"""Predict a run's cost before it runs: peak memory with its breakdown, time, parameters, artifact.

    p = tunelab.plan("run.yaml")                  # or plan(cfg, device="a100-80gb")
    print(p.table()); p.fits, p.advice

Memory (bytes), from the model config and the data's own token lengths:
- weights: every parameter once in float32 as loaded; frozen ones of a frozen-base method
  are then kept in the compute dtype (bf16 where native); QLoRA's base linear layers in
  4 bits (0.5 byte, plus one scale per 64 weights);
- trainable parameters: a float32 gradient and AdamW's two float32 moments (12 bytes each);
- activations of the longest micro-batch (batch_size rows padded to the longest sequence):
  per layer and token, what a decoder block saves for its backward pass, in the compute
  dtype (LLaMA-style block: 6h + 2kv + 4f values, plus two float32 norms); only the blocks
  from the first trainable one up need them; gradient checkpointing keeps one h-vector per
  block and one block's worth; logits: float32 logits, their log-softmax and its gradient;
- reference or teacher: DPO-family objectives without an adapter to switch off keep a
  frozen copy; distillation keeps the teacher; PPO keeps reward model and reference;
- the process itself (Python, torch, transformers, trl, tokenizer, data): measured as this
  process's resident memory when the plan is made, since `tunelab train` imports the same.

Time: a training step costs 2N FLOPs per token forward and, backward, 2N more for the
activation gradients through every block above the first trainable one plus 2N_trainable
for the weight gradients (N: parameters in the blocks; attention adds 4 L h s per token
forward). On this machine the achieved FLOP/s come from a short measured probe of the same
model, method and batch shape (`tunelab.compare.probe`, cached); on a named GPU from its
published peak times `devices.EFFICIENCY`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunelab.compare.devices import EFFICIENCY, GPU_OVERHEAD_GB, GPUS, gpu
from tunelab.compare.workload import Workload, workload
from tunelab.config import Options, RunConfig, opt

MB = 1024 * 1024
REFERENCE = ("dpo", "kto")  # objectives whose loss compares with a frozen reference model (ORPO, SimPO: none)


class PlanConfig(Options):
    """Where a plan predicts for, and how it learns this machine's speed."""

    device: Literal[tuple(GPUS)] | None = opt(None, "a GPU to predict for (published peak and memory); unset: this "
                                              "machine")
    probe: bool = opt(True, "measure a few training steps here to learn the achieved speed (cached); off: a "
                      "matrix-multiply benchmark stands in")


@dataclass
class Plan:
    """A run's predicted cost; `table()` prints it, `to_dict()` goes to summary.json beside the outcome."""

    run: str
    device: str
    total_params: int
    trainable_params: int
    memory_mb: dict[str, float]  # the breakdown while training
    loading_mb: float  # while the weights load: the process, the file's pages and a float32 copy
    peak_mb: float  # the larger of the two
    available_mb: float | None  # what the device or machine has
    steps: int
    epochs: float
    tokens_per_epoch: int
    flops_per_step: float
    throughput_tflops: float  # achieved, as assumed or measured
    throughput_source: str
    seconds_per_step: float
    seconds_per_epoch: float
    seconds_total: float
    artifact_bytes: int
    data: dict = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.available_mb is None or self.peak_mb <= self.available_mb

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}

    def table(self) -> str:
        """The prediction as a person reads it: what it costs, where the memory goes, what to change."""
        lines = [f"plan for {self.run} on {self.device}",
                 f"  parameters: {self.trainable_params:,} trainable of {self.total_params:,} "
                 f"({100 * self.trainable_params / max(self.total_params, 1):.2f}%)",
                 f"  data: {self.data.get('examples', 0):,} examples, {self.tokens_per_epoch:,} tokens per epoch, "
                 f"longest {self.data.get('max_length', 0)}",
                 f"  time: {self.steps:,} steps x {self.seconds_per_step:.2f} s = {_duration(self.seconds_total)} "
                 f"({_duration(self.seconds_per_epoch)} per epoch; {self.throughput_tflops * 1000:.1f} GFLOP/s, "
                 f"{self.throughput_source})",
                 f"  peak memory: {self.peak_mb:,.0f} MiB" + (f" of {self.available_mb:,.0f} MiB available"
                                                                if self.available_mb else ""),
                 f"    {'while loading':<22} {self.loading_mb:>10,.0f} MiB",
                 f"    {'while training':<22} {sum(self.memory_mb.values()):>10,.0f} MiB:",
                 *(f"      {k:<20} {v:>10,.0f} MiB" for k, v in self.memory_mb.items() if v >= 0.5),
                 f"  artifact: {self.artifact_bytes / MB:,.1f} MiB"]
        lines += [("  WARNING: " if not self.fits else "  note: ") + a for a in self.advice]
        return "\n".join(lines)


def plan(cfg: RunConfig | str, overrides: list[str] | None = None, device: str | None = None,
         probe: bool = True) -> Plan:
    """Predict the cost of training `cfg` (a RunConfig or a YAML path) on this machine or a named GPU.

    probe: on this machine, measure a few training steps of this model, method and batch
        shape to learn the achieved FLOP/s (cached); without it, a matrix-multiply
        benchmark of this CPU stands in (less accurate).
    """
    from tunelab.config import load_config
    from tunelab.models import load_tokenizer
    from tunelab.models.hub import resolve

    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg, overrides)
    target = gpu(device) if device else None
    if _features(cfg) and cfg.method.embedder:  # the embedder is the encoder: its size, its tokenizer
        from tunelab.models.hub import embedder_folder

        folder = str(embedder_folder(cfg.method.embedder, "method.embedder"))
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": folder})})
    skeleton = Skeleton.of(cfg)
    tokenizer = load_tokenizer(resolve(cfg.model.name, cfg.model.revision))
    work = workload(cfg, tokenizer)
    steps = _steps(cfg, work)
    rows = _micro_batch(cfg, work)
    memory = _memory(cfg, skeleton, rows, target)
    loading = memory["process"] + (0 if target else skeleton.file_bytes) + _loaded_weights(cfg, skeleton, target)
    mean = _padded_mean(cfg, work, rows)
    flops = _flops_per_step(cfg, skeleton, work, rows, mean)
    if target is not None:
        tflops, warmup = target.tflops * EFFICIENCY, 0.0
        source = f"{EFFICIENCY:.0%} of the {target.name}'s {target.tflops:g} TFLOPS"
    else:
        from tunelab.compare.probe import achieved_tflops

        tflops, warmup, source = achieved_tflops(cfg, skeleton, (rows[0], round(mean)), measure=probe)
    per_step = flops / (tflops * 1e12)
    if _features(cfg) and target is None:  # then the classifier is fitted on the training vectors
        from tunelab.compare.probe import fit_seconds

        warmup += fit_seconds(work.examples, skeleton.hidden, cfg.method)
    epoch_steps = steps / max(cfg.train.epochs, 1e-9) if cfg.train.max_steps <= 0 else steps
    available = (target.memory_gb - GPU_OVERHEAD_GB) * 1024 if target else _machine_mb()
    p = Plan(run=cfg.train.run_name or f"{cfg.objective_name}-{cfg.method_name}", device=target.name if target else
             _cpu_name(), total_params=skeleton.total, trainable_params=skeleton.trainable,
             memory_mb={k: v / MB for k, v in memory.items()}, loading_mb=loading / MB,
             peak_mb=max(sum(memory.values()), loading) / MB,
             available_mb=available, steps=steps, epochs=cfg.train.epochs,
             tokens_per_epoch=work.tokens, flops_per_step=flops, throughput_tflops=tflops,
             throughput_source=source, seconds_per_step=per_step, seconds_per_epoch=per_step * epoch_steps,
             seconds_total=per_step * steps + warmup,
             artifact_bytes=skeleton.artifact_bytes,
             data={"examples": work.examples, "sequences": len(work.lengths), "max_length": work.max_length,
                   "mean_length": round(work.tokens / max(len(work.lengths), 1), 1)})
    p.advice = _advice(cfg, p, memory)
    if not p.fits and loading >= sum(memory.values()):
        p.advice = [f"needs {p.peak_mb:,.0f} MiB just to load the model; use method qlora (a 4-bit base) or a machine "
                    "with more memory"]
    return p


# ---------------------------------------------------------------- the model, without its weights


@dataclass
class Skeleton:
    """Parameter counts and shapes of the model a run trains, read from a meta-device copy."""

    total: int
    trainable: int
    frozen_linear: int  # frozen parameters in linear layers (what QLoRA stores in 4 bits)
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int
    vocab: int
    block_params: int  # parameters in the transformer blocks (the FLOP-bearing part)
    first_trainable_layer: int  # blocks below it need no backward pass
    artifact_bytes: int
    file_bytes: int  # the weights on disk, read page by page while loading
    method: str = ""

    @classmethod
    def of(cls, cfg: RunConfig) -> Skeleton:
        """The model `cfg` trains, built on the meta device with its method applied (no weights loaded)."""
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig

        from tunelab.methods import METHODS
        from tunelab.models.families import auto_class, transformer_blocks
        from tunelab.models.hub import resolve

        method = METHODS[cfg.method_name]
        folder = resolve(cfg.model.name, cfg.model.revision)
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=cfg.model.trust_remote_code)
        on_disk = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
        task = "classify" if cfg.objective_name in ("classify", "rm") else "causal_lm"
        if cfg.objective_name in ("classify", "rm"):
            config.num_labels = max(getattr(config, "num_labels", 2), 2)
        with init_empty_weights():
            model = auto_class(task).from_config(config)
        model.tie_weights()  # on the meta device from_config leaves tied embeddings as two tensors
        if method.kind != "features":  # new weights go where their base weights are: the meta device
            options = cfg.method
            if getattr(options, "init", "default") != "default":  # an SVD start needs real weights; same shapes
                options = options.model_copy(update={"init": "default"})
            if getattr(options, "init_text", None):
                options = options.model_copy(update={"init_text": None})
            apply = METHODS["lora"].apply if cfg.method_name == "qlora" else method.apply  # 4-bit: same shapes
            model = apply(model, options)
        params = list(model.named_parameters())
        total = sum(p.numel() for _, p in params)
        trainable = sum(p.numel() for _, p in params if p.requires_grad) if method.kind != "features" else 0
        linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)
                     and not m.weight.requires_grad)
        blocks = transformer_blocks(model)
        first = next((i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())), len(blocks))
        if method.kind != "features" and any(p.requires_grad for n, p in params if "embed" in n or "prompt" in n
                                             or "prefix" in n):
            first = 0  # trained embeddings or virtual tokens: the gradient flows through every block
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", 0)
        heads = getattr(config, "num_attention_heads", 1) or 1
        kv = getattr(config, "num_key_value_heads", heads) or heads
        artifact = 4 * (total if method.saves == "model" else trainable) + 64 * 1024  # safetensors + configs
        if method.kind != "features":  # the tokenizer is saved with every trained result
            artifact += sum(f.stat().st_size for f in Path(folder).glob("*") if f.name.startswith(
                ("tokenizer", "vocab", "merges", "special_tokens", "chat_template")))
        return cls(total=total, trainable=trainable, frozen_linear=linear, layers=len(blocks), hidden=hidden,
                   intermediate=getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden,
                   kv_dim=hidden // heads * kv, vocab=getattr(config, "vocab_size", 0),
                   block_params=sum(p.numel() for b in blocks for p in b.parameters()),
                   first_trainable_layer=first, artifact_bytes=artifact, file_bytes=on_disk, method=cfg.method_name)


# ---------------------------------------------------------------- memory


def _bytes(cfg: RunConfig, gpu_target) -> int:
    """Bytes per value of the compute dtype."""
    if gpu_target is not None:
        return 2
    from tunelab.hardware import compute_dtype

    return compute_dtype(cfg.train.precision).itemsize


def _memory(cfg: RunConfig, s: Skeleton, rows: tuple[int, int], target) -> dict[str, float]:
    from tunelab.methods import METHODS

    method = METHODS[cfg.method_name]
    b = _bytes(cfg, target)
    batch, length = rows
    tokens = batch * length
    frozen = s.total - s.trainable
    if cfg.method_name == "qlora":
        weights = 0.5 * s.frozen_linear * (1 + 4 / 64) + (frozen - s.frozen_linear) * b
    elif method.freezes_base and b < 4:
        weights = frozen * b
    else:
        weights = frozen * 4
    out = {"weights (frozen)": weights, "weights (trained)": 4.0 * s.trainable,
           "gradients": 4.0 * s.trainable, "optimizer states": 8.0 * s.trainable}
    if method.kind == "features":  # a probe: the encoder runs forward only, then a scikit-learn fit
        out.update({"weights (frozen)": float(b * s.total), "gradients": 0.0, "optimizer states": 0.0})
    per_token_layer = b * (6 * s.hidden + 2 * s.kv_dim + 4 * s.intermediate) + 8 * s.hidden
    trained_layers = max(s.layers - s.first_trainable_layer, 0)
    if method.kind == "features":
        act = tokens * per_token_layer  # one block at a time, nothing kept
    elif cfg.train.gradient_checkpointing:
        act = tokens * (b * s.hidden * trained_layers + per_token_layer)
    else:
        act = tokens * per_token_layer * trained_layers
    out["activations"] = act
    logits_rows = batch if cfg.objective_name in ("classify", "rm") else tokens
    width = 2 if cfg.objective_name in ("classify", "rm") else s.vocab
    copies = 3 + (2 if cfg.objective_name in REFERENCE else 0)  # + the reference's logits and log-probabilities
    out["logits"] = 0.0 if method.kind == "features" else copies * 4.0 * logits_rows * width
    extra = 0.0
    if cfg.objective_name in REFERENCE and method.saves == "model":
        extra += s.total * b  # a frozen reference copy (adapters switch off instead)
    if cfg.objective_name == "distill":
        extra += s.total * b  # the teacher: the same family, at least the student's size
    if cfg.objective_name == "ppo":
        extra += 2 * s.total * b  # reference and reward model
    out["reference / teacher"] = extra
    out["process"] = float(GPU_OVERHEAD_GB * 1024 * MB) if target else float(_rss_bytes())
    return out


def _loaded_weights(cfg: RunConfig, s: Skeleton, target) -> float:
    """The weights as loaded, before a frozen base moves to the compute dtype: float32 for training,
    4 bits for QLoRA's linear layers, the compute dtype for a probe's encoder."""
    if _features(cfg):
        return float(_bytes(cfg, target) * s.total)
    if cfg.method_name == "qlora":
        return 0.5 * s.frozen_linear * (1 + 4 / 64) + 4.0 * (s.total - s.frozen_linear)
    return 4.0 * s.total


def _rss_bytes() -> int:
    """This process's resident memory now: Python, torch, transformers, trl and the tokenized data."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _machine_mb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / MB
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_name() -> str:
    from tunelab.compare.probe import _threads, cpu_model

    return f"this machine ({cpu_model()}, {_threads()} threads)"


# ---------------------------------------------------------------- steps and FLOPs


def _features(cfg: RunConfig) -> bool:
    from tunelab.methods import METHODS

    return METHODS[cfg.method_name].kind == "features"


def _micro_batch(cfg: RunConfig, work: Workload) -> tuple[int, int]:
    """(rows, padded length) of the largest micro-batch: batch_size sequences padded to the longest."""
    if _features(cfg):  # the probe embeds method.batch_size texts at a time, cut at method.max_length
        return cfg.method.batch_size, min(work.max_length, cfg.method.max_length)
    rows = cfg.train.batch_size * (work.per_example if work.per_example > 1 and cfg.objective_name != "kto" else 1)
    return rows, cfg.data.max_length if cfg.data.packing else work.max_length


def _steps(cfg: RunConfig, work: Workload) -> int:
    if _features(cfg):  # one pass of the encoder over train and validation texts, then the fit
        return max(1, math.ceil(work.stats.get("texts", work.examples) / cfg.method.batch_size))
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    per_step = cfg.train.batch_size * cfg.train.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    return max(1, math.ceil(math.ceil(work.examples / per_step) * cfg.train.epochs))


def flops_per_token(s: Skeleton, length: int, trained: bool = True, head: bool = True) -> float:
    """Training FLOPs per token: forward 2N (+ attention, + the output head), backward through the trained part."""
    forward = 2 * s.block_params + 4 * s.layers * s.hidden * length + (2 * s.hidden * s.vocab if head else 0)
    if not trained:
        return forward
    share = max(s.layers - s.first_trainable_layer, 0) / max(s.layers, 1)
    backward = share * (2 * s.block_params + 4 * s.layers * s.hidden * length) + 2 * s.hidden * s.vocab \
        + 2 * s.trainable
    return forward + backward


def padded_length(lengths: list[int], rows: int, grouped: bool, seed: int = 0) -> float:
    """The mean length rows are padded to: each batch pads to its longest sequence. Grouped as
    transformers' LengthGroupedSampler groups (sorted within megabatches of 50 batches), else at random."""
    import random

    if not lengths:
        return 0.0
    order = list(lengths)
    random.Random(seed).shuffle(order)
    if grouped:
        mega = 50 * rows
        order = [x for i in range(0, len(order), mega) for x in sorted(order[i:i + mega], reverse=True)]
    batches = [order[i:i + rows] for i in range(0, len(order), rows)]
    return sum(max(b) * len(b) for b in batches) / len(order)


def _padded_mean(cfg: RunConfig, work: Workload, rows: tuple[int, int]) -> float:
    """The mean length a step's rows are padded to (pairs are never grouped by length)."""
    if cfg.data.packing:
        return float(cfg.data.max_length)
    if work.parts:  # trl pads prompts and completions apart: a row is the longest prompt + the longest completion
        return _pair_padded_length(work.parts, rows[0], cfg.data.max_length, cfg.train.seed)
    grouped = (cfg.train.group_by_length and work.per_example == 1) or _features(cfg)
    return padded_length(work.lengths, rows[0], grouped, cfg.train.seed)


def _pair_padded_length(parts: list[tuple[int, int]], rows: int, limit: int, seed: int) -> float:
    import random

    order = list(parts)
    random.Random(seed).shuffle(order)
    batches = [order[i:i + rows] for i in range(0, len(order), rows)]
    padded = [min(limit, max(p for p, _ in b) + max(c for _, c in b)) * len(b) for b in batches]
    return sum(padded) / max(len(order), 1)


def _flops_per_step(cfg: RunConfig, s: Skeleton, work: Workload, rows: tuple[int, int], mean: float) -> float:
    """FLOPs of one optimizer step of `rows[0]` rows padded to `mean` tokens."""
    features = _features(cfg)
    tokens = rows[0] * mean * (1 if features else cfg.train.grad_accum)
    flops = tokens * flops_per_token(s, int(mean), trained=not features, head=not features)
    if cfg.objective_name in REFERENCE:
        flops += tokens * flops_per_token(s, int(mean), trained=False)  # the reference's forward pass
    if cfg.objective_name in ("grpo", "ppo"):  # sampling: one forward per generated token, on the prompt's cache
        flops += rows[0] * cfg.train.grad_accum * work.generated / max(work.per_example, 1) \
            * flops_per_token(s, int(mean), trained=False)
    return flops


def _advice(cfg: RunConfig, p: Plan, memory: dict[str, float]) -> list[str]:
    """What to change when the run will not fit, biggest lever first."""
    if p.fits:
        return []
    over = p.peak_mb - (p.available_mb or 0)
    out = [f"needs {p.peak_mb:,.0f} MiB, {over:,.0f} more than the {p.available_mb:,.0f} MiB available"]
    act = (memory["activations"] + memory["logits"]) / MB
    if act > over and cfg.train.batch_size > 1:
        smaller = max(1, int(cfg.train.batch_size * (1 - over / act)))
        out.append(f"lower train.batch_size to {smaller} and raise train.grad_accum to keep the effective batch")
    if not cfg.train.gradient_checkpointing and memory["activations"] / MB > over / 2:
        out.append("set train.gradient_checkpointing: true (activations kept per block, about 30% slower)")
    if cfg.method_name in ("full", "freeze") and p.trainable_params > 0.1 * p.total_params:
        out.append("use method lora (or qlora): gradients and optimizer states only for the adapters")
    if cfg.method_name == "lora":
        out.append("use method qlora: the frozen base in 4 bits")
    if p.data.get("max_length", 0) > 256:
        out.append(f"shorten data.max_length (now {cfg.data.max_length}; the longest example has "
                   f"{p.data['max_length']} tokens)")
    return out


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
