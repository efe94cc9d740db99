"""Compare: a task through a ladder of routes (`tunelab compare`, in its own process); its report and
its recommendation, read back from the comparison folder."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from tunelab.ui.context import Context, error_text
from tunelab.ui.forms import Form
from tunelab.ui.tabs.evaluate import report_html

PATH_KEYS = ("train", "test", "documents")  # task keys naming files or folders: fenced like every typed path


def build(ctx: Context) -> None:
    from tunelab.compare.task import CompareTask

    with gr.Tab("Compare", id="compare"):
        gr.Markdown("One task through many routes (prompting, retrieval, probes, training methods) within a "
                    "budget; the report ranks them and recommends one.")
        form = Form(CompareTask, "compare", skip=("output_dir",), values={"model": ctx.default_model})
        go = gr.Button("Compare", variant="primary", elem_id="compare-start")
        error = gr.Markdown(elem_id="compare-error")
        status = gr.Markdown(elem_id="compare-status")
        recommendation = gr.Markdown(elem_id="compare-recommendation")
        report = gr.HTML(elem_id="compare-report")
        log = gr.Textbox(label="log", lines=6, max_lines=6, autoscroll=True, elem_id="compare-log")
        folder = gr.State(None)

        go.click(lambda *v: start(ctx, form, v), form.inputs, [error, folder])
        gr.Timer(2.0).tick(lambda f: follow(ctx, f), folder, [status, recommendation, report, log])


def start(ctx: Context, form: Form, values):
    from tunelab.compare.task import CompareTask
    from tunelab.config import write_yaml

    try:
        raw = form.raw(values)
        for key in PATH_KEYS:
            if raw.get(key):
                raw[key] = str(ctx.sandbox.path(raw[key], key))
        if raw.get("model"):
            raw["model"] = ctx.sandbox.model(raw["model"], "model")
        task = CompareTask.load({**raw, "output_dir": str(ctx.runs_dir)}, "compare task")
        path = ctx.state / "configs" / f"compare-{task.name}.yaml"
        write_yaml(task, path)
        ctx.jobs.start("compare", ["compare", str(path)], task.folder)
    except Exception as e:  # noqa: BLE001
        return error_text(e), gr.skip()
    return "", str(task.folder)


def follow(ctx: Context, folder: str | None):
    if not folder:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    job = ctx.jobs.latest(folder, "compare")
    if job is None:
        return "", "", "", ""
    state = ctx.jobs.state(job)
    recommendation = ""
    if state == "finished":
        try:
            found = json.loads((Path(folder) / "report.json").read_text(encoding="utf-8")).get("recommendation", {})
        except (OSError, ValueError):
            found = {}
        recommendation = (f"**recommended**: {found.get('recommended')} · **best**: {found.get('best')}  \n"
                          f"{found.get('text', '')}")
    report = report_html(Path(folder) / "report.html") if state == "finished" else ""
    return f"{state}: `{job.command}`", recommendation, report, ctx.jobs.tail(job)
