"""tunelab compare without running routes: the task file's checks, the ladder, the budget's sharing,
the statistics and the recommendation."""

import json
from pathlib import Path

import numpy as np
import pytest

from tunelab.cli import main
from tunelab.compare.estimate import Estimate
from tunelab.compare.recommend import recommend
from tunelab.compare.routes import ladder, route_of
from tunelab.compare.runner import MIN_STEPS, _State
from tunelab.compare.stats import confidence_interval, mcnemar, paired_difference, pareto_front
from tunelab.compare.task import CompareTask, load_task, read_task
from tunelab.errors import ConfigError, DataError


@pytest.fixture
def labels_file(tmp_path):
    path = tmp_path / "reviews.jsonl"
    rows = [{"text": f"review number {i} {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def task(**kw) -> CompareTask:
    return CompareTask(**kw)


# ---------------------------------------------------------------- the task file


def test_a_task_needs_test_data_or_a_split(labels_file):
    with pytest.raises(ConfigError, match="test.*no test data.*test_split"):
        task(train=str(labels_file))


def test_an_unknown_metric_is_named_with_the_known_ones(labels_file):
    with pytest.raises(ConfigError, match="metric.*'acuracy'.*accuracy"):
        task(train=str(labels_file), test_split=0.2, metric="acuracy")


def test_a_generation_metric_on_label_records_is_refused(labels_file):
    with pytest.raises(ConfigError, match="metric: 'exact_match'.*labels task"):
        read_task(task(train=str(labels_file), test_split=0.2, metric="exact_match"))


def test_a_label_metric_on_generation_records_is_refused(qa_file):
    with pytest.raises(ConfigError, match="metric: 'accuracy' needs labels"):
        read_task(task(train=str(qa_file), test_split=0.2, metric="accuracy"))


def test_a_numeric_metric_checks_every_gold_naming_the_record(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"prompt": "a", "answer": "3"}\n{"prompt": "b", "answer": "three"}\n')
    with pytest.raises(DataError, match=r"qa.jsonl:2.*numeric"):
        read_task(task(train=str(path), test=str(path), metric="numeric"))


def test_split_is_seeded_and_disjoint(labels_file):
    data = read_task(task(train=str(labels_file), test_split=0.2, label_names={0: "negative", 1: "positive"}))
    assert data.kind == "labels" and data.metric == "accuracy"
    assert len(data.test) == 6 and len(data.train) == 24
    assert {e.input for e in data.test}.isdisjoint({e.input for e in data.train})
    assert data.labels == ["negative", "positive"]  # in the order label_names gives
    again = read_task(task(train=str(labels_file), test_split=0.2))
    assert [e.input for e in again.test] == [e.input for e in data.test]


def test_test_labels_unseen_in_training_are_refused(tmp_path, labels_file):
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "x", "label": 7}\n')
    with pytest.raises(DataError, match=r"test labels \['7'\] never occur"):
        read_task(task(train=str(labels_file), test=str(test)))


def test_conversation_records_become_prompts_with_their_system_turn(tmp_path):
    path = tmp_path / "chat.jsonl"
    turns = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": '{"a": 1}'}]
    path.write_text(json.dumps({"messages": turns}) + "\n")
    data = read_task(task(train=str(path), test=str(path), metric="json"))
    assert data.kind == "generate" and data.test[0].system == "Answer in JSON." and data.test[0].input == "hi"
    written = data.write(tmp_path)
    assert json.loads(Path(written["test"]).read_text().splitlines()[0])["messages"] == turns


# ---------------------------------------------------------------- routes and the ladder


def test_the_label_ladder_has_every_route_the_issue_names(labels_file):
    t = task(train=str(labels_file), test_split=0.2)
    names = [s.route for s in ladder(t, read_task(t))]
    assert names == ["zero-shot", "few-shot-random", "few-shot-similar", "probe", "probe-minilm", "head", "lora",
                     "ia3", "full"]


def test_the_generation_ladder_follows_the_metric_and_the_documents(qa_file, tmp_path):
    t = task(train=str(qa_file), test_split=0.2, metric="f1")
    assert [s.route for s in ladder(t, read_task(t))] == ["zero-shot", "few-shot-similar", "lora", "qlora", "full"]
    t = task(train=str(qa_file), test_split=0.2, metric="numeric", documents=str(tmp_path))
    assert [s.route for s in ladder(t, read_task(t))] == ["zero-shot", "few-shot-similar", "cot-sc", "rag", "lora",
                                                          "qlora", "full"]


def test_an_unknown_route_suggests_the_nearest(labels_file):
    with pytest.raises(ConfigError, match="'lorra' is not a route \\(did you mean lora\\?\\)"):
        route_of("lorra")


def test_a_route_of_the_other_kind_is_refused(labels_file):
    t = task(train=str(labels_file), test_split=0.2, routes=["cot-sc"])
    with pytest.raises(ConfigError, match=r"routes\[0\].*generate tasks.*labels"):
        ladder(t, read_task(t))


def test_any_trainable_method_is_a_route():
    route = route_of("adapter")
    assert route.family == "training" and route.settings["method.name"] == "adapter"


def test_routes_given_by_name_or_with_settings(labels_file):
    t = task(train=str(labels_file), test_split=0.2, routes=["zero-shot", {"route": "lora", "name": "lora-r16",
                                                                            "set": {"method.r": 16}}])
    assert [(s.name, s.route, s.set) for s in t.routes] == [("zero-shot", "zero-shot", {}),
                                                             ("lora-r16", "lora", {"method.r": 16})]
    with pytest.raises(ConfigError, match="share a name"):
        task(train=str(labels_file), test_split=0.2, routes=["lora", "lora"])


# ---------------------------------------------------------------- sharing the budget


def _state(tmp_path, budget=100.0, memory=None):
    import time

    t = CompareTask(train="x.jsonl", test_split=0.5)
    return _State(t, None, tmp_path, budget, time.time(), memory, ["a", "b"])


def test_a_cheap_route_gets_room_to_finish(tmp_path):
    limit, skip = _state(tmp_path).schedule("a", {"family": "prompting"}, Estimate(20, 0, 5, 500, 0, 0), 2)
    assert skip is None and 50 <= limit <= 100  # at least its share of the 100 s: a plan can be off


def test_a_route_is_never_stopped_inside_its_share_however_low_its_plan(tmp_path):
    limit, _ = _state(tmp_path, budget=600).schedule("a", {"family": "prompting"}, Estimate(20, 0, 5, 500, 0, 0), 2)
    assert 299 <= limit <= 300  # the plan says 20 s; a machine three times slower still finishes


def test_an_expensive_training_route_trains_for_the_steps_its_share_fits(tmp_path):
    job = {"family": "training", "run": {"train": {"max_steps": -1}}}
    est = Estimate(1000, 970, 10, 500, 1, 1, steps=970, seconds_per_step=1.0)
    limit, skip = _state(tmp_path).schedule("a", job, est, 1)
    assert skip is None and 68 <= job["run"]["train"]["max_steps"] <= 70  # (100 s - start 20 - answering 10) / 1 s
    assert limit <= 100


def test_a_route_that_cannot_fit_is_skipped_with_the_plan_as_reason(tmp_path):
    job = {"family": "training", "run": {"train": {"max_steps": -1}}}
    est = Estimate(1000, 970, 10, 500, 1, 1, steps=970, seconds_per_step=50.0)
    _, skip = _state(tmp_path).schedule("a", job, est, 1)
    assert skip and f"fewer than {MIN_STEPS}" in skip
    _, skip = _state(tmp_path, memory=100).schedule("a", job, est, 1)
    assert skip and "500 MiB, over the limit of 100 MiB" in skip


# ---------------------------------------------------------------- statistics


def test_the_interval_holds_the_mean_and_narrows_with_more_examples():
    rng = np.random.default_rng(0)
    small = rng.integers(0, 2, 50).astype(float)
    large = rng.integers(0, 2, 2000).astype(float)
    lo, hi = confidence_interval("accuracy", small, small, small)
    assert lo <= small.mean() <= hi
    lo2, hi2 = confidence_interval("accuracy", large, large, large)
    assert hi2 - lo2 < hi - lo


def test_mcnemar_matches_the_exact_binomial():
    a = np.array([1] * 10 + [0] * 2 + [1] * 20)
    b = np.array([0] * 10 + [1] * 2 + [1] * 20)
    from scipy.stats import binomtest

    assert mcnemar(a, b) == pytest.approx(binomtest(10, 12, 0.5).pvalue)
    assert mcnemar(a, a) == 1.0


def test_paired_difference_of_a_route_with_itself_is_zero():
    s = [1.0, 0.0, 1.0, 1.0]
    t = paired_difference("accuracy", {"scores": s, "predictions": s}, {"scores": s, "predictions": s}, s)
    assert t["difference"] == 0 and t["low"] <= 0 <= t["high"] and t["p_mcnemar"] == 1.0


def test_pareto_front():
    points = [(1, 0.5), (2, 0.7), (3, 0.6), (10, 0.9), (11, 0.9)]
    assert pareto_front(points) == [0, 1, 3]


# ---------------------------------------------------------------- the recommendation


def _route(name, value, train_s, ms=10.0, artifact=0):
    return {"name": name, "status": "ok", "value": value, "train_s": train_s, "infer_s": 1.0,
            "infer_ms_per_example": ms, "artifact_bytes": artifact}


def _details(correct: list[int]):
    return {"scores": [float(c) for c in correct], "predictions": correct}


def test_the_cheapest_route_indistinguishable_from_the_best_is_recommended():
    n = 400
    best = [1] * 360 + [0] * 40
    close = [1] * 356 + [0] * 44
    poor = [1] * 200 + [0] * 200
    routes = [_route("lora", 0.9, 1000), _route("probe", 0.89, 20), _route("zero-shot", 0.5, 0)]
    details = {"lora": _details(best), "probe": _details(close), "zero-shot": _details(poor)}
    rec = recommend(routes, details, "accuracy", [1] * n, {})
    assert rec["best"] == "lora" and rec["recommended"] == "probe"
    assert "within 1.0 points" in rec["text"] and "McNemar" in rec["text"] and "Choose lora only if" in rec["text"]


def test_the_best_route_is_recommended_when_every_cheaper_one_is_worse():
    routes = [_route("lora", 0.9, 1000), _route("zero-shot", 0.5, 0)]
    details = {"lora": _details([1] * 90 + [0] * 10), "zero-shot": _details([1] * 50 + [0] * 50)}
    rec = recommend(routes, details, "accuracy", [1] * 100, {})
    assert rec["recommended"] == "lora" and "measurably worse" in rec["text"]


def test_routes_breaking_a_constraint_are_not_recommended():
    routes = [_route("full", 0.95, 1000, artifact=500 * 2**20), _route("lora", 0.9, 900, ms=5000),
              _route("head", 0.8, 100)]
    details = {n: _details([1] * int(100 * v) + [0] * (100 - int(100 * v))) for n, v in
               (("full", 0.95), ("lora", 0.9), ("head", 0.8))}
    rec = recommend(routes, details, "accuracy", [1] * 100, {"latency_ms": 1000, "artifact_mb": 100})
    assert rec["best"] == "head"
    assert routes[0]["violates"] == ["artifact 500.0 MiB > 100 MiB"]
    assert "5000 ms per answer > 1000 ms" in routes[1]["violates"][0]


# ---------------------------------------------------------------- the command line: bad input, exit 2


@pytest.mark.parametrize("body,message", [
    ("train: {f}\n", "no test data"),
    ("train: {f}\ntest_split: 0.2\nroutes: [lorra]\n", "did you mean lora?"),
    ("train: {f}\ntest_split: 0.2\nmetric: exact_match\n", "labels task"),
    ("train: {f}\ntest_split: 0.2\nbudget: 5\n", "budget: unknown key"),
])
def test_bad_task_files_exit_2_with_one_message(tmp_path, labels_file, capsys, body, message):
    path = tmp_path / "task.yaml"
    path.write_text(body.format(f=labels_file))
    assert main(["compare", str(path), "--output-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_list_routes(capsys):
    assert main(["compare", "--list-routes"]) == 0
    out = capsys.readouterr().out
    assert "few-shot-similar" in out and "probe-minilm" in out and "default ladders" in out


def test_the_shipped_example_tasks_resolve():
    root = Path(__file__).resolve().parents[2]
    for path in sorted((root / "examples" / "compare").glob("*.yaml")):
        t = load_task(path)
        assert t.constraints.budget_minutes > 0 and (t.test or t.test_split)
