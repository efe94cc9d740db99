"""A short SST-2 comparison end to end: the shipped example task, the default model, real sentences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tunelab
from tunelab.compare.task import load_task

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_a_short_sst2_comparison(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the example names its data relative to the project root
    task = load_task("examples/compare/sst2.yaml", [
        f"output_dir={tmp_path}", "limit_train=300", "limit_test=100", "constraints.budget_minutes=8",
        "routes=[zero-shot, probe-minilm, head]"])
    report = tunelab.compare(task)
    assert [r["status"] for r in report.routes] == ["ok"] * 3, report.routes
    values = {r["name"]: r["value"] for r in report.routes}
    assert values["probe-minilm"] > 0.6, values  # MiniLM features separate sentiment well above chance
    assert report.data["wall_s"] <= 1.1 * 8 * 60
    saved = json.loads((report.folder / "report.json").read_text())
    assert saved["recommendation"]["recommended"] in values and saved["n_test"] == 100
    assert all(len(r["ci"]) == 2 and r["plan"]["seconds"] > 0 for r in saved["routes"])
