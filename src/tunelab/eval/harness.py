"""lm-evaluation-harness bridge: run a harness task through its API on tunelab's model.

The model tunelab loaded (adapter included, in its dtype) is handed to the harness's
`HFLM` as an object, so what is measured is exactly the model the other tasks measured.
The harness needs its own task data (usually from the Hugging Face Hub): offline, give
it a task YAML over local files through `harness_include` (a folder of task YAMLs).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

from tunelab.errors import ConfigError, DataError


def harness_available() -> bool:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return False
    return True


def run_harness(model, tokenizer, tasks: list[str], batch_size: int = 16, limit: int | None = None,
                num_fewshot: int | None = None, include_path: str | None = None) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} from `lm_eval.simple_evaluate` (metric names without the ",none" filter suffix).

    Raises:
        ConfigError: lm-eval is not installed, or a task name is unknown.
        DataError: the harness could not load a task's data.
    """
    if not harness_available():
        raise ConfigError("--harness needs lm-evaluation-harness: pip install 'lm-eval[hf]'")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from tunelab.eval.choice import _is_prompt_learning

    if _is_prompt_learning(model):  # HFLM would read the logits of the virtual tokens as the text's
        raise ConfigError("--harness cannot score prompt, prefix or P-tuning adapters (their virtual tokens shift "
                          "the harness's positions); evaluate them with tunelab's own choice and perplexity tasks")
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    manager = _task_manager(include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        hint = f" or in {include_path}" if include_path else "; add your own with harness_include: FOLDER"
        raise ConfigError(f"harness task(s) {', '.join(unknown)} not found among lm-eval's tasks{hint}")
    was_training = model.training
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, log_samples=False, bootstrap_iters=1000)
    except (ConnectionError, FileNotFoundError, OSError) as e:
        raise DataError(f"harness task(s) {', '.join(tasks)}: the task data could not be loaded ({e}); the "
                        "harness downloads it from the Hugging Face Hub, or define the task over local files "
                        "and pass its folder as harness_include") from None
    finally:
        model.train(was_training)
    results = {}
    for task, metrics in out["results"].items():
        figures = {}
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(float(value)):
                continue
            name, _, filt = key.partition(",")
            if name.endswith("_stderr"):
                name = name[:-len("_stderr")] + (f"/{filt}" if filt and filt != "none" else "") + "_stderr"
            elif filt and filt != "none":  # gsm8k's strict-match and flexible-extract are two figures
                name = f"{name}/{filt}"
            figures[name] = round(float(value), 5)
        results[task] = figures
    return results


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None):
    """lm-eval's task index (it reads every task YAML it ships: built once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path) if include_path else TaskManager()


def _jinja(template: str | None, default_field: str, renamed: dict[str, str]) -> str:
    """A tunelab template ("{text}\\nAnswer:") as the harness's Jinja ("{{text}}\\nAnswer:")."""
    import string

    back = {ours: theirs for theirs, ours in renamed.items()}  # the file's own field names
    if template is None:
        return "{{" + back.get(default_field, default_field) + "}}"
    out = []
    for literal, field, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if field is not None:
            out.append("{{" + back.get(field, field) + "}}")
    return "".join(out)


def choice_task_yaml(task, name: str) -> str:
    """The lm-evaluation-harness task YAML of a tunelab `choice` task over the same local file.

    With it the harness scores exactly the questions tunelab scores, for cross-checks or for
    running the harness's own tooling on the user's data. Few-shot examples are drawn by
    each tool's own sampler, so only zero-shot figures are expected to be equal.
    """
    import yaml

    back = {ours: theirs for theirs, ours in task.columns.items()}
    spec = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(task.file).resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "description": task.description or "",
        "doc_to_text": _jinja(task.template, "context", task.columns),
        "doc_to_choice": list(task.choices) if task.choices is not None else back.get(task.choices_field,
                                                                                         task.choices_field),
        "doc_to_target": back.get(task.gold_field, task.gold_field),
        "target_delimiter": " " if task.target_delimiter is None else task.target_delimiter,
        "num_fewshot": task.num_fewshot,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm", "acc_bytes")],
    }
    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True)
