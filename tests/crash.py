"""Simulated crashes for resume tests: the run dies at the end of an optimizer step."""

from __future__ import annotations


class SimulatedCrash(Exception):
    pass


def crash_at(monkeypatch, step: int) -> None:
    """Make every trainer (tunelab's or a library's) die at the end of optimizer step
    `step`, before any checkpoint of that step is written. Undo with monkeypatch.undo()."""
    from tunelab.training.callbacks import RunLogger

    def crash(self, args, state, control, **kwargs):
        if state.global_step == step:
            raise SimulatedCrash(f"killed at step {step}")

    monkeypatch.setattr(RunLogger, "on_step_end", crash)
