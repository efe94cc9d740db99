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
         num_fewshot: 4, fewshot_select: similar, cot: true, self_consistency: 5,
         decoding: {max_new_tokens: 256}}
    judge: {model: smollm2-135m-instruct}   # or {base_url: http://host/v1, endpoint_model: gpt-x}
    harness: [hellaswag]         # lm-evaluation-harness task names (needs lm-eval and its data)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from tunelab.config import DEFAULT_MODEL, DecodingConfig, FewShotConfig, Options, Precision, deep_merge, opt, \
    parse_overrides, read_yaml, validate
from tunelab.config.options import fail, grouped, literal_values
from tunelab.eval.judge import JudgeConfig

TaskKind = Literal["perplexity", "choice", "generate", "judge", "bias"]
KINDS = tuple(literal_values(TaskKind))
TASK_MAX_NEW_TOKENS = 128  # a task's answers are short; a long one is cut here unless decoding says otherwise


class ModelSpec(Options):
    """One model of the comparison: a base (alias, folder, .gguf) plus an optional run folder."""

    name: str = opt("", "label in the report; default: the run folder's name or the model's")
    model: str | None = opt(None, "alias, folder, .gguf or Hub id; default: the run's own base, else the first "
                            "model's")
    adapter: str | None = opt(None, "a tunelab run folder (adapter, head or full model)")


class TaskConfig(FewShotConfig):
    """One task: a local data file, its kind, how records become questions, and how answers are scored.

    Few-shot, chain-of-thought and self-consistency options are the shared `FewShotConfig`;
    how answers are generated is the shared `decoding` group.
    """

    name: str = opt("", "the task's name in the report; default the file's stem", aka=("task",))
    kind: TaskKind = opt("choice", "what is measured: perplexity, multiple choice (log-likelihood), generation "
                         "metrics, LLM-as-judge, bias probe", aka=("output_type", "type"))
    file: str = opt("", ".jsonl / .json / .csv / .parquet records; .txt (or a folder of them) for perplexity",
                    min_length=1, aka=("path", "dataset_path", "data_files"))
    limit: int | None = opt(None, "only the first N records", ge=1)
    columns: dict[str, str] = opt({}, "rename the file's fields: {their_name: our_name}", cli=False)
    template: str | None = opt(None, "a record's fields into the context / prompt, e.g. \"{question}\\nAnswer:\"",
                               aka=("doc_to_text",))
    seed: int = opt(1234, "seed of few-shot example choice and of sampling", ge=0)
    # perplexity
    text_field: str = opt("text", "perplexity: the records' text field")
    window: int = opt(1024, "perplexity: tokens the model reads at once", ge=2)
    stride: int = opt(512, "perplexity: tokens newly scored per window after the first", ge=1)
    # choice
    choices: list[str] | None = opt(None, "the same endings for every record; else each record's choices_field",
                                    aka=("doc_to_choice",))
    choices_field: str = opt("choices", "choice: the records' list of endings")
    gold_field: str = opt("gold", "choice: an index into the choices, or the choice's text", aka=("doc_to_target",))
    # generate and judge
    prompt_field: str = opt("prompt", "used when no template is given (a string, or a `messages` list)")
    answer_field: str = opt("answer", "gold: a string, a list of acceptable strings, a number or a JSON record")
    metrics: list[str] = opt(["exact_match", "f1"], "generate: exact_match, f1, bleu, chrf, rouge_l, numeric, json, "
                             "label", aka=("metric_list",))
    labels: dict[str, list[str]] = opt({}, "metric label: label -> words that signal it", cli=False)
    chat: bool = opt(True, "wrap the prompt in the model's chat template", aka=("apply_chat_template",))
    system: str | None = opt(None, "a system prompt", aka=("system_instruction",))
    decoding: grouped(DecodingConfig, "how answers are generated (generate and judge tasks)",
                      aka=("generation_kwargs",), max_new_tokens=TASK_MAX_NEW_TOKENS)
    mode: Literal["pairwise", "single"] = opt("pairwise", "judge: each model vs the first, or 1-10 grades")
    reference_field: str | None = opt(None, "judge: a reference answer shown to the judge")
    # bias
    stereotyped_field: str = opt("stereotyped", "bias: the stereotyped sentence")
    other_field: str = opt("other", "bias: its counterpart")
    category_field: str = opt("category", "bias: the pair's category")

    @model_validator(mode="after")
    def _options_of_its_kind(self) -> TaskConfig:
        """Few-shot, chain-of-thought and self-consistency options, where the task kind takes them."""
        if self.num_fewshot and self.kind not in ("choice", "generate"):
            fail("num_fewshot", f"few-shot examples apply to choice and generate tasks, not {self.kind}")
        generate_only = {"fewshot_select": self.fewshot_select != "random", "cot": self.cot,
                         "self_consistency": self.self_consistency != 1, "answer_kind": self.answer_kind is not None}
        for key, given in generate_only.items():
            if given and self.kind != "generate":
                fail(key, f"applies to generate tasks only, and this task is {self.kind}")
        if self.answer_kind == "choice" and not (self.choices or self.labels):
            fail("answer_kind", "choice needs the answers to choose from: give `choices: [a, b]` (or `labels:` for "
                 "the label metric)")
        self.name = self.name or Path(self.file).stem
        return self


class EvalConfig(Options):
    """Everything `tunelab eval` needs; saved with the report so the evaluation can be repeated."""

    models: list[ModelSpec] = opt([], "the models side by side; the first is the baseline", cli=False)
    tasks: list[TaskConfig] = opt([], "the tasks every model is measured on", cli=False)
    run: str | None = opt(None, "a training run folder: base vs tuned on its validation split by default", cli=False)
    judge: JudgeConfig | None = opt(None, "the judge of judge tasks (a local model or an OpenAI-compatible endpoint)",
                                    cli=False)
    harness: list[str] = opt([], "lm-evaluation-harness task names", sep=",")
    harness_limit: int | None = opt(None, "harness: only the first N examples per task", ge=1)
    harness_num_fewshot: int | None = opt(None, "harness: few-shot examples (default the task's own)", ge=0)
    harness_include: str | None = opt(None, "a folder of your own lm-eval task YAMLs (local data files)")
    batch_size: int = opt(16, "sequences scored or generated together", ge=1)
    dtype: Precision = opt("auto", "weights and compute: auto is bf16 where the hardware has it natively")
    output_dir: str = opt("runs", "where the report folder goes")
    run_name: str | None = opt(None, "the report folder's name; default eval-<timestamp>", flags=("--name",))
    overwrite: bool = opt(False, "replace a report of the same name")

    @model_validator(mode="after")
    def _runnable(self) -> EvalConfig:
        """Refuse what cannot run, naming the key; fill the default model."""
        for i, task in enumerate(self.tasks):
            if task.kind == "judge" and self.judge is None:
                fail(f"tasks[{i}]", "a judge task needs a judge; add judge: {model: NAME} or judge: {base_url: URL, "
                     "endpoint_model: NAME} (CLI: --judge / --judge-url)")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            fail("tasks", f"two tasks share a name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                 "give each a distinct `name`")
        if not self.tasks and not self.harness and not self.run:
            raise ValueError("nothing to evaluate: give --tasks, --harness, a run folder, or a config with `tasks:`")
        if not self.models and not self.run:
            self.models = [ModelSpec(name="base", model=DEFAULT_MODEL)]
        return self


def load_eval_config(path: str | Path | None = None, overrides: list[str] | None = None,
                     base: dict[str, Any] | None = None) -> EvalConfig:
    """Read an eval YAML (optional), merge `base` (from CLI flags) and `--set` overrides, check it."""
    raw = read_yaml(path, "models, tasks, judge, harness") if path is not None else {}
    raw = deep_merge(raw, base or {})
    raw = deep_merge(raw, parse_overrides(overrides))
    return validate(EvalConfig, raw, str(path) if path is not None else "eval config")
