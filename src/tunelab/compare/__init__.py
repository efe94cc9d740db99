"""Choosing a route: `plan` predicts a run's memory, time, parameters and artifact before it runs;
`tunelab.compare(task)` runs one task through a ladder of routes and recommends one.

The package itself is callable, so `tunelab.compare(task)` is the comparison while
`tunelab.compare.planner`, `tunelab.compare.runner` and the rest stay importable modules.
"""

import sys
import types

from tunelab.compare.planner import Plan, plan


class _CallablePackage(types.ModuleType):
    def __call__(self, task, overrides: list[str] | None = None, **options):
        """One task (a YAML path or a CompareTask) through its ladder of routes; returns the Report
        (`report.routes`, `report.recommendation`, `report.folder`). Options: resume, ray, search."""
        from tunelab.compare.runner import compare

        return compare(task, overrides, **options)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["Plan", "plan"]
