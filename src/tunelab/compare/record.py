"""The plan's prediction inside a training run: printed before, recorded beside the outcome after.

A prediction never stops a run: a model or objective the plan cannot read yet is reported
as such in summary.json (`plan.error`) and training goes on.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from rich.console import Console

from tunelab.config import RunConfig

log = logging.getLogger(__name__)


def predict(cfg: RunConfig) -> dict:
    """The plan of `cfg` on this machine (no new probe: a cached one, else a matmul benchmark), printed."""
    from tunelab.compare.planner import plan
    from tunelab.training.records import is_main_process

    try:
        p = plan(cfg, probe=False)
    except Exception as e:  # noqa: BLE001  a prediction must never stop the run it predicts
        log.warning("no plan for this run (%s: %s); training goes on", type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}
    if is_main_process():
        console = Console(stderr=True)
        console.print(f"plan: peak ~{p.peak_mb:,.0f} MiB" + (f" of {p.available_mb:,.0f}" if p.available_mb else "")
                      + f", ~{p.seconds_total:,.0f} s for {p.steps:,} steps, {p.trainable_params:,} trainable "
                      f"parameters (tunelab plan for the breakdown)")
        for advice in p.advice:
            console.print(f"[yellow]plan: {advice}[/yellow]")
    return p.to_dict()


def record_prediction(cfg: RunConfig, summary: dict, prediction: dict | None) -> dict:
    """`summary` with the prediction under `plan`, and prediction against outcome under `plan_error`;
    summary.json rewritten whole."""
    if prediction is None:
        return summary
    summary = {**summary, "plan": prediction}
    if "error" not in prediction:
        seconds = summary.get("train_runtime_s") or (summary.get("embed_seconds", 0) + summary.get("fit_seconds", 0))
        measured = {"peak_rss_mb": summary.get("peak_rss_mb"), "train_runtime_s": seconds}
        predicted = {"peak_rss_mb": prediction["peak_mb"], "train_runtime_s": prediction["seconds_total"]}
        summary["plan_error"] = {k: round(predicted[k] / measured[k] - 1, 3) for k in measured if measured[k]}
    path = Path(cfg.train.output_dir) / (cfg.train.run_name or "") / "summary.json"
    if path.is_file() and int(os.environ.get("RANK", "0")) == 0:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, path)
    return summary
