"""Trainer callbacks: metrics.jsonl rows, a live progress line (loss, tokens/s, ETA) and progress.json
(what another process, such as `tunelab ui`, reads), and a clean stop on SIGTERM."""

from __future__ import annotations

import math
import os
import signal
import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import TrainerCallback

from tunelab.training.records import RunRecord


class RunLogger(TrainerCallback):
    """Append each log to metrics.jsonl and show progress on the main process.

    `tokens` returns the real (non-padding) tokens trained so far on all processes. With
    `perplexity`, evaluation rows also carry exp(eval_loss) (language-model losses only).
    """

    def __init__(self, record: RunRecord, tokens, console: Console | None = None, perplexity: bool = False):
        self.record = record
        self.perplexity = perplexity
        self.tokens = tokens
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.loss: float | None = None
        self.t0 = time.time()
        self.tokens0 = 0
        self.shown = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0, self.tokens0 = time.time(), self.tokens()
        if not state.is_world_process_zero or not self.console.is_terminal:
            return
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("", total=state.max_steps, completed=state.global_step)

    def rate(self) -> float:
        return (self.tokens() - self.tokens0) / max(time.time() - self.t0, 1e-9)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and (time.time() - self.shown > 1.0 or state.global_step >= state.max_steps):
            self.shown = time.time()  # at most once a second: a file write per step would cost tiny models' speed
            done = state.global_step / max(state.max_steps, 1)
            elapsed = time.time() - self.t0
            self.record.progress({"step": state.global_step, "max_steps": state.max_steps, "loss": self.loss,
                                  "tokens_per_s": round(self.rate(), 1), "elapsed_s": round(elapsed, 1),
                                  "eta_s": round(elapsed / done * (1 - done), 1) if done > 0 else None})
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step,
                                 description=f"loss {'-' if self.loss is None else f'{self.loss:.4f}'}  {self.rate():,.0f} tok/s")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "tokens": self.tokens(),
               "tokens_per_s": round(self.rate(), 1), "time_s": round(time.time() - self.t0, 2)}
        for key, value in logs.items():
            if key in ("train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos"):
                continue
            row["lr" if key == "learning_rate" else key] = value
        if "loss" in row:
            self.loss = row["loss"]
        if self.perplexity and "eval_loss" in row:
            row["eval_perplexity"] = round(math.exp(min(row["eval_loss"], 50.0)), 4)
        self.record.log(row)
        if self.progress is None and ("loss" in row or "eval_loss" in row):  # not a terminal: plain lines
            shown = {k: row[k] for k in ("step", "loss", "eval_loss", "tokens_per_s") if k in row}
            self.console.print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
            self.progress.stop()
            self.progress = None


class StopOnSignal(TrainerCallback):
    """SIGTERM (the UI's Stop button, a scheduler's preemption) ends training cleanly: the step in
    flight finishes, a checkpoint is saved, and `train.resume` continues from it.

    Single-process runs only: ranks of a distributed run would see the signal at different steps.
    """

    def __init__(self):
        self.requested = False
        self.previous = None

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            self.previous = signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum, frame) -> None:
        self.requested = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        """Give SIGTERM back to whoever had it (also when training ended in an exception)."""
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None
