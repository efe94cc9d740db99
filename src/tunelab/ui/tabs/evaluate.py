"""Evaluate: runs and tasks in, `tunelab eval`'s side-by-side tables and charts out (in its own process)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import gradio as gr

from tunelab.errors import ConfigError
from tunelab.ui.context import Context, error_text, set_args
from tunelab.ui.forms import Form
from tunelab.ui.settings import safe_name


def build(ctx: Context) -> None:
    from tunelab.eval.config import KINDS, EvalConfig, TaskConfig

    with gr.Tab("Evaluate", id="evaluate") as tab:
        gr.Markdown("Runs against their base model on tasks. One run and no task: base against tuned on the run's "
                    "own validation split.")
        with gr.Row():
            chosen = gr.Dropdown(ctx.run_names(), multiselect=True, label="runs", elem_id="eval-runs", scale=3)
            base = gr.Textbox(label="base model", info="default: the first run's own base", elem_id="eval-model",
                              scale=2)
        tasks = gr.Textbox(label="tasks", lines=3, elem_id="eval-tasks",
                           info=f"one per line: FILE[:KIND[:METRIC+METRIC]], KIND one of {', '.join(KINDS)}")
        with gr.Accordion("options", open=False):
            task_form = Form(TaskConfig, "eval-task", only=("limit", "decoding.max_new_tokens"))
            eval_form = Form(EvalConfig, "eval", only=("batch_size", "dtype", "harness", "harness_limit"))
        name = gr.Textbox(label="report name", info="default eval-<time>", elem_id="eval-name")
        go = gr.Button("Evaluate", variant="primary", elem_id="eval-start")
        error = gr.Markdown(elem_id="eval-error")
        status = gr.Markdown(elem_id="eval-status")
        report = gr.HTML(elem_id="eval-report")
        log = gr.Textbox(label="log", lines=6, max_lines=6, autoscroll=True, elem_id="eval-log")
        folder = gr.State(None)

        tab.select(lambda: gr.update(choices=ctx.run_names()), None, chosen)
        n, m = len(task_form.inputs), len(eval_form.inputs)
        go.click(lambda runs, model, task_text, report_name, *v: start(
            ctx, runs, model, task_text, report_name, task_form.raw(v[:n]), eval_form.raw(v[n:n + m])),
            [chosen, base, tasks, name, *task_form.inputs, *eval_form.inputs], [error, folder])
        gr.Timer(2.0).tick(lambda f: follow(ctx, f, "eval"), folder, [status, report, log])


def start(ctx: Context, run_names, model, task_text, report_name, task_raw: dict, eval_raw: dict):
    try:
        name = safe_name(report_name, "report name") if report_name else f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
        args = ["eval"]
        folders = [ctx.run(r) for r in run_names or []]
        specs = []  # FILE[:KIND[:METRICS]] with FILE fenced and made absolute
        for line in (task_text or "").splitlines():
            file, sep, rest = line.strip().partition(":")
            if file:
                specs.append(f"{ctx.sandbox.path(file, 'task file')}{sep}{rest}")
        if not specs and len(folders) != 1:
            raise ConfigError("tasks: give tasks, or choose exactly one run (it is then measured on its validation "
                              "split)")
        if specs:
            args += ["--tasks", ",".join(specs)]
            for folder in folders:
                args += ["--adapter", f"{folder.name}={folder}"]
        else:
            args.append(str(folders[0]))
        if model and model.strip():
            args += ["--model", ctx.sandbox.model(model, "base model")]
        if "limit" in task_raw:
            args += ["--limit", str(task_raw["limit"])]
        if "max_new_tokens" in task_raw.get("decoding", {}):
            args += ["--max-new-tokens", str(task_raw["decoding"]["max_new_tokens"])]
        args += ["--output-dir", str(ctx.runs_dir), "--name", name, *set_args(eval_raw)]
        folder = ctx.runs_dir / name
        ctx.jobs.start("eval", args, folder)
    except Exception as e:  # noqa: BLE001
        return error_text(e), gr.skip()
    return "", str(folder)


def follow(ctx: Context, folder: str | None, kind: str):
    """The job writing `folder`: its state, and once finished the report it wrote."""
    if not folder:
        return gr.skip(), gr.skip(), gr.skip()
    job = ctx.jobs.latest(folder, kind)
    if job is None:
        return "", "", ""
    state = ctx.jobs.state(job)
    report = report_html(Path(folder) / "report.html") if state == "finished" else ""
    return f"{state}: `{job.command}`", report, ctx.jobs.tail(job)


def report_html(path: Path) -> str:
    """The body of a report page (tables, charts as inline images), to show inside the UI (its own style
    is left out: it styles a whole page's body)."""
    try:
        page = path.read_text(encoding="utf-8")
    except OSError:
        return ""
    body = re.search(r"<body[^>]*>(.*)</body>", page, re.S)
    return body.group(1) if body else page
