"""Evaluation: perplexity, multiple choice by log-likelihood, generation metrics, LLM-as-judge,
a bias probe, the lm-evaluation-harness bridge, and the report that puts models side by side."""

from tunelab.eval.config import EvalConfig, ModelSpec, TaskConfig, load_eval_config
from tunelab.eval.json_match import parse_json_object, score_json

__all__ = ["EvalConfig", "ModelSpec", "TaskConfig", "load_eval_config", "parse_json_object", "score_json"]


def evaluate(cfg: EvalConfig, console=None) -> dict:
    """Run an evaluation (see `tunelab.eval.runner.evaluate`)."""
    from tunelab.eval.runner import evaluate as run

    return run(cfg, console)
