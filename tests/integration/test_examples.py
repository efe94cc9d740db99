"""Every config in examples/ resolves, and trains two steps on a tiny model with its own settings."""

from pathlib import Path

import pytest

from tunelab import train
from tunelab.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_examples_exist():
    assert len(EXAMPLES) >= 3


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """Four layers, so examples that train the last few blocks keep their own settings."""
    from tunelab.models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny4") / "model", layers=4)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, tiny_model_dir, tiny_reward_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name their data relative to the project root
    settings = [f"model.name={tiny_model_dir}", f"train.output_dir={tmp_path}", "train.max_steps=2"]
    objective = load_config(path).objective_name
    if objective == "distill":  # the example's teacher is another example's run; the tiny model stands in
        settings.append(f"objective.teacher={tiny_model_dir}")
    if objective == "ppo":  # likewise its reward model
        settings.append(f"objective.reward_model={tiny_reward_model_dir}")
    cfg = load_config(path, settings)
    if cfg.data.train.startswith("../shared/") and not Path(cfg.data.train).exists():
        pytest.skip(f"{path.name} trains on the shared real data ({cfg.data.train}), which is not here")
    assert Path(cfg.data.train).exists(), f"{path.name}: data file {cfg.data.train} is missing"
    summary = train(cfg)
    if cfg.method_name == "probe":  # no gradient steps: a classifier fitted on embeddings
        assert 0 <= summary["accuracy"] <= 1
    else:
        assert summary["steps"] == 2
    assert (tmp_path / cfg.train.run_name / summary["artifact"]).is_dir()
