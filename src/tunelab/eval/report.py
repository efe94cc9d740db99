"""The evaluation report: one JSON with every figure and the config, a Markdown table, an HTML page.

Each task gets a table with one row per metric, one column per model, and one column per
model after the first with its difference from the first (the baseline). The HTML page
adds a bar chart per metric.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path

# where a smaller figure is the better one (the report marks improvements either way)
LOWER_IS_BETTER = {"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "nll_per_token", "loss",
                   "loss_rate", "kl", "label_unmatched"}
# neither way is better in itself (a bias probe's gap and share are read, not ranked)
NO_DIRECTION = {"mean_gap", "stereotype_share"}
# counts and sizes: shown, never compared or charted
NOT_COMPARED = {"n", "tokens", "words", "bytes", "documents", "pairs", "invalid", "sample_len", "seconds"}


def _compared(metric: str) -> bool:
    """Differences and bars make sense for a figure, not for a count or an interval's bound."""
    return metric not in NOT_COMPARED and not metric.endswith(("_lo95", "_hi95", "_stderr"))


def scalar_metrics(result: dict) -> dict[str, float]:
    """The numbers of a task result that belong in a table (nested details are left out)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def with_differences(tasks: dict, models: list[str]) -> dict:
    """Add `diff[model][metric] = value - baseline value` to each task."""
    base = models[0]
    for task in tasks.values():
        results = task["results"]
        task["diff"] = {}
        for name in models[1:]:
            if name not in results or base not in results:
                continue
            a, b = scalar_metrics(results[base]), scalar_metrics(results[name])
            task["diff"][name] = {k: round(b[k] - a[k], 6) for k in b if k in a and _compared(k)}
    return tasks


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    return str(value)


def _arrow(metric: str, delta: float) -> str:
    if delta == 0 or metric in NO_DIRECTION:
        return ""
    better = delta < 0 if metric in LOWER_IS_BETTER else delta > 0
    return " ▲" if better else " ▼"


def _rows(task: dict, models: list[str]) -> tuple[list[str], list[list[str]]]:
    head = ["metric"] + models + [f"Δ {m}" for m in models[1:]]
    metrics = []
    for m in models:
        for k in scalar_metrics(task["results"].get(m, {})):
            if k not in metrics:
                metrics.append(k)
    rows = []
    for k in metrics:
        row = [k] + [_fmt(task["results"].get(m, {}).get(k, "")) for m in models]
        for m in models[1:]:
            d = task.get("diff", {}).get(m, {}).get(k)
            row.append("" if d is None else f"{d:+.4f}{_arrow(k, d)}")
        rows.append(row)
    return head, rows


def markdown(report: dict) -> str:
    models = report["models"]
    lines = [f"# Evaluation: {', '.join(models)}", "",
             f"Baseline: **{models[0]}**. Δ is each model minus the baseline (▲ better, ▼ worse).", ""]
    for name, task in report["tasks"].items():
        lines += [f"## {name} ({task['kind']}{', ' + str(task['n']) + ' examples' if task.get('n') else ''})", ""]
        head, rows = _rows(task, models)
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def _chart(task_name: str, task: dict, models: list[str]) -> str | None:
    """A PNG (base64) with one bar chart per compared metric, or None when there is nothing to chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = []  # every model's figures: a pairwise judge has none for the baseline itself
    for m in models:
        metrics += [k for k in scalar_metrics(task["results"].get(m, {})) if _compared(k) and k not in metrics]
    if not metrics:
        return None
    cols = min(len(metrics), 4)
    rows = (len(metrics) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics):
        shown = [m for m in models if isinstance(task["results"].get(m, {}).get(metric), (int, float))]
        values = [task["results"][m][metric] for m in shown]
        ax.bar(range(len(shown)), values, color=[colors[models.index(m) % len(colors)] for m in shown])
        ax.set_xticks(range(len(shown)), shown, rotation=20, fontsize=8)
        ax.set_title(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle(task_name, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
         "margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
         "td:first-child,th:first-child{text-align:left}.up{color:#080}.down{color:#b00}")


def html_page(report: dict) -> str:
    models = report["models"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>tunelab eval</title><style>", STYLE,
             "</style></head><body>",
             f"<h1>Evaluation: {html.escape(', '.join(models))}</h1>",
             f"<p>Baseline: <b>{html.escape(models[0])}</b>. Δ is each model minus the baseline.</p>"]
    for name, task in report["tasks"].items():
        parts.append(f"<h2>{html.escape(name)} <small>({html.escape(task['kind'])}"
                     f"{', ' + str(task['n']) + ' examples' if task.get('n') else ''})</small></h2>")
        head, rows = _rows(task, models)
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>")
        for row in rows:
            cells = []
            for cell in row:
                cls = " class='up'" if cell.endswith("▲") else " class='down'" if cell.endswith("▼") else ""
                cells.append(f"<td{cls}>{html.escape(cell)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        png = _chart(name, task, models)
        if png:
            parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Config</h2><pre>" + html.escape(json.dumps(report["config"], indent=2)) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _write(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a crash never leaves half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(report: dict, folder: Path) -> dict[str, Path]:
    """report.json, report.md and report.html in `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "report.json", "markdown": folder / "report.md", "html": folder / "report.html"}
    _write(paths["json"], json.dumps(report, indent=2, ensure_ascii=False))
    _write(paths["markdown"], markdown(report))
    _write(paths["html"], html_page(report))
    return paths
