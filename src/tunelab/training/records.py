"""The run folder: resolved config, metrics.jsonl, summary.json, loss.png.

runs/<name>/
  config.yaml     the fully resolved config (the run can be repeated from it alone)
  metrics.jsonl   one line per logged step / evaluation
  summary.json    final metrics and costs
  loss.png        training and validation loss curves
  progress.json   the latest step, total steps, loss and ETA while training (for other processes)
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, write_yaml
from tunelab.errors import RunError


class RunRecord:
    """Writes one run's folder. Only the main process writes (`active=False` elsewhere)."""

    def __init__(self, folder: Path, active: bool = True):
        self.folder = folder
        self.active = active
        self.started = time.time()

    @classmethod
    def create(cls, cfg: RunConfig, active: bool = True) -> RunRecord:
        """Make (or reopen, on resume) runs/<name>/ and write config.yaml.

        Raises RunError rather than overwrite a finished run unless train.overwrite is set.
        """
        name = cfg.train.run_name or f"{cfg.objective_name}-{cfg.method_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        cfg.train.run_name = name
        folder = Path(cfg.train.output_dir) / name
        if (folder / "summary.json").exists() and not (cfg.train.overwrite or cfg.train.resume):
            raise RunError(f"{folder}: a finished run is already there; choose another train.run_name, "
                           "or set train.overwrite: true to replace it")
        if active:
            folder.mkdir(parents=True, exist_ok=True)
            if not cfg.train.resume and (folder / "metrics.jsonl").exists():
                (folder / "metrics.jsonl").unlink()
            write_yaml(cfg, folder / "config.yaml")
        return cls(folder, active)

    def log(self, row: dict[str, Any]) -> None:
        if self.active:
            with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def progress(self, state: dict[str, Any]) -> None:
        """Replace progress.json atomically: a reader never sees half a file."""
        if self.active:
            tmp = self.folder / "progress.json.tmp"
            tmp.write_text(json.dumps({**state, "time": round(time.time(), 1)}))
            os.replace(tmp, self.folder / "progress.json")

    def metrics(self) -> list[dict]:
        path = self.folder / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json (with wall time and peak memory added) and loss.png."""
        summary = {"wall_s": round(time.time() - self.started, 2), "peak_rss_mb": peak_rss_mb(), **summary}
        if self.active:
            tmp = self.folder / "summary.json.tmp"
            tmp.write_text(json.dumps(summary, indent=2))
            os.replace(tmp, self.folder / "summary.json")
            plot_loss(self.metrics(), self.folder / "loss.png")
        return summary


def is_main_process() -> bool:
    """True in a single process, and in the rank-0 process of a distributed launch."""
    return int(os.environ.get("RANK", "0")) == 0


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def artifact_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def plot_loss(rows: list[dict], path: Path) -> None:
    """Training (and validation) loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(path.parent.name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
