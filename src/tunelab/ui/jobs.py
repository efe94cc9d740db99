"""Long work as `tunelab` commands in their own processes, recorded on disk.

A job is one command line (`tunelab train CONFIG`, `tunelab eval ...`) started in a new
session: closing the browser, or the UI itself, does not stop it. Each job is a JSON file
and a log in the UI's folder, so every browser tab (and a restarted UI) sees the same jobs.
Stop sends SIGTERM to the job's process group: training saves a checkpoint and ends
(`tunelab.training.callbacks.StopOnSignal`), other commands end at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from tunelab.errors import RunStopped

STOPPED = RunStopped.exit_code


@dataclass
class Job:
    id: str
    kind: str  # train, eval, compare, export, quantize
    args: list[str]  # the tunelab command line, without `tunelab`
    folder: str  # where its result goes (a run, report or export folder)
    log: str
    pid: int
    started: float
    rc: int | None = None  # the exit code, once it ended

    @property
    def command(self) -> str:
        return "tunelab " + " ".join(self.args)


class Jobs:
    """The jobs of one UI folder: start, stop, list, and read their state and logs."""

    def __init__(self, state_dir: Path, cwd: Path):
        self.dir = state_dir / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cwd = cwd
        self._lock = threading.Lock()
        self._processes: dict[str, subprocess.Popen] = {}  # jobs this process started: their exit codes at hand

    def start(self, kind: str, args: list[str], folder: Path) -> Job:
        """Run `tunelab ARGS` in the background; its output goes to the job's log."""
        job_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        log = self.dir / f"{job_id}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(log, "w", encoding="utf-8") as out:
            process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", *args], stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.cwd, env=env,
                                       start_new_session=True)
        job = Job(job_id, kind, list(args), str(folder), str(log), process.pid, time.time())
        self._processes[job_id] = process
        self._save(job)
        threading.Thread(target=self._reap, args=(process, job), daemon=True, name=f"job-{job_id}").start()
        return job

    def _reap(self, process: subprocess.Popen, job: Job) -> None:
        job.rc = process.wait()
        self._save(job)

    def _save(self, job: Job) -> None:
        with self._lock:
            tmp = self.dir / f"{job.id}.json.tmp"
            tmp.write_text(json.dumps(asdict(job)), encoding="utf-8")
            os.replace(tmp, self.dir / f"{job.id}.json")

    def all(self, kind: str | None = None) -> list[Job]:
        """Every job, newest first."""
        jobs = []
        for path in self.dir.glob("*.json"):
            try:
                jobs.append(Job(**json.loads(path.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError):
                continue  # being replaced right now
        return sorted((j for j in jobs if kind is None or j.kind == kind), key=lambda j: j.started, reverse=True)

    def latest(self, folder: Path | str, kind: str | None = None) -> Job | None:
        """The newest job writing into `folder`."""
        folder = str(folder)
        return next((j for j in self.all(kind) if j.folder == folder), None)

    def running(self, job: Job) -> bool:
        if job.rc is not None:
            return False
        if job.id in self._processes:
            return self._processes[job.id].poll() is None
        try:
            process = psutil.Process(job.pid)
            return process.status() != psutil.STATUS_ZOMBIE and "tunelab.cli" in " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def state(self, job: Job) -> str:
        """running, finished, stopped, failed, or ended (the UI that started it is gone: exit code unknown)."""
        if self.running(job):
            return "running"
        job = self.reload(job)
        if job.rc is None and job.id in self._processes:
            job.rc = self._processes[job.id].poll()  # ended a moment ago; its reaper may not have saved it yet
        if job.rc is None:
            return "ended"
        return "finished" if job.rc == 0 else "stopped" if job.rc in (STOPPED, -signal.SIGTERM) else "failed"

    def reload(self, job: Job) -> Job:
        path = self.dir / f"{job.id}.json"
        try:
            return Job(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return job

    def stop(self, job: Job) -> bool:
        """Ask the job to end (SIGTERM to its process group); False if it was not running."""
        if not self.running(job):
            return False
        try:
            os.killpg(job.pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def tail(self, job: Job, lines: int = 30) -> str:
        try:
            text = Path(job.log).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])

    def result(self, job: Job) -> dict | None:
        """The JSON object a finished command printed last (export, quantize, compare), if any."""
        try:
            text = Path(job.log).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        start = text.rfind("\n{")
        start = start + 1 if start >= 0 else (0 if text.startswith("{") else -1)
        if start < 0:
            return None
        try:
            value = json.loads(text[start:])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None
