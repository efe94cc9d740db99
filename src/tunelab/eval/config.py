"""What `tunelab eval` runs: the models side by side, the tasks, the judge, harness tasks.

An eval config is YAML with these top-level keys (all optional but `tasks` or `harness`):

    models:                      # the first is the baseline every other model is compared with
      - {name: base, model: smollm2-135m-instruct}
      - {name: tuned, adapter: runs/sft-lora}
    tasks:
      - {name: sst2, kind: choice, file: sst2.jsonl, template: "{text}\\nSentiment:",
         choices: [negative, positive], gold_field: label}
      - {name: wiki, kind: perplexity, file: wiki.txt, window: 1024, stride: 512}
      - {name: gsm, kind: generate, file: gsm.jsonl, template: "{question}", metrics: [numeric],
         num_fewshot: 4, fewshot_select: similar, cot: true, self_consistency: 5}
    judge: {model: smollm2-135m-instruct}   # or {base_url: http://host/v1, endpoint_model: gpt-x}
    harness: [hellaswag]         # lm-evaluation-harness task names (needs lm-eval and its data)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import DEFAULT_MODEL, deep_merge, from_dict, parse_overrides, read_yaml
from tunelab.errors import ConfigError
from tunelab.eval.judge import JudgeConfig

KINDS = ("perplexity", "choice", "generate", "judge", "bias")


@dataclass
class ModelSpec:
    """One model of the comparison: a base (alias, folder, .gguf) plus an optional run folder."""

    name: str = ""  # label in the report; default: the run folder's name or the model's
    model: str | None = None  # default: the run's own base, else the first model's
    adapter: str | None = None  # a tunelab run folder (adapter, head or full model)


@dataclass
class TaskConfig:
    """One task: a local data file, its kind, and how records become questions."""

    name: str = ""
    kind: str = "choice"  # perplexity | choice | generate | judge | bias
    file: str = ""  # .jsonl / .json / .csv / .parquet records; .txt (or a folder of them) for perplexity
    limit: int | None = None  # only the first N records
    columns: dict[str, str] = field(default_factory=dict)  # rename the file's fields: {their_name: our_name}
    template: str | None = None  # a record's fields into the context / prompt, e.g. "{question}\nAnswer:"
    # perplexity
    text_field: str = "text"
    window: int = 1024  # tokens the model reads at once
    stride: int = 512  # tokens newly scored per window after the first
    # choice
    choices: list[str] | None = None  # the same endings for every record; else each record's `choices_field`
    choices_field: str = "choices"
    gold_field: str = "gold"  # an index into the choices, or the choice's text
    target_delimiter: str = " "  # between context and ending, as in lm-evaluation-harness
    num_fewshot: int = 0  # choice and generate tasks
    fewshot_file: str | None = None  # default: the task's own file, never the question itself
    fewshot_delimiter: str = "\n\n"
    description: str = ""  # text before the few-shot examples
    seed: int = 1234
    fewshot_select: str = "random"  # generate: random | similar (the examples most like the question)
    fewshot_embedder: str = "all-minilm-l6-v2"  # generate, fewshot_select similar: the sentence-transformers model
    # generate: the prompting route (see tunelab.prompting)
    cot: bool = False  # ask for step-by-step reasoning; score the final answer read from it
    self_consistency: int = 1  # sample this many answers (at `temperature`, 0.7 when it is 0) and score the majority
    answer_kind: str | None = None  # text | number | choice (from `choices`); default: number for metric numeric
    # generate and judge
    prompt_field: str = "prompt"  # used when no template is given (a string, or a `messages` list)
    answer_field: str = "answer"  # gold: a string, a list of acceptable strings, a number or a JSON record
    metrics: list[str] = field(default_factory=lambda: ["exact_match", "f1"])
    labels: dict[str, list[str]] = field(default_factory=dict)  # metric `label`: label -> words that signal it
    chat: bool = True  # wrap the prompt in the model's chat template
    system: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    mode: str = "pairwise"  # judge: pairwise (each model vs the first) | single (1-10 grades)
    reference_field: str | None = None  # judge: a reference answer shown to the judge
    # bias
    stereotyped_field: str = "stereotyped"
    other_field: str = "other"
    category_field: str = "category"


@dataclass
class EvalConfig:
    """Everything `tunelab eval` needs; saved with the report so the evaluation can be repeated."""

    models: list[ModelSpec] = field(default_factory=list)
    tasks: list[TaskConfig] = field(default_factory=list)
    run: str | None = None  # a training run folder: base vs tuned on its validation split by default
    judge: JudgeConfig | None = None
    harness: list[str] = field(default_factory=list)
    harness_limit: int | None = None
    harness_num_fewshot: int | None = None
    harness_include: str | None = None  # a folder of the user's own lm-eval task YAMLs (local data files)
    batch_size: int = 16
    dtype: str = "auto"  # auto (bf16 where the hardware has it) | bf16 | fp32
    output_dir: str = "runs"
    run_name: str | None = None  # default: eval-<timestamp>
    overwrite: bool = False


def check(cfg: EvalConfig) -> EvalConfig:
    """Fill defaults and refuse what cannot run, naming the key."""
    for i, task in enumerate(cfg.tasks):
        key = f"tasks[{i}]"
        if task.kind not in KINDS:
            raise ConfigError(f"{key}.kind: '{task.kind}' is not a task kind; choose one of: {', '.join(KINDS)}")
        if not task.file:
            raise ConfigError(f"{key}.file: no data file given for task '{task.name or task.kind}'")
        task.name = task.name or Path(task.file).stem
        if task.kind == "perplexity" and (task.window < 2 or task.stride < 1):
            raise ConfigError(f"{key}: perplexity needs window >= 2 and stride >= 1 (got {task.window}, {task.stride})")
        if task.limit is not None and task.limit < 1:
            raise ConfigError(f"{key}.limit: must be at least 1 (leave it out to use every record)")
        _check_prompting(task, key)
        if task.kind == "judge" and task.mode not in ("pairwise", "single"):
            raise ConfigError(f"{key}.mode: '{task.mode}' is not known; choose pairwise or single")
        if task.kind == "judge" and cfg.judge is None:
            raise ConfigError(f"{key}: a judge task needs a judge; add judge: {{model: NAME}} or "
                              "judge: {base_url: URL, endpoint_model: NAME} (CLI: --judge / --judge-url)")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size: must be at least 1, got {cfg.batch_size}")
    if cfg.judge is not None and cfg.judge.base_url and not (cfg.judge.endpoint_model or cfg.judge.model):
        raise ConfigError("judge.endpoint_model: a judge endpoint needs the model name to ask it for "
                          "(CLI: --judge-model NAME)")
    names = [t.name for t in cfg.tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"tasks: two tasks share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))})"
                          "; give each a distinct `name`")
    if not cfg.tasks and not cfg.harness and not cfg.run:
        raise ConfigError("nothing to evaluate: give --tasks, --harness, a run folder, or a config with `tasks:`")
    if not cfg.models and not cfg.run:
        cfg.models = [ModelSpec(name="base", model=DEFAULT_MODEL)]
    return cfg


def _check_prompting(task: TaskConfig, key: str) -> None:
    """Few-shot, chain-of-thought and self-consistency options, where the task kind takes them."""
    if task.num_fewshot < 0:
        raise ConfigError(f"{key}.num_fewshot: must be 0 (zero-shot) or more, got {task.num_fewshot}")
    if task.num_fewshot and task.kind not in ("choice", "generate"):
        raise ConfigError(f"{key}.num_fewshot: few-shot examples apply to choice and generate tasks, not {task.kind}")
    if task.fewshot_select not in ("random", "similar"):
        raise ConfigError(f"{key}.fewshot_select: '{task.fewshot_select}' is not known; choose random or similar")
    generate_only = [("fewshot_select", task.fewshot_select != "random"), ("cot", task.cot),
                     ("self_consistency", task.self_consistency != 1), ("answer_kind", task.answer_kind is not None)]
    for name, given in generate_only:
        if given and task.kind != "generate":
            raise ConfigError(f"{key}.{name}: applies to generate tasks only, and this task is {task.kind}")
    if task.self_consistency < 1:
        raise ConfigError(f"{key}.self_consistency: the number of sampled answers must be at least 1 (1 is off), "
                          f"got {task.self_consistency}")
    if task.answer_kind not in (None, "text", "number", "choice"):
        raise ConfigError(f"{key}.answer_kind: '{task.answer_kind}' is not known; choose text, number or choice")
    if task.answer_kind == "choice" and not (task.choices or task.labels):
        raise ConfigError(f"{key}.answer_kind: choice needs the answers to choose from: give `choices: [a, b]` "
                          "(or `labels:` for the label metric)")


def load_eval_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     base: dict[str, Any] | None = None) -> EvalConfig:
    """Read an eval YAML (optional), merge `base` (from CLI flags) and `--set` overrides, check it."""
    raw = read_yaml(path, "models, tasks, judge, harness") if path is not None else {}
    where = str(path) if path is not None else "eval config"
    raw = deep_merge(raw, base or {})
    raw = deep_merge(raw, parse_overrides(overrides or []))
    try:
        return check(from_dict(EvalConfig, raw))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
