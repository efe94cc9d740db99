"""Run folders as the UI shows them: status, progress, loss curves and summaries side by side.

Everything is read from the folders themselves (config.yaml, metrics.jsonl, progress.json,
summary.json), so a run started from the command line shows exactly like one started here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

SUMMARY_KEYS = ("steps", "train_loss", "eval_loss", "eval_perplexity", "eval_accuracy", "tokens_trained",
                "tokens_per_s", "wall_s", "peak_rss_mb", "trainable_params", "total_params", "artifact_bytes")


def run_folders(runs_dir: Path) -> list[Path]:
    """Training run folders (those holding a config.yaml), newest first."""
    if not runs_dir.is_dir():
        return []
    found = [p for p in runs_dir.iterdir() if (p / "config.yaml").is_file()]
    return sorted(found, key=lambda p: (p / "config.yaml").stat().st_mtime, reverse=True)


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def metrics(folder: Path) -> list[dict]:
    rows = []
    try:
        lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # the line being written
    return rows


def config(folder: Path) -> dict:
    try:
        value = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def status(folder: Path, running: bool) -> str:
    """finished, running, stopped (a checkpoint to resume from), or incomplete."""
    if (folder / "summary.json").is_file():
        return "finished"
    if running:
        return "running"
    checkpoints = folder / "checkpoints"
    if checkpoints.is_dir() and any(p.name.startswith("checkpoint-") for p in checkpoints.iterdir()):
        return "stopped"
    return "incomplete"


def progress_line(folder: Path, state: str) -> str:
    """`running: step 12 / 40 (30%), loss 2.31, 850 tok/s, ETA 25 s` from progress.json."""
    p = read_json(folder / "progress.json")
    if not p:
        return state if state != "running" else "running: loading the model and data"
    done = p.get("step", 0) / max(p.get("max_steps") or 1, 1)
    parts = [f"step {p.get('step')} / {p.get('max_steps')} ({done:.0%})"]
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4g}")
    if p.get("tokens_per_s"):
        parts.append(f"{p['tokens_per_s']:,.0f} tok/s")
    if state == "running" and p.get("eta_s") is not None:
        parts.append(f"ETA {p['eta_s']:.0f} s")
    return f"{state}: " + ", ".join(parts)


def curves(folders: list[Path]) -> pd.DataFrame:
    """One row per logged loss: run, step, loss, series (train / validation), for a line plot."""
    rows = []
    for folder in folders:
        for r in metrics(folder):
            if "loss" in r:
                rows.append({"run": folder.name, "step": r["step"], "loss": r["loss"], "series": "train"})
            if "eval_loss" in r:
                rows.append({"run": folder.name, "step": r["step"], "loss": r["eval_loss"], "series": "validation"})
    frame = pd.DataFrame(rows, columns=["run", "step", "loss", "series"])
    frame["curve"] = frame["run"] + " " + frame["series"]
    return frame


def summary(folder: Path) -> dict:
    return read_json(folder / "summary.json")


def summaries(folders: list[Path]) -> pd.DataFrame:
    """Headline figures side by side: one row per figure, one column per run."""
    table = {"figure": list(SUMMARY_KEYS)}
    for folder in folders:
        s = summary(folder)
        table[folder.name] = [_short(s.get(k)) for k in SUMMARY_KEYS]
    return pd.DataFrame(table)


def overview(folders: list[Path], running: set[str]) -> pd.DataFrame:
    """Every run, a row each: its name, status, model, objective, method and headline results."""
    rows = []
    for folder in folders:
        cfg, s = config(folder), summary(folder)
        method, objective = cfg.get("method", {}), cfg.get("objective", {})
        rows.append({
            "run": folder.name, "status": status(folder, folder.name in running),
            "model": (cfg.get("model") or {}).get("name", ""),
            "objective": objective.get("name", objective) if isinstance(objective, dict) else objective,
            "method": method.get("name", method) if isinstance(method, dict) else method,
            "steps": s.get("steps", ""), "train_loss": _short(s.get("train_loss")),
            "eval_loss": _short(s.get("eval_loss")), "wall_s": _short(s.get("wall_s")),
        })
    return pd.DataFrame(rows, columns=["run", "status", "model", "objective", "method", "steps", "train_loss",
                                       "eval_loss", "wall_s"])


def _short(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"{value:,}" if isinstance(value, int) else str(value)
