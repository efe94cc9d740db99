"""The routes a task can take, the default ladder of each task kind, and each route's job.

A route is one way to a specialist: prompting (zero-shot, few-shot, chain-of-thought with
self-consistency), retrieval, features (a probe on frozen embeddings), or training with any
method in the method table (head, lora, ia3, qlora, full, ...). A job is everything one route
needs to run in its own process: a plain dict, written as job.json beside its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.compare.task import CompareTask, RouteSpec, TaskData
from tunelab.errors import ConfigError


@dataclass(frozen=True)
class Route:
    family: str  # prompting | retrieval | features | training
    kinds: tuple[str, ...]  # the task kinds it serves
    help: str
    settings: dict[str, Any]  # its own defaults; training routes: dotted run-config keys


BOTH = ("labels", "generate")
ROUTES: dict[str, Route] = {
    "zero-shot": Route("prompting", BOTH, "the model as it is: each label's likelihood as the answer, or its "
                       "greedy answer", {"k": 0}),
    "few-shot-random": Route("prompting", BOTH, "k random training examples before each question",
                             {"k": 4, "select": "random"}),
    "few-shot-similar": Route("prompting", BOTH, "the k training examples most similar to the question (MiniLM "
                              "embeddings)", {"k": 4, "select": "similar"}),
    "cot-sc": Route("prompting", ("generate",), "chain-of-thought with similar examples, the majority answer of "
                    "several samples", {"k": 2, "select": "similar", "cot": True, "self_consistency": 5}),
    "rag": Route("retrieval", ("generate",), "retrieve passages from the documents, answer from them",
                 {"top_k": 4}),
    # Probes embed afresh (no embedding cache): a comparison measures what the route costs the first time.
    "probe": Route("features", ("labels",), "logistic regression on the model's mean-pooled hidden states",
                   {"method.name": "probe", "method.cache": False}),
    "probe-minilm": Route("features", ("labels",), "logistic regression on the packaged sentence embedder's "
                          "vectors", {"method.name": "probe", "method.embedder": "all-minilm-l6-v2",
                                      "method.cache": False}),
}
# Training routes are the method table's methods; these are the settings each starts from:
# the learning rates bench/methods_sst2.py found for each method on this model family.
TRAINING = {
    "head": {"train.lr": 5e-3},
    "lora": {"method.r": 8, "train.lr": 1e-3},
    "qlora": {"method.r": 8, "train.lr": 1e-3},
    "ia3": {"train.lr": 5e-3},
    "full": {"train.lr": 3e-5},
}
TRAINING_LR = 2e-4  # other methods
LADDERS = {
    "labels": ["zero-shot", "few-shot-random", "few-shot-similar", "probe", "probe-minilm", "head", "lora", "ia3",
               "full"],
    "generate": ["zero-shot", "few-shot-similar", "cot-sc", "rag", "lora", "qlora", "full"],
}
READS_FINAL_ANSWER = ("numeric", "exact_match")  # metrics chain-of-thought's final answer suits


def route_of(name: str) -> Route:
    """The route called `name`: a prompting/retrieval/feature route, or a trainable method."""
    from tunelab.methods import METHODS

    if name in ROUTES:
        return ROUTES[name]
    if name in METHODS and METHODS[name].kind != "features":
        return Route("training", BOTH, f"train with method {name}", {"method.name": name,
                                                                     **TRAINING.get(name, {"train.lr": TRAINING_LR})})
    known = [*ROUTES, *(m for m in METHODS if METHODS[m].kind != "features")]
    from tunelab.config.options import did_you_mean

    raise ConfigError(f"routes: '{name}' is not a route{did_you_mean(name, known)}; known: {', '.join(known)}")


def ladder(task: CompareTask, data: TaskData) -> list[RouteSpec]:
    """The routes to run: the task's own list, else the default ladder of its kind."""
    if task.routes:
        for i, spec in enumerate(task.routes):
            route = route_of(spec.route)
            if data.kind not in route.kinds:
                raise ConfigError(f"routes[{i}]: route '{spec.route}' serves {' and '.join(route.kinds)} tasks, and "
                                  f"this task is {data.kind}")
        return list(task.routes)
    names = [n for n in LADDERS[data.kind]
             if not (n == "rag" and not task.documents)
             and not (n == "cot-sc" and data.metric not in READS_FINAL_ANSWER)]
    return [RouteSpec(route=n) for n in names]


def job(task: CompareTask, data: TaskData, spec: RouteSpec, paths: dict[str, str], folder: Path) -> dict:
    """Everything the route needs in its own process (JSON-ready)."""
    route = route_of(spec.route)
    settings = {**route.settings, **spec.set}
    out: dict[str, Any] = {
        "name": spec.name, "route": spec.route, "family": route.family, "kind": data.kind, "metric": data.metric,
        "model": task.model, "train": paths["train"], "test": paths["test"], "labels": data.labels,
        "instruction": task.instruction, "batch_size": task.batch_size, "max_new_tokens": task.max_new_tokens,
        "seed": task.seed, "folder": str(folder), "documents": task.documents,
    }
    if route.family in ("training", "features"):
        out["run"] = run_config(task, data, settings, paths, folder / "run")
    else:
        unknown = sorted(set(settings) - {"k", "select", "cot", "self_consistency", "top_k", "temperature"})
        if unknown:
            raise ConfigError(f"routes: {spec.name}: unknown setting(s) {', '.join(unknown)} for a {route.family} "
                              "route; it takes k, select, cot, self_consistency, top_k, temperature")
        out["prompting"] = settings
    return out


def run_config(task: CompareTask, data: TaskData, settings: dict, paths: dict[str, str], folder: Path) -> dict:
    """The tunelab run config (as a dict) of a training or feature route; checked here, so a bad
    setting fails before any route runs."""
    from tunelab.config import RunConfig, load_config
    from tunelab.config.files import deep_merge, parse_overrides

    raw = {
        "model": {"name": task.model},
        "data": {"train": paths["train"], "val_split": 0.05, "max_length": task.max_length,
                 **({"format": "classification"} if data.kind == "labels" else {})},
        "objective": {"name": "classify" if data.kind == "labels" else "sft"},
        "method": {"name": settings.get("method.name", "lora")},
        "train": {"output_dir": str(folder.parent), "run_name": folder.name, "epochs": task.epochs,
                  "warmup_ratio": 0.06, "batch_size": task.batch_size, "seed": task.seed, "logging_steps": 10,
                  "predict": False, "overwrite": True},
    }
    raw = deep_merge(raw, parse_overrides([f"{k}={v}" for k, v in settings.items() if k != "method.name"]))
    cfg: RunConfig = load_config(None, base=raw)
    from tunelab.config import to_dict

    return to_dict(cfg)
