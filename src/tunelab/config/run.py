"""The run config: what `tunelab train` reads. Sections model, data, train, method, objective.

`method` and `objective` are a name (`method: lora`) or a mapping with a `name` key and
that method's / objective's own options (`method: {name: lora, r: 8}`); each registered
Config class is the schema of its options, and an option of another method is refused.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from tunelab.config.files import deep_merge, parse_overrides, read_yaml
from tunelab.config.groups import Precision
from tunelab.config.options import Options, fail, opt, registered_union, validate

FORMATS = Literal["auto", "instruction", "chat", "prompt_completion", "text", "preference", "unpaired",
                  "classification"]
DEFAULT_MODEL = "smollm2-135m-instruct"  # the model every command uses when none is named

SCHEDULERS = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                     "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "warmup_stable_decay"]


def _keys_as_text(value: Any) -> Any:
    """YAML reads `{0: negative}` with an int key; label values and field names are text."""
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class ModelConfig(Options):
    """Which model to start from and how to load it."""

    name: str = opt(DEFAULT_MODEL, "alias, local Hugging Face folder, .gguf file or Hub id", flag="--model",
                    aka=("model_name_or_path", "pretrained_model_name_or_path", "model_id"))
    revision: str | None = opt(None, "Hub revision (branch, tag or commit) of a Hub id")
    trust_remote_code: bool = opt(False, "run code shipped with the model: only for models you trust")
    allow_pickle: bool = opt(False, "load .bin/.pt checkpoints, which can run code when loaded")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = opt(
        None, "attention kernel; unset: transformers' choice")


class DataConfig(Options):
    """Where the records come from and how they become token sequences."""

    train: str = opt("", "JSONL / JSON / CSV / Parquet file, .txt files or a `datasets` folder",
                     aka=("path", "dataset", "train_file", "data_files"))
    validation: str | None = opt(None, "a separate validation file; else val_split of train is held out",
                                 aka=("validation_file", "eval_file"))
    val_split: float = opt(0.1, "share of train held out for validation when no validation file is given",
                           ge=0.0, lt=1.0)
    format: FORMATS = opt("auto", "record format; auto detects it from the fields")
    max_length: int = opt(1024, "tokens per example; longer ones are truncated and counted", ge=8,
                          aka=("max_seq_length", "cutoff_len", "sequence_len", "max_seq_len"))
    packing: bool = opt(False, "several examples per row, attention kept apart by position ids")
    train_on: Literal["assistant", "last", "all"] = opt(
        "assistant", "tokens with loss: every answer, the last answer only, or all tokens",
        aka=("train_on_inputs", "assistant_only_loss", "completion_only_loss"))
    system_prompt: str | None = opt(None, "added to records that have no system message")
    skip_bad: bool = opt(False, "skip and count bad records instead of stopping", flags=("--skip-bad",))
    max_record_bytes: int = opt(10_000_000, "longer lines are bad records (guards against runaway files)", ge=1)
    limit: int | None = opt(None, "use only the first N records (quick experiments)", ge=1,
                            aka=("max_samples", "max_train_samples"))
    columns: dict[str, str] = opt({}, "rename fields, e.g. {question: prompt, answer: completion}", cli=False)
    label_names: dict[str, str] = opt({}, "classification: label value -> name, e.g. {0: negative, 1: positive}",
                                      cli=False)
    prompt_template: str = opt("{text}", "generative classification (sft): the question built from a record's text")

    _text_keys = field_validator("columns", "label_names", mode="before")(_keys_as_text)


class TrainConfig(Options):
    """Optimisation, precision, logging and checkpointing."""

    output_dir: str = opt("runs", "the folder run folders go in")
    run_name: str | None = opt(None, "the run folder's name; default <objective>-<method>-<timestamp>")
    epochs: float = opt(1.0, "passes over the training data", gt=0, aka=("num_train_epochs", "num_epochs"))
    max_steps: int = opt(-1, "optimizer steps; above 0 it overrides epochs", ge=-1)
    batch_size: int = opt(8, "examples per step and process", ge=1,
                          aka=("per_device_train_batch_size", "micro_batch_size", "train_batch_size"))
    grad_accum: int = opt(1, "steps whose gradients add up before one update", ge=1,
                          aka=("gradient_accumulation_steps", "accumulate_grad_batches"))
    lr: float = opt(2e-4, "peak learning rate", gt=0, aka=("learning_rate",))
    lr_scheduler: SCHEDULERS = opt("cosine", "learning-rate schedule (transformers' names)",
                                   aka=("lr_scheduler_type", "scheduler"))
    warmup_ratio: float = opt(0.03, "share of the steps spent warming the learning rate up", ge=0.0, lt=1.0)
    weight_decay: float = opt(0.0, "AdamW weight decay", ge=0.0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm", gt=0)
    seed: int = opt(42, "seed of data order, initialisation and sampling", ge=0)
    precision: Precision = opt("auto", "weights and compute: auto picks bf16 where the hardware computes it "
                               "natively, else fp32", aka=("bf16", "fp16", "dtype", "torch_dtype", "mixed_precision"))
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass: less memory, ~30% slower")
    group_by_length: bool = opt(True, "batches of similar length waste less compute on padding")
    logging_steps: int = opt(5, "steps between logged losses", ge=1)
    eval_steps: int = opt(0, "steps between evaluations; 0 evaluates at the end only", ge=0)
    save_steps: int = opt(0, "steps between checkpoints; 0 checkpoints only at the end", ge=0)
    save_total_limit: int = opt(2, "checkpoints kept", ge=1)
    resume: bool = opt(False, "continue from the latest complete checkpoint of this run", flags=("--resume",),
                       aka=("resume_from_checkpoint",))
    overwrite: bool = opt(False, "allow reusing a run folder that already holds a finished run",
                          aka=("overwrite_output_dir",))
    predict: bool = opt(True, "predict peak memory and time first (tunelab plan, from a cached probe when there is "
                        "one) and record the prediction in summary.json beside the outcome")


class RunConfig(Options):
    """Everything one run needs; saved resolved as runs/<name>/config.yaml.

    `method` and `objective` hold the registered Config of the method and objective named;
    build a RunConfig through `load_config` / `resolve`, which know every registered one.
    """

    model: ModelConfig = opt(factory=ModelConfig, help="the model to start from")
    data: DataConfig = opt(factory=DataConfig, help="the training data")
    train: TrainConfig = opt(factory=TrainConfig, help="optimisation, precision, logging, checkpoints")
    objective: Options | str = opt("sft", "what training optimises: a name, or {name: NAME, ...its options}")
    method: Options | str = opt("lora", "which parameters change: a name, or {name: NAME, ...its options}")

    @property
    def method_name(self) -> str:
        return self.method if isinstance(self.method, str) else self.method.name

    @property
    def objective_name(self) -> str:
        return self.objective if isinstance(self.objective, str) else self.objective.name

    @model_validator(mode="after")
    def _fits_together(self) -> RunConfig:
        """Rules across sections, checked before anything loads."""
        from tunelab.methods import METHODS
        from tunelab.objectives import OBJECTIVES

        method = METHODS.get(self.method_name)
        if self.data.packing and method is not None and not method.packing:
            fail("data.packing", f"method {self.method_name} prepends virtual tokens, which packed rows cannot "
                 "keep apart; set data.packing: false or choose another method")
        objective = OBJECTIVES.get(self.objective_name)
        if objective is not None and objective.check is not None and not isinstance(self.objective, str):
            objective.check(self)
        return self


@cache
def run_schema() -> type[RunConfig]:
    """RunConfig whose `method` and `objective` are the union of every registered Config."""
    from pydantic import create_model

    from tunelab.methods import METHODS
    from tunelab.objectives import OBJECTIVES

    def union(table: dict, default: str) -> tuple:
        classes = [entry.config for entry in table.values()]
        return registered_union(classes, default), opt(factory=lambda: table[default].config(),
                                                       help=RunConfig.model_fields[
                                                           "method" if table is METHODS else "objective"].description)

    return create_model("RunConfig", __base__=RunConfig, __doc__=RunConfig.__doc__,
                        method=union(METHODS, "lora"), objective=union(OBJECTIVES, "sft"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None,
                flags: dict | None = None) -> RunConfig:
    """`base`, then a YAML config (optional), then command-line `flags`, then `--set` overrides, each over
    the one before; every key and value checked."""
    raw: dict = dict(base or {})
    if path is not None:
        raw = deep_merge(raw, read_yaml(path))
    raw = deep_merge(raw, flags or {})
    raw = deep_merge(raw, parse_overrides(overrides))
    return resolve(raw, str(path) if path is not None else "config")


def resolve(raw: dict | RunConfig, where: str = "config") -> RunConfig:
    """A plain mapping checked into a RunConfig; ConfigError starting with `where` (usually the file)."""
    if isinstance(raw, RunConfig):
        raw = raw.model_dump()
    return validate(run_schema(), raw, where)
