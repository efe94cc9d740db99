"""What `tunelab compare` reads: the task (data, metric, documents), its constraints, the routes.

    name: sst2
    model: smollm2-135m-instruct
    train: ../shared/data/sst2/train.jsonl        # records: {text, label} or {prompt, answer} or messages
    test: ../shared/data/sst2/dev.jsonl           # or test_split: 0.2 (held out of train)
    label_names: {0: negative, 1: positive}
    metric: accuracy                               # labels: accuracy, macro_f1; generation: exact_match, f1, ...
    constraints: {budget_minutes: 45, memory_gb: 16, latency_ms: 500, artifact_mb: 100}
    routes: [zero-shot, {route: lora, set: {method.r: 16}}]   # default: the ladder for the task's kind

Every problem (no test data, a metric the records cannot feed, an unknown route, a budget no
route fits) is a ConfigError or DataError naming the key or record, raised before any model loads.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from tunelab.config import DEFAULT_MODEL, Options, deep_merge, opt, parse_overrides, read_yaml, validate
from tunelab.config.files import write_text_atomic
from tunelab.config.options import fail
from tunelab.data.readers import Record, read_records
from tunelab.errors import ConfigError, DataError

LABEL_METRICS = ("accuracy", "macro_f1")
GENERATION_METRICS = ("exact_match", "f1", "numeric", "json", "bleu", "chrf", "rouge_l")


class Constraints(Options):
    """What the comparison may spend, and what the recommended route must stay within."""

    budget_minutes: float = opt(30.0, "wall-clock time for every route together", gt=0, aka=("budget", "time_budget"))
    memory_gb: float | None = opt(None, "peak memory one route may use (killed past it); default: what this "
                                  "machine has", gt=0)
    latency_ms: float | None = opt(None, "inference time per answer the recommended route may take", gt=0)
    artifact_mb: float | None = opt(None, "largest artifact the recommended route may ship", ge=0)


class RouteSpec(Options):
    """One route of the ladder with its own settings."""

    route: str = opt("", "the route (tunelab compare --list-routes shows them)", min_length=1, aka=("kind",))
    name: str = opt("", "its name in the report; default the route's")
    set: dict[str, Any] = opt({}, "settings over the route's own, dotted: {method.r: 16, train.lr: 1e-4, k: 8}",
                              cli=False, aka=("settings",))

    @model_validator(mode="after")
    def _named(self) -> RouteSpec:
        self.name = self.name or self.route
        return self


class SearchConfig(Options):
    """A few trials within each training route (Optuna, pruned early), inside the same budget."""

    trials: int = opt(4, "trials per searched route (the route's own settings are the first)", ge=2)
    routes: list[str] = opt([], "routes to search; default every training route", sep=",")
    space: dict[str, list] = opt({}, "dotted key -> [low, high] (log scale for lr) or a list of choices; default "
                                 "learning rate, and rank for LoRA-family routes", cli=False)


class CompareTask(Options):
    """A `tunelab compare` task: one dataset, one metric, constraints, and the routes to run it through."""

    name: str = opt("", "the comparison's name: the report goes to <output_dir>/compare-<name>; default the train "
                    "file's stem")
    model: str = opt(DEFAULT_MODEL, "the base model every route starts from (alias, folder, .gguf)")
    kind: Literal["auto", "labels", "generate"] = opt("auto", "labels (classification) or generate (text answers); "
                                                      "auto: labels when records have a label field")
    train: str = opt("", "training records (.jsonl/.json/.csv/.parquet); few-shot examples come from here too",
                     min_length=1, aka=("train_file", "data"))
    test: str | None = opt(None, "test records every route is scored on", aka=("test_file", "eval_file"))
    test_split: float | None = opt(None, "no test file: this share of train is held out as the test set", gt=0, lt=1)
    limit_train: int | None = opt(None, "use only the first N training records", ge=1)
    limit_test: int | None = opt(None, "score on only the first N test records", ge=1)
    input_field: str | None = opt(None, "the input's field; default text (labels), prompt (generate); `messages` "
                                  "records need none")
    target_field: str | None = opt(None, "the gold's field; default label (labels), answer (generate)")
    label_names: dict[str, str] = opt({}, "label value -> name the model reads, e.g. {0: negative, 1: positive}",
                                      cli=False)
    instruction: str | None = opt(None, "prompting routes: what to do, shown before each input (generate: the "
                                  "system prompt); default a classification instruction naming the labels")
    metric: str | None = opt(None, "labels: accuracy, macro_f1; generate: exact_match, f1, numeric, json (field "
                             "accuracy), bleu, chrf, rouge_l. Default accuracy / exact_match")
    documents: str | None = opt(None, "a folder of documents: adds the retrieval route (generate tasks)")
    constraints: Constraints = opt(Constraints(), "budget, memory, latency and artifact limits")
    routes: list[RouteSpec] = opt([], "the routes to run, each a name or {route, name, set}; default the ladder of "
                                  "the task's kind", cli=False)
    search: SearchConfig | None = opt(None, "trials within training routes (needs optuna: pip install "
                                      "'tunelab[search]')", cli=False)
    max_length: int = opt(256, "tokens per training example", ge=8)
    epochs: float = opt(1.0, "training routes: passes over the training data (cut short by the budget)", gt=0)
    batch_size: int = opt(8, "training routes: examples per step; inference batch too", ge=1)
    max_new_tokens: int = opt(128, "generate: tokens per answer", ge=1)
    seed: int = opt(0, "seed of the split, few-shot choice and training", ge=0)
    output_dir: str = opt("runs", "where the compare-<name> folder goes")

    @field_validator("routes", mode="before")
    @classmethod
    def _bare_names(cls, value):
        return [{"route": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("label_names", mode="before")
    @classmethod
    def _text_keys(cls, value):
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _complete(self) -> CompareTask:
        if self.test is None and self.test_split is None:
            fail("test", "the task has no test data: give test: FILE, or test_split: 0.2 to hold out a share of train")
        if self.test is not None and self.test_split is not None:
            fail("test_split", "give either a test file or a test_split, not both")
        known = LABEL_METRICS + GENERATION_METRICS
        if self.metric is not None and self.metric not in known:
            fail("metric", f"'{self.metric}' is not a metric; choose one of {', '.join(known)}")
        if self.documents is not None and not Path(self.documents).is_dir():
            fail("documents", f"{self.documents} is not a folder of documents")
        names = [r.name for r in self.routes]
        if len(set(names)) != len(names):
            fail("routes", "two routes share a name; give each its own `name`")
        self.name = self.name or Path(self.train).stem
        return self

    @property
    def folder(self) -> Path:
        return Path(self.output_dir) / f"compare-{self.name}"


def load_task(path: str | Path | None = None, overrides: list[str] | None = None,
              base: dict[str, Any] | None = None) -> CompareTask:
    """Read a task YAML, merge flags (`base`) and `--set` overrides over it, check it."""
    raw = read_yaml(path, "train, test, metric, constraints, routes") if path is not None else {}
    raw = deep_merge(deep_merge(raw, base or {}), parse_overrides(overrides))
    return validate(CompareTask, raw, str(path) if path is not None else "compare task")


# ---------------------------------------------------------------- the records, normalised


@dataclass
class Example:
    """One record as every route reads it: the input (text, or a conversation for generate), the gold."""

    input: str
    target: Any  # the label's name (labels) or the gold answer (generate)
    system: str | None = None
    where: str = ""


@dataclass
class TaskData:
    """The task's records, read and checked once; written to the comparison folder for the routes."""

    kind: str  # labels | generate
    metric: str
    train: list[Example]
    test: list[Example]
    labels: list[str] = field(default_factory=list)  # labels: the names, in a fixed order

    def write(self, folder: Path) -> dict[str, str]:
        """train.jsonl / test.jsonl in the formats tunelab's readers know: {text, label} for labels,
        {prompt, completion} (with a system turn when there is one) for generate."""
        paths = {}
        for split, examples in (("train", self.train), ("test", self.test)):
            path = folder / f"{split}.jsonl"
            write_text_atomic(path, "".join(json.dumps(_record(self.kind, e), ensure_ascii=False) + "\n"
                                            for e in examples))
            paths[split] = str(path)
        return paths


def _record(kind: str, e: Example) -> dict:
    if kind == "labels":
        return {"text": e.input, "label": e.target}
    target = e.target if isinstance(e.target, str) else json.dumps(e.target, ensure_ascii=False)
    if e.system:
        return {"messages": [{"role": "system", "content": e.system}, {"role": "user", "content": e.input},
                             {"role": "assistant", "content": target}]}
    return {"prompt": e.input, "completion": target}


def read_task(task: CompareTask) -> TaskData:
    """The task's train and test records, normalised and checked (DataError names the record)."""
    train = _records(task.train, task.limit_train, "train")
    kind = task.kind if task.kind != "auto" else _kind(task, train[0])
    if task.test is not None:
        test = _records(task.test, task.limit_test, "test")
    else:
        order = list(range(len(train)))
        random.Random(task.seed).shuffle(order)
        cut = max(1, round(len(train) * task.test_split))
        test = [train[i] for i in sorted(order[:cut])][:task.limit_test]
        train = [train[i] for i in sorted(order[cut:])]
        if not train:
            raise ConfigError(f"test_split: {task.test_split} of {len(order)} records leaves none to train on")
    metric = task.metric or ("accuracy" if kind == "labels" else "exact_match")
    if kind == "labels" and metric not in LABEL_METRICS:
        raise ConfigError(f"metric: '{metric}' scores generated text, and this is a labels task (records with a "
                          f"'{task.target_field or 'label'}' field); choose {' or '.join(LABEL_METRICS)}, or set "
                          "kind: generate")
    if kind == "generate" and metric in LABEL_METRICS:
        raise ConfigError(f"metric: '{metric}' needs labels, and these records have none (no "
                          f"'{task.target_field or 'label'}' field); choose one of {', '.join(GENERATION_METRICS)}")
    data = TaskData(kind, metric, [_example(task, kind, r) for r in train], [_example(task, kind, r) for r in test])
    if kind == "labels":
        data.labels = sorted({e.target for e in data.train}, key=_label_order(task))
        unseen = sorted({e.target for e in data.test} - set(data.labels))
        if unseen:
            raise DataError(f"{task.test or task.train}: test labels {unseen} never occur in the training records")
        if len(data.labels) < 2:
            raise DataError(f"{task.train}: every training record has the label {data.labels}; a classifier needs two")
    else:
        _check_golds(data)
    return data


def _records(path: str, limit: int | None, key: str) -> list[Record]:
    if not Path(path).is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    out = list(itertools.islice(read_records(path), limit))
    if not out:
        raise DataError(f"{path}: no records")
    return out


def _kind(task: CompareTask, first: Record) -> str:
    return "labels" if (task.target_field or "label") in first.data and "messages" not in first.data else "generate"


def _label_order(task: CompareTask):
    order = list(task.label_names.values())
    return lambda name: (order.index(name) if name in order else len(order), name)


def _example(task: CompareTask, kind: str, record: Record) -> Example:
    data = record.data
    if kind == "generate" and isinstance(data.get("messages"), list) and task.input_field is None:
        turns = data["messages"]
        if len(turns) < 2 or turns[-1].get("role") != "assistant" or turns[-2].get("role") != "user":
            raise DataError(f"{record.where}: a conversation record must end with a user turn and the assistant's "
                            "answer to it")
        system = turns[0]["content"] if turns[0].get("role") == "system" else None
        target = data.get(task.target_field or "gold", turns[-1]["content"])
        return Example(str(turns[-2]["content"]), target, system, record.where)
    input_field = task.input_field or ("text" if kind == "labels" else "prompt")
    target_field = task.target_field or ("label" if kind == "labels" else "answer")
    text, target = data.get(input_field), data.get(target_field)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{record.where}: needs a '{input_field}' text field (set input_field); fields here: "
                        f"{', '.join(sorted(data)) or 'none'}")
    if target is None:
        raise DataError(f"{record.where}: needs its gold in a '{target_field}' field (set target_field); fields "
                        f"here: {', '.join(sorted(data)) or 'none'}")
    if kind == "labels":
        if isinstance(target, (dict, list)):
            raise DataError(f"{record.where}: '{target_field}' must be a label (a number or a word), got {target!r}")
        target = task.label_names.get(str(target), str(target))
    return Example(text, target, task.instruction if kind == "generate" else None, record.where)


def _check_golds(data: TaskData) -> None:
    """Every gold the metric must read (a number, a JSON record) is checked now, naming its record."""
    from tunelab.eval.metrics import score_generations

    if data.metric not in ("numeric", "json"):
        return
    for e in data.train[:1] + data.test:
        gold = e.target
        if data.metric == "json" and isinstance(gold, str):
            try:
                gold = json.loads(gold)
            except json.JSONDecodeError:
                gold = None
        try:
            if data.metric == "json" and not isinstance(gold, dict):
                raise ValueError("not a JSON object")
            score_generations([data.metric], [""], [gold])
        except (DataError, ValueError) as err:
            raise DataError(f"{e.where}: metric {data.metric} cannot read this gold answer ({str(e.target)[:80]!r}): "
                            f"{err}; choose another metric") from None
