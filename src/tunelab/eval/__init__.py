"""Evaluation: task metrics over generations."""

from tunelab.eval.json_match import parse_json_object, score_json

__all__ = ["parse_json_object", "score_json"]
