"""Choosing a route before paying for it: `plan` predicts a run's memory, time, parameters and
artifact on this machine or a named GPU (the comparison of routes builds on it)."""

from tunelab.compare.planner import Plan, plan

__all__ = ["Plan", "plan"]
