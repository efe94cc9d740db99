"""`tunelab compare`: one task through a ladder of routes, within one budget, one report.

    report = tunelab.compare("task.yaml")            # or compare(CompareTask(...), resume=True)
    report.recommendation["text"]

Everything a user can get wrong is checked before any model loads: the task file, the data,
the metric, the routes and their settings, and whether the budget fits even the cheapest
route. Then the routes run cheapest first, each in its own process with time and memory
limits; the budget is shared out as it goes: a route gets an equal share of what is left
(cheap routes finish well inside theirs and pass the rest on); a training route whose full
run would not fit its share trains for as many steps as fit; a route that cannot fit at
all is skipped, with the plan's figures as the reason. The report is rewritten after every
route, so an interrupted comparison keeps what it measured and `resume` goes on from there.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from tunelab.compare.estimate import Estimate, estimate
from tunelab.compare.launch import launch
from tunelab.compare.planner import _machine_mb
from tunelab.compare.routes import job as make_job
from tunelab.compare.routes import ladder
from tunelab.compare.task import CompareTask, TaskData, load_task, read_task
from tunelab.config import to_dict, write_yaml
from tunelab.config.files import write_text_atomic
from tunelab.errors import ConfigError, RunError, needs
from tunelab.eval.runner import slug

MIN_STEPS = 10  # fewer optimizer steps than this measure the start, not the route
SLACK = 1.5  # a route may run this much past its predicted time (or its share) before it is stopped


@dataclass
class Report:
    """What `compare` returns and report.json holds: every route's figures and the recommendation."""

    folder: Path
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def routes(self) -> list[dict]:
        return self.data["routes"]

    @property
    def recommendation(self) -> dict:
        return self.data["recommendation"]

    def route(self, name: str) -> dict:
        return next(r for r in self.routes if r["name"] == name)


def compare(task: CompareTask | str | Path, overrides: list[str] | None = None, *, resume: bool = False,
            ray: str | None = None, search: bool = False, console: Console | None = None) -> Report:
    """Run the task through its routes and write runs/compare-<name>/report.{json,md,html}.

    resume: keep the routes an earlier, interrupted comparison finished.
    ray: a Ray address (or "auto") to run the routes as Ray tasks on a cluster.
    search: a few trials of each training route's key settings (task `search:` options).
    Raises ConfigError / DataError (exit 2 on the command line) before any model loads.
    """
    started = time.time()
    console = console or Console(stderr=True)
    task = task if isinstance(task, CompareTask) else load_task(task, overrides)
    if search and task.search is None:
        from tunelab.compare.task import SearchConfig

        task.search = SearchConfig()
    data = read_task(task)
    specs = ladder(task, data)
    folder = _folder(task, resume)
    paths = data.write(folder)
    write_yaml(to_dict(task), folder / "task.yaml")
    jobs = {s.name: make_job(task, data, s, paths, folder / "routes" / slug(s.name)) for s in specs}
    budget = task.constraints.budget_minutes * 60
    memory = task.constraints.memory_gb * 1024 if task.constraints.memory_gb else _machine_mb()
    rough = {name: _rough(j) for name, j in jobs.items()}  # no model loads, no probe
    cheapest = min(rough, key=lambda n: rough[n].seconds)
    if math.isinf(rough[cheapest].seconds):
        estimate(jobs[cheapest], measure=False)  # no route can be planned: the first one's own error says why
    if rough[cheapest].seconds > budget:
        raise ConfigError(f"constraints.budget_minutes: {task.constraints.budget_minutes:g} min is too small for any "
                          f"route: the cheapest, {cheapest}, needs about {rough[cheapest].seconds / 60:.1f} min on "
                          f"this machine; raise it, or set limit_test / limit_train")
    if search:
        needs("optuna", "search")
    order = sorted(jobs, key=lambda n: rough[n].seconds)
    console.print(f"compare {task.name}: {data.kind} task, {len(data.train):,} train / {len(data.test):,} test, "
                  f"metric {data.metric}; {len(order)} routes within {budget / 60:.0f} min: {', '.join(order)}")
    if task.test:
        from tunelab.data.curate.decontaminate import overlap_warning

        warning = overlap_warning(task.train, task.test)  # a test file a training record quotes scores too well
        if warning:
            console.print(f"[yellow]{warning}[/yellow]")
    state = _State(task, data, folder, budget, started, memory, order)
    if ray:
        _run_on_ray(ray, order, jobs, state, console)
    else:
        for name in order:
            state.run(name, jobs[name], console, searching=search)
    return state.finish(console)


class _State:
    """The comparison as it goes: outcomes so far, the clock, the report on disk."""

    def __init__(self, task: CompareTask, data: TaskData, folder: Path, budget: float, started: float,
                 memory_mb: float | None, order: list[str]):
        self.task, self.data, self.folder, self.budget, self.memory = task, data, folder, budget, memory_mb
        self.order = order
        self.started = started
        self.outcomes: dict[str, dict] = {}
        self.plans: dict[str, Estimate] = {}
        self.searches: dict[str, dict] = {}
        self.previously = _earlier_spend(folder)
        self.done_before = _finished_before(folder)

    def left(self) -> float:
        return self.budget - (time.time() - self.started) - self.previously

    def schedule(self, name: str, job: dict, est: Estimate, routes_left: int) -> tuple[float, str | None]:
        """(the route's time limit, or the reason it is skipped); caps a training route's steps to its share."""
        remaining = self.left()
        if self.memory is not None and est.peak_mb > self.memory:
            return 0, (f"plan: needs ~{est.peak_mb:,.0f} MiB, over the limit of {self.memory:,.0f} MiB; "
                       "try qlora, a smaller batch_size or max_length")
        share = remaining / max(routes_left, 1)
        if est.seconds <= share:  # never stopped inside its share: a plan can be off on a machine it misjudges
            return min(remaining, max(SLACK * est.seconds, est.seconds + 60, share)), None
        if job["family"] == "training" and est.seconds_per_step > 0:
            fixed = est.start_s + est.infer_s
            steps = math.floor((share - fixed) / est.seconds_per_step)
            if steps < MIN_STEPS:
                return 0, (f"plan: {est.steps:,} steps need ~{est.seconds / 60:.1f} min; its share of the "
                           f"{remaining / 60:.1f} min left fits {max(steps, 0)} (fewer than {MIN_STEPS})")
            job["run"]["train"]["max_steps"] = min(steps, est.steps)
            return min(remaining, SLACK * share), None
        if est.seconds <= remaining:
            return min(remaining, SLACK * est.seconds), None
        return 0, f"plan: needs ~{est.seconds / 60:.1f} min, {remaining / 60:.1f} min left"

    def run(self, name: str, job: dict, console: Console, searching: bool = False) -> None:
        rfolder = Path(job["folder"])
        if (rfolder / "result.json").is_file() and name in self.done_before:
            self.outcomes[name] = json.loads((rfolder / "result.json").read_text(encoding="utf-8"))
            console.print(f"  {name}: finished before (resumed)")
            return
        try:
            est = estimate(job)
        except Exception as e:  # noqa: BLE001  a route the plan cannot build (a bad setting) fails alone
            self._record(name, {"status": "failed", "reason": f"plan: {type(e).__name__}: {e}", "wall_s": 0.0})
            console.print(f"  {name}: failed before it ran ({type(e).__name__}: {e})")
            return
        self.plans[name] = est
        limit, skip = self.schedule(name, job, est, len([n for n in self.order if n not in self.outcomes]))
        if skip:
            self._record(name, {"status": "skipped", "reason": skip, "wall_s": 0.0})
            console.print(f"  {name}: skipped ({skip})")
            return
        _write_job(rfolder, job)
        steps = job.get("run", {}).get("train", {}).get("max_steps", -1)
        console.print(f"  {name}: running (limit {limit:.0f} s, plan ~{est.seconds:.0f} s"
                      + (f", {steps} steps" if steps and steps > 0 else "") + ")")
        if searching and self._searched(job):
            from tunelab.compare.search import search_route

            outcome, summary = search_route(job, self.task.search, limit, self.memory, self.data.kind)
            self.searches[name] = summary
        else:
            outcome = launch(rfolder, limit, self.memory)
        self._record(name, outcome)
        value = f"{self.data.metric} {outcome['value']:.4f}" if outcome.get("status") == "ok" else \
            f"{outcome['status']}: {outcome.get('reason', '')}"
        console.print(f"  {name}: {value} ({outcome.get('wall_s', 0):.0f} s)")

    def _searched(self, job: dict) -> bool:
        wanted = self.task.search.routes
        return job["family"] == "training" and (not wanted or job["name"] in wanted or job["route"] in wanted)

    def _record(self, name: str, outcome: dict) -> None:
        self.outcomes[name] = outcome
        self.write(complete=False)

    def write(self, complete: bool) -> dict:
        from tunelab.compare.recommend import recommend
        from tunelab.compare.report import write_report
        from tunelab.compare.stats import confidence_interval

        routes, details, golds = [], {}, [e.target for e in self.data.test]
        for name, outcome in self.outcomes.items():
            entry = {"name": name, **{k: v for k, v in outcome.items() if k != "name"}}
            if name in self.plans:
                entry["plan"] = self.plans[name].to_dict()
            elif self.done_before.get(name, {}).get("plan"):  # resumed: the plan made before it ran
                entry["plan"] = self.done_before[name]["plan"]
            if outcome.get("status") == "ok":
                rows = _predictions(Path(outcome.get("folder") or self._route_folder(name)))
                details[name] = {"scores": [r["score"] for r in rows], "predictions": [r["prediction"] for r in rows]}
                entry["ci"] = list(confidence_interval(self.data.metric, details[name]["scores"],
                                                       details[name]["predictions"], golds))
            routes.append(entry)
        constraints = to_dict(self.task.constraints)
        report = {"name": self.task.name, "complete": complete, "kind": self.data.kind, "metric": self.data.metric,
                  "model": self.task.model, "n_train": len(self.data.train), "n_test": len(self.data.test),
                  "budget_s": self.budget, "wall_s": round(time.time() - self.started + self.previously, 1),
                  "constraints": constraints, "routes": routes, "search": self.searches,
                  "recommendation": recommend(routes, details, self.data.metric, golds, constraints)}
        write_report(report, self.folder)
        return report

    def _route_folder(self, name: str) -> Path:
        return self.folder / "routes" / slug(name)

    def finish(self, console: Console) -> Report:
        report = self.write(complete=True)
        console.print(f"\n{report['recommendation']['text']}\nreport: {self.folder / 'report.md'}  "
                      f"{self.folder / 'report.html'}")
        return Report(self.folder, report)


def _run_on_ray(address: str, order: list[str], jobs: dict[str, dict], state: _State, console: Console) -> None:
    """Every route as a Ray task, asking for the CPUs, GPUs and memory its plan says it needs; the
    budget is shared out up front (routes run side by side, so nothing is left over to pass on)."""
    ray = needs("ray", "ray")
    local = {"_node_ip_address": "127.0.0.1"} if address.startswith(("127.0.0.1", "localhost")) else {}
    ray.init(address=address, logging_level="ERROR", log_to_driver=False, **local)  # loopback: no outside address
    try:
        cpus = ray.cluster_resources().get("CPU", 1)
        gpus = ray.cluster_resources().get("GPU", 0)
        remote = ray.remote(_launch_remote)
        pending = {}
        for i, name in enumerate(order):
            job = jobs[name]
            try:
                est = estimate(job)
            except Exception as e:  # noqa: BLE001  as in the local run: this route fails, the others go on
                state._record(name, {"status": "failed", "reason": f"plan: {type(e).__name__}: {e}", "wall_s": 0.0})
                continue
            state.plans[name] = est
            limit, skip = state.schedule(name, job, est, len(order) - i)
            if skip:
                state._record(name, {"status": "skipped", "reason": skip, "wall_s": 0.0})
                continue
            rfolder = Path(job["folder"])
            _write_job(rfolder, job)
            options = {"num_cpus": min(cpus, 2 if job["family"] == "training" else 1),
                       "num_gpus": 1 if job["family"] == "training" and gpus >= 1 else 0,
                       "memory": int(est.peak_mb * 2**20)}
            console.print(f"  {name}: submitted to Ray ({options['num_cpus']} CPU, {options['num_gpus']} GPU, "
                          f"{est.peak_mb:,.0f} MiB; limit {limit:.0f} s)")
            deadline = time.time() + state.left()  # a route still queued when the budget is spent does not start
            pending[remote.options(**options).remote(str(rfolder), limit, state.memory, deadline)] = name
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(done[0])
            outcome, files = ray.get(done[0])
            folder = Path(jobs[name]["folder"])
            for file, text in files.items():  # a worker on another machine: its files come back with it
                if not (folder / file).is_file():
                    (folder / file).write_text(text, encoding="utf-8")
            state._record(name, outcome)
            console.print(f"  {name}: {outcome.get('status')} ({outcome.get('wall_s', 0):.0f} s)")
    finally:
        ray.shutdown()


def _launch_remote(folder: str, limit: float, memory: float | None, deadline: float) -> tuple[dict, dict[str, str]]:
    """A Ray task: the same launch, limits and files as the local run, within what is left of the budget."""
    path = Path(folder)
    limit = min(limit, deadline - time.time())
    if limit <= 0:
        return {"status": "skipped", "reason": "the budget was spent before a worker was free", "wall_s": 0.0}, {}
    outcome = launch(path, limit, memory)
    files = {name: (path / name).read_text(encoding="utf-8") for name in ("result.json", "predictions.jsonl")
             if (path / name).is_file()}
    return outcome, files


# ---------------------------------------------------------------- helpers


def _folder(task: CompareTask, resume: bool) -> Path:
    folder = task.folder
    report = folder / "report.json"
    if report.is_file() and not resume:
        raise RunError(f"{folder}: a comparison is already there; --resume to continue it, or give another name "
                       "(--set name=...)")
    if not resume:
        shutil.rmtree(folder / "routes", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _earlier_spend(folder: Path) -> float:
    """Seconds an interrupted comparison already spent (its report's wall time), for --resume."""
    path = folder / "report.json"
    if not path.is_file():
        return 0.0
    return float(json.loads(path.read_text(encoding="utf-8")).get("wall_s", 0.0))


def _rough(job: dict) -> Estimate:
    """The estimate without a probe, for ordering; a route the plan cannot build goes last (it fails
    when its turn comes, with the plan's error)."""
    try:
        return estimate(job, measure=False)
    except Exception:  # noqa: BLE001
        return Estimate(math.inf, 0, 0, 0, 0, 0)


def _finished_before(folder: Path) -> dict[str, dict]:
    """The routes an earlier run of this comparison finished (the ones --resume keeps), by name."""
    path = folder / "report.json"
    if not path.is_file():
        return {}
    return {r["name"]: r for r in json.loads(path.read_text(encoding="utf-8"))["routes"] if r["status"] == "ok"}


def _write_job(folder: Path, job: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "job.json", json.dumps(job, indent=2, ensure_ascii=False))


def _predictions(folder: Path) -> list[dict]:
    with open(folder / "predictions.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


