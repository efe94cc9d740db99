"""tunelab compare end to end on a tiny random model: routes in their own processes, the report, the
recommendation, limits, resume; and the same through Ray on a loopback head."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import tunelab
from tunelab.compare.launch import launch
from tunelab.compare.task import CompareTask
from tunelab.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
REVIEWS = ROOT / "examples" / "data" / "reviews.jsonl"


def _task(tmp_path, model, routes, **kw) -> CompareTask:
    return CompareTask(name="tiny", model=str(model), train=str(REVIEWS), test_split=0.3, routes=routes,
                       output_dir=str(tmp_path), constraints={"budget_minutes": 8}, **kw)


@pytest.fixture(scope="module")
def compared(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    t = _task(folder, tiny_model_dir, ["zero-shot", "few-shot-random", "probe", "head"])
    return tunelab.compare(t), t


def test_every_route_reports_its_metric_and_costs_beside_the_plan(compared):
    report, _ = compared
    assert {r["name"] for r in report.routes} == {"zero-shot", "few-shot-random", "probe", "head"}
    for r in report.routes:
        assert r["status"] == "ok", r
        assert 0 <= r["ci"][0] <= r["value"] <= r["ci"][1] <= 1
        assert r["n"] == 6 and r["peak_rss_mb"] > 100 and r["infer_ms_per_example"] > 0
        assert r["plan"]["peak_mb"] > 100 and r["plan"]["seconds"] > 0
    head = report.route("head")
    assert head["trainable_params"] > 0 and head["artifact_bytes"] > 0 and head["steps"] >= 1
    assert report.route("zero-shot")["trainable_params"] == 0


def test_the_report_files_and_the_recommendation(compared):
    _, task = compared
    folder = task.folder
    for name in ("report.json", "report.md", "report.html", "compare.png", "latency.png", "train.jsonl",
                 "test.jsonl", "task.yaml"):
        assert (folder / name).is_file(), name
    saved = json.loads((folder / "report.json").read_text())
    assert saved["complete"] and saved["recommendation"]["recommended"] in {r["name"] for r in saved["routes"]}
    assert saved["pareto"]
    md = (folder / "report.md").read_text()
    assert "| head |" in md and "## Recommendation" in md and saved["recommendation"]["text"] in md
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    for route in ("zero-shot", "head"):  # each route's own folder: its job, predictions, log
        rows = (folder / "routes" / route / "predictions.jsonl").read_text().splitlines()
        assert len(rows) == 6 and set(json.loads(rows[0])) == {"prediction", "gold", "score"}
    assert (folder / "routes" / "head" / "run" / "summary.json").is_file()


def test_resume_keeps_finished_routes_and_runs_the_rest(compared, tiny_model_dir):
    report, task = compared
    folder = task.folder
    before = (folder / "routes" / "head" / "result.json").stat().st_mtime_ns
    t = task.model_copy(update={"routes": task.routes + [type(task.routes[0])(route="lora")]})
    again = tunelab.compare(t, resume=True)
    assert (folder / "routes" / "head" / "result.json").stat().st_mtime_ns == before
    assert again.route("lora")["status"] == "ok" and again.route("head")["value"] == report.route("head")["value"]


def test_a_second_comparison_of_the_same_name_is_refused_without_resume(compared):
    _, task = compared
    from tunelab.errors import RunError

    with pytest.raises(RunError, match="--resume"):
        tunelab.compare(task)


def test_a_budget_too_small_for_any_route_fails_before_any_model_loads(tmp_path, tiny_model_dir):
    t = _task(tmp_path, tiny_model_dir, ["zero-shot", "head"]).model_copy(
        update={"constraints": CompareTask.model_fields["constraints"].default.model_copy(
            update={"budget_minutes": 0.05})})
    with pytest.raises(ConfigError, match="too small for any route: the cheapest"):
        tunelab.compare(t)
    assert not (t.folder / "routes").exists() or not any((t.folder / "routes").iterdir())


def test_a_route_past_its_memory_limit_is_stopped_and_reported(compared):
    _, task = compared
    folder = task.folder / "routes" / "probe"
    outcome = launch(folder, 300, memory_mb=60)
    assert outcome["status"] == "out of memory" and "limit of 60 MiB" in outcome["reason"]
    assert outcome["peak_rss_mb"] > 60 and outcome["wall_s"] > 0


def test_a_route_past_its_time_limit_is_stopped_and_reported(compared):
    _, task = compared
    outcome = launch(task.folder / "routes" / "few-shot-random", 1.0, None)
    assert outcome["status"] == "out of time" and outcome["wall_s"] < 30


def test_a_failing_route_is_reported_and_the_comparison_goes_on(tmp_path, tiny_model_dir):
    t = _task(tmp_path, tiny_model_dir, ["zero-shot", {"route": "lora", "set": {"method.target_modules": ["nope"]}}])
    report = tunelab.compare(t)
    assert report.route("zero-shot")["status"] == "ok"
    failed = report.route("lora")
    assert failed["status"] == "failed" and "No modules were targeted" in failed["reason"]
    assert "failed" in (t.folder / "report.md").read_text()


def test_a_route_whose_process_fails_is_reported_with_its_error(compared, tmp_path):
    _, task = compared
    folder = tmp_path / "broken"
    shutil.copytree(task.folder / "routes" / "zero-shot", folder)
    job = json.loads((folder / "job.json").read_text())
    (folder / "job.json").write_text(json.dumps({**job, "test": str(tmp_path / "gone.jsonl")}))
    outcome = launch(folder, 120, None)
    assert outcome["status"] == "failed" and "gone.jsonl" in outcome["reason"] and outcome["wall_s"] > 0


def test_search_runs_trials_on_validation_and_reports_the_spread(tmp_path, tiny_model_dir):
    pytest.importorskip("optuna")
    t = _task(tmp_path, tiny_model_dir, ["head"], search={"trials": 2})
    report = tunelab.compare(t, search=True)
    s = report.data["search"]["head"]
    assert len(s["trials"]) == 2 and s["best"]["train.lr"] > 0 and s["spread"][0] <= s["spread"][1]
    assert s["trials"][0]["settings"]["train.lr"] == pytest.approx(5e-3)  # the route's own settings first
    assert "## Search: head" in (t.folder / "report.md").read_text()


def test_generation_task_through_prompting_and_training(tmp_path, tiny_model_dir):
    t = CompareTask(name="gen", model=str(tiny_model_dir), train=str(ROOT / "examples/data/requests_train.jsonl"),
                    test=str(ROOT / "examples/data/requests_test.jsonl"), limit_train=30, limit_test=4,
                    metric="json", max_new_tokens=8, max_length=1024, output_dir=str(tmp_path),
                    routes=["zero-shot", "lora"], constraints={"budget_minutes": 5})
    report = tunelab.compare(t)
    for r in report.routes:
        assert r["status"] == "ok" and r["n"] == 4 and 0 <= r["value"] <= 1


@pytest.mark.distributed
def test_two_routes_through_a_ray_head_on_loopback(tmp_path, tiny_model_dir):
    pytest.importorskip("ray")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = shutil.which("ray", path=str(Path(sys.executable).parent))
    start = [ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        t = _task(tmp_path, tiny_model_dir, ["zero-shot", "head"])
        report = tunelab.compare(t, ray=f"127.0.0.1:{port}")
        assert {r["name"]: r["status"] for r in report.routes} == {"zero-shot": "ok", "head": "ok"}
        assert (t.folder / "report.html").is_file()
    finally:
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
