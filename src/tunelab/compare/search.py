"""A few trials within one training route (Optuna's TPE sampler, median pruning), inside its share
of the budget.

Trials are chosen on the validation records held out of train, never on the test set: the
route's reported result is the trial with the best validation figure (accuracy for labels,
the lowest validation loss for generation), and the report shows every trial and the spread
of their test metric. A trial whose training loss trails the median of the earlier trials at
the same step is stopped early (pruned), which leaves its time to the next.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from tunelab.compare.launch import launch
from tunelab.compare.task import SearchConfig
from tunelab.config.files import deep_merge, parse_overrides

LORA_FAMILY = ("lora", "qlora")


def space(job: dict, cfg: SearchConfig) -> dict[str, list]:
    """The searched settings: the task's own, else the learning rate (a quarter to four times the
    route's) and, for LoRA-family routes, the rank."""
    if cfg.space:
        return cfg.space
    lr = job["run"]["train"]["lr"]
    out: dict[str, list] = {"train.lr": [lr / 4, lr * 4]}
    if job["run"]["method"]["name"] in LORA_FAMILY:
        out["method.r"] = [4, 8, 16]
    return out


def search_route(job: dict, cfg: SearchConfig, seconds: float, memory_mb: float | None,
                 kind: str) -> tuple[dict, dict]:
    """(the best trial's outcome, {trials, best, spread}) for a training route's job."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(job["folder"])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=job["seed"]),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2))
    ranges = space(job, cfg)
    study.enqueue_trial({k: _current(job, k) for k in ranges})  # the route's own settings come first
    trials, outcomes = [], {}
    for i in range(cfg.trials):
        trial = study.ask()
        settings = {k: _suggest(trial, k, v) for k, v in ranges.items()}
        tjob = copy.deepcopy(job)
        tjob["folder"] = str(folder / f"trial-{i}")
        tjob["run"] = deep_merge(tjob["run"], parse_overrides([f"{k}={v}" for k, v in settings.items()]))
        tjob["run"]["train"]["output_dir"] = tjob["folder"]
        tfolder = Path(tjob["folder"])
        tfolder.mkdir(parents=True, exist_ok=True)
        (tfolder / "job.json").write_text(json.dumps(tjob, indent=2), encoding="utf-8")
        outcome = launch(tfolder, seconds / cfg.trials, memory_mb, watch=_pruning(trial, tfolder))
        validation = _validation(tfolder / "run", kind) if outcome.get("status") == "ok" else None
        if outcome.get("status") == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif validation is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial, validation)
        outcome["folder"] = str(tfolder)
        outcomes[i] = outcome
        trials.append({"trial": i, "settings": settings, "status": outcome.get("status"), "validation": validation,
                       "test": outcome.get("value")})
    finished = [t for t in trials if t["validation"] is not None]
    if not finished:
        return {**outcomes[len(trials) - 1], "status": "failed", "reason": "no trial finished"}, {"trials": trials}
    best = max(finished, key=lambda t: t["validation"])
    tests = [t["test"] for t in finished]
    outcome = outcomes[best["trial"]]
    outcome["wall_s"] = sum(o.get("wall_s", 0) for o in outcomes.values())  # the route's cost: every trial
    return outcome, {"trials": trials, "best": best["settings"], "spread": [min(tests), max(tests)]}


def _current(job: dict, key: str):
    node = job["run"]
    for part in key.split("."):
        node = node[part]
    return node


def _suggest(trial, key: str, values: list):
    if len(values) == 2 and all(isinstance(v, float) for v in values):
        return trial.suggest_float(key, values[0], values[1], log=True)
    if len(values) == 2 and all(isinstance(v, int) for v in values) and key != "method.r":
        return trial.suggest_int(key, values[0], values[1])
    return trial.suggest_categorical(key, values)


def _validation(run: Path, kind: str) -> float | None:
    """The trial's validation figure, higher better: accuracy (labels) or minus the validation loss."""
    path = run / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    if kind == "labels" and summary.get("accuracy") is not None:
        return float(summary["accuracy"])
    loss = summary.get("eval_loss") or summary.get("train_loss")
    return -float(loss) if loss is not None else None


def _pruning(trial, folder: Path):
    """A watch for `launch`: reports each logged training loss (negated: the study maximises) and says
    whether the pruner would stop the trial there."""
    seen = {"lines": 0}

    def watch(_folder: Path) -> bool:
        path = folder / "run" / "metrics.jsonl"
        if not path.is_file():
            return False
        lines = path.read_text(encoding="utf-8").splitlines()
        for line in lines[seen["lines"]:]:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break  # a line being written
            seen["lines"] += 1
            if "loss" in row and "step" in row:
                trial.report(-float(row["loss"]), int(row["step"]))
        return trial.should_prune()

    return watch
