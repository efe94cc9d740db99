"""A route in its own process, with its time and memory limits enforced from outside.

The worker runs `python -m tunelab.compare.worker FOLDER`; this side watches the resident
memory of its whole process tree twice a second and stops it past the memory limit or the
time limit. Whatever happens, the outcome is one dict: the worker's result, or the status
(failed, out of time, out of memory) with the cost incurred until then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

POLL_S = 0.5


def launch(folder: Path, seconds: float, memory_mb: float | None,
           watch: Callable[[Path], bool] | None = None) -> dict:
    """Run the job in `folder` (job.json) within `seconds` and `memory_mb`; return its outcome.

    watch: called on each poll with the folder; True stops the route (a pruned search trial).
    """
    import psutil

    for stale in ("result.json", "failure.json"):
        (folder / stale).unlink(missing_ok=True)
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore"}
    started = time.time()
    peak = 0.0
    reason = None
    with open(folder / "log.txt", "w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tunelab.compare.worker", str(folder)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while proc.poll() is None:
            time.sleep(POLL_S)
            rss = _tree_rss_mb(psutil, proc.pid)
            peak = max(peak, rss)
            elapsed = time.time() - started
            if memory_mb is not None and rss > memory_mb:
                reason = ("out of memory", f"{rss:,.0f} MiB > the limit of {memory_mb:,.0f} MiB")
            elif elapsed > seconds:
                reason = ("out of time", f"stopped at its limit of {seconds:.0f} s")
            elif watch is not None and watch(folder):
                reason = ("pruned", "stopped early: its loss trailed the other trials'")
            if reason:
                _stop(proc)
                break
        proc.wait()
    wall = round(time.time() - started, 2)
    if reason is None and (folder / "result.json").is_file():
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        result["peak_rss_mb"] = max(result.get("peak_rss_mb", 0.0), round(peak, 1))
        result["wall_s"] = wall
        return result
    if reason is None:
        reason = ("failed", _failure(folder, proc.returncode))
    return {"status": reason[0], "reason": reason[1], "wall_s": wall, "peak_rss_mb": round(peak, 1)}


def _tree_rss_mb(psutil, pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def _stop(proc: subprocess.Popen) -> None:
    """The worker and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _failure(folder: Path, code: int | None) -> str:
    failure = folder / "failure.json"
    if failure.is_file():
        return json.loads(failure.read_text(encoding="utf-8"))["error"]
    lines = (folder / "log.txt").read_text(encoding="utf-8", errors="replace").strip().splitlines()
    last = next((line for line in reversed(lines) if line.strip()), "no output")
    return f"exit code {code}: {last[-300:]} (whole log: {folder / 'log.txt'})"
