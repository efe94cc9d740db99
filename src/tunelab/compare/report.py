"""The comparison's report: report.json (everything), report.md (the table and the
recommendation), report.html (the same with two plots), each written whole and atomically.

Plot 1 (compare.png): the metric on the test data (with its 95% interval) against each route's
cost, training plus answering the test set, in seconds on a log axis; the Pareto front joined.
Plot 2 (latency.png): the metric against inference time per answer, in ms on a log axis;
its own Pareto front. Routes that did not finish are not plotted; the table says why.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from tunelab.compare.recommend import cost
from tunelab.compare.stats import pareto_front
from tunelab.config.files import write_text_atomic


def write_report(report: dict[str, Any], folder: Path) -> dict[str, Path]:
    """report.json, report.md, report.html (and the plots) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    done = [r for r in report["routes"] if r["status"] == "ok"]
    report["pareto"] = [done[i]["name"] for i in pareto_front([(max(cost(r), 1e-3), r["value"]) for r in done])]
    plots = _plots(report, done, folder) if done else {}
    paths = {"json": folder / "report.json", "markdown": folder / "report.md", "html": folder / "report.html"}
    write_text_atomic(paths["json"], json.dumps(report, indent=2, ensure_ascii=False, default=str))
    write_text_atomic(paths["markdown"], markdown(report))
    write_text_atomic(paths["html"], _html(report, plots))
    return paths


def _rows(report: dict) -> list[list[str]]:
    metric = report["metric"]
    rows = [["route", f"{metric} (95% CI)", "train s (plan)", "ms/answer (plan)", "peak MiB (plan)",
             "trainable (plan)", "artifact MiB (plan)", "status"]]
    for r in report["routes"]:
        p = r.get("plan") or {}
        if r["status"] == "ok":
            lo, hi = r["ci"]
            value = f"{100 * r['value']:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"
            train = f"{r['train_s']:.0f} ({p.get('train_s', 0):.0f})"
            infer = f"{r['infer_ms_per_example']:.0f} ({1000 * p.get('infer_s', 0) / max(report['n_test'], 1):.0f})"
            peak = f"{r['peak_rss_mb']:,.0f} ({p.get('peak_mb', 0):,.0f})"
            trainable = f"{r['trainable_params']:,}" + (f" ({p['trainable_params']:,})" if p.get("steps") else "")
            artifact = f"{r['artifact_bytes'] / 2**20:.1f}" + (f" ({p['artifact_bytes'] / 2**20:.1f})"
                                                                 if p.get("artifact_bytes") else "")
        else:
            value = train = infer = trainable = artifact = "-"
            peak = f"{r['peak_rss_mb']:,.0f} ({p.get('peak_mb', 0):,.0f})" if r.get("peak_rss_mb") else "-"
        status = r["status"] + (f": {r['reason']}" if r.get("reason") else "")
        if r.get("violates"):
            status += " (breaks " + "; ".join(r["violates"]) + ")"
        if r["name"] in report.get("pareto", []):
            status += ", Pareto"
        rows.append([r["name"], value, train, infer, peak, trainable, artifact, status])
    return rows


def markdown(report: dict) -> str:
    """The report as Markdown: what was compared, the table, the recommendation."""
    rows = _rows(report)
    lines = [f"# compare {report['name']}", "",
             f"{report['kind']} task, {report['n_train']:,} training and {report['n_test']:,} test examples, metric "
             f"{report['metric']}; model {report['model']}; budget {report['budget_s'] / 60:.0f} min, used "
             f"{report['wall_s'] / 60:.1f} min.", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += ["", "Plan figures in brackets are the prediction made before the route ran.", "",
              "## Recommendation", "", report["recommendation"]["text"]]
    for name, s in (report.get("search") or {}).items():
        lines += ["", f"## Search: {name}", "", f"{len(s['trials'])} trials; best {s['best']}; test {report['metric']} "
                  f"from {100 * s['spread'][0]:.1f} to {100 * s['spread'][1]:.1f}"]
    return "\n".join(lines) + "\n"


def _html(report: dict, plots: dict[str, bytes]) -> str:
    rows = _rows(report)
    table = "<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in rows[0]) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]) + "</table>"
    images = "".join(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(CAPTIONS[name])}</figcaption>'
                     "</figure>" for name, png in plots.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>compare {html.escape(report['name'])}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
            "img{max-width:100%}</style></head><body>"
            f"<h1>compare {html.escape(report['name'])}</h1><p>{html.escape(markdown(report).splitlines()[2])}</p>"
            f"{table}<h2>Recommendation</h2><p>{html.escape(report['recommendation']['text'])}</p>{images}"
            "</body></html>")


CAPTIONS = {
    "compare.png": "metric on the test data (95% interval) against training plus answering time; Pareto front joined",
    "latency.png": "metric on the test data against inference time per answer; Pareto front joined",
}


def _plots(report: dict, done: list[dict], folder: Path) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    out = {}
    for name, xlabel, x_of in (("compare.png", "training + answering the test set (s, log)", cost),
                               ("latency.png", "inference per answer (ms, log)", lambda r: r["infer_ms_per_example"])):
        xs = [max(x_of(r), 1e-3) for r in done]
        ys = [100 * r["value"] for r in done]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        errors = [[100 * r["value"] - 100 * r["ci"][0] for r in done], [100 * r["ci"][1] - 100 * r["value"]
                                                                          for r in done]]
        ax.errorbar(xs, ys, yerr=errors, fmt="o", color="tab:blue", ecolor="lightgray", capsize=3)
        front = pareto_front(list(zip(xs, ys)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", color="tab:orange", label="Pareto front")
        for r, x, y in zip(done, xs, ys):
            ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{report['metric']} (%)")
        ax.set_title(f"compare {report['name']}")
        ax.legend(loc="lower right")
        fig.tight_layout()
        path = folder / name
        fig.savefig(path.with_suffix(".tmp.png"), dpi=110)
        plt.close(fig)
        os.replace(path.with_suffix(".tmp.png"), path)
        out[name] = path.read_bytes()
    return out

