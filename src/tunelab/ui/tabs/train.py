"""Train: the run config as a form, the plan's prediction, and a run started, followed, stopped and
resumed in its own process (`tunelab train`), writing an ordinary run folder."""

from __future__ import annotations

import os
import time

import gradio as gr

from tunelab.config import RunConfig
from tunelab.errors import ConfigError, RunError
from tunelab.ui import runs
from tunelab.ui.context import Context, error_text
from tunelab.ui.forms import Form
from tunelab.ui.settings import safe_name
from tunelab.ui.tabs.data import FILE_TYPES

SKIP = ("train.output_dir", "train.resume", "train.overwrite")  # the UI decides these: its runs folder, its buttons


def build(ctx: Context) -> None:
    from tunelab.compare.planner import PlanConfig
    from tunelab.config import run_schema

    with gr.Tab("Train", id="train") as tab:
        with gr.Row():
            with gr.Column(scale=3):
                gr.Markdown("Choose an objective and a method: only their own options show. Every other "
                            "option keeps its default unless you change it.")
                form = Form(run_schema(), "train", skip=SKIP, values={"model.name": ctx.default_model},
                            opened=("model", "data"))
                upload = gr.UploadButton("Upload training data", file_types=FILE_TYPES, elem_id="train-upload")
                with gr.Accordion("plan: where to predict for", open=False):
                    plan_form = Form(PlanConfig, "plan", values={"probe": False})
            with gr.Column(scale=2):
                run = gr.Dropdown(ctx.run_names(), value=None, label="run", info="the run shown below; any run "
                                  "folder, also those started from the command line", elem_id="train-run",
                                  interactive=True)
                with gr.Row():
                    plan_button = gr.Button("Plan", elem_id="train-plan-button")
                    start = gr.Button("Start", variant="primary", elem_id="train-start")
                    stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
                    resume = gr.Button("Resume", elem_id="train-resume")
                error = gr.Markdown(elem_id="train-error")
                plan_text = gr.Markdown(elem_id="train-plan")
                status = gr.Markdown(elem_id="train-status")
                loss = gr.LinePlot(runs.curves([]), x="step", y="loss", color="curve", title="loss",
                                   elem_id="train-loss", height=260)
                summary = gr.JSON(label="summary", elem_id="train-summary")
                log = gr.Textbox(label="log", lines=8, max_lines=8, autoscroll=True, elem_id="train-log")
        seen = gr.State(None)

        tab.select(lambda: gr.update(choices=ctx.run_names()), None, run)
        upload.upload(lambda f: f, upload, form.component("data.train"))
        n = len(form.inputs)
        plan_button.click(lambda *v: show_plan(ctx, form, plan_form, v[:n], v[n:]), [*form.inputs, *plan_form.inputs],
                          [error, plan_text])
        start.click(lambda *v: start_run(ctx, form, v), form.inputs, [error, run, status])
        stop.click(lambda name: stop_run(ctx, name), run, [error, status])
        resume.click(lambda name: resume_run(ctx, name), run, [error, status])
        outputs = [status, loss, summary, log, seen]
        run.change(lambda name: refresh(ctx, name, None), run, outputs)
        gr.Timer(1.0).tick(lambda name, last: refresh(ctx, name, last), [run, seen], outputs)


def run_config(ctx: Context, form: Form, values) -> RunConfig:
    """The form's values as a checked run config whose files lie inside the UI's folders."""
    from tunelab.config import resolve

    raw = form.raw(values)
    raw.setdefault("train", {})["output_dir"] = str(ctx.runs_dir)
    cfg = resolve(raw, "")
    cfg.data.train = str(ctx.sandbox.path(cfg.data.train, "data.train"))
    if cfg.data.validation:
        cfg.data.validation = str(ctx.sandbox.path(cfg.data.validation, "data.validation"))
    cfg.model.name = ctx.sandbox.model(cfg.model.name, "model.name") or ctx.default_model
    return cfg


def show_plan(ctx: Context, form: Form, plan_form: Form, values, plan_values) -> tuple[str, str]:
    from tunelab.compare.planner import PlanConfig, plan

    try:
        cfg = run_config(ctx, form, values)
        options = PlanConfig.load(plan_form.raw(plan_values), "plan")
        return "", "```\n" + plan(cfg, device=options.device, probe=options.probe).table() + "\n```"
    except Exception as e:  # noqa: BLE001
        return error_text(e), ""


def start_run(ctx: Context, form: Form, values):
    from tunelab.config import write_yaml

    try:
        cfg = run_config(ctx, form, values)
        name = safe_name(cfg.train.run_name, "train.run_name") if cfg.train.run_name else \
            f"{cfg.objective_name}-{cfg.method_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        folder = ctx.runs_dir / name
        if (folder / "summary.json").exists():
            raise RunError(f"{folder}: a finished run is already there; choose another train.run_name")
        if (latest := ctx.jobs.latest(folder, "train")) and ctx.jobs.running(latest):
            raise RunError(f"{name}: this run is training now; stop it first or choose another train.run_name")
        cfg.train.run_name = name
        config_path = ctx.state / "configs" / f"{name}.yaml"
        write_yaml(cfg, config_path)
        ctx.jobs.start("train", ["train", str(config_path)], folder)
    except Exception as e:  # noqa: BLE001
        return error_text(e), gr.skip(), gr.skip()
    names = [name] + [n for n in ctx.run_names() if n != name]
    return "", gr.update(choices=names, value=name), f"running: starting {name}"


def _latest(ctx: Context, name: str | None):
    """A run folder and the newest training job writing it (None if none)."""
    folder = ctx.run(name or "")
    return folder, ctx.jobs.latest(folder, "train")


def stop_run(ctx: Context, name: str | None) -> tuple[str, str]:
    try:
        folder, job = _latest(ctx, name)
        if job is None or not ctx.jobs.stop(job):
            raise RunError(f"{name}: not training now, nothing to stop")
    except Exception as e:  # noqa: BLE001
        return error_text(e), gr.skip()
    return "", "stopping: the step in flight finishes and a checkpoint is saved"


def resume_run(ctx: Context, name: str | None) -> tuple[str, str]:
    try:
        folder, job = _latest(ctx, name)
        if job is not None and ctx.jobs.running(job):
            raise RunError(f"{name}: training now already")
        if runs.status(folder, False) != "stopped":
            raise RunError(f"{name}: no checkpoint to resume from (only a stopped run has one)")
        ctx.jobs.start("train", ["train", str(folder / "config.yaml"), "--resume"], folder)
    except Exception as e:  # noqa: BLE001
        return error_text(e), gr.skip()
    return "", f"running: resuming {name}"


def refresh(ctx: Context, name: str | None, last):
    """Status, curve, summary and log of the run shown; nothing is sent when nothing changed."""
    if not name:
        return "", runs.curves([]), None, "", None
    try:
        folder = ctx.run(name)
    except ConfigError:
        folder = ctx.runs_dir / name  # started, its folder not made yet
    job = ctx.jobs.latest(folder, "train")
    running = job is not None and ctx.jobs.running(job)
    signature = (running, *(_mtime(folder / f) for f in ("metrics.jsonl", "progress.json", "summary.json")),
                 _mtime(job.log) if job else None, job.id if job else None)
    if signature == last:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), last
    state = runs.status(folder, running)
    line = runs.progress_line(folder, state)
    if job is not None and not running and state != "finished" and ctx.jobs.state(job) == "failed":
        line = f"failed (exit code {ctx.jobs.reload(job).rc}): the log below says why"
    summary = {k: v for k, v in runs.summary(folder).items() if k not in ("data",)} or None
    return line, runs.curves([folder]), summary, ctx.jobs.tail(job) if job else "", signature


def _mtime(path) -> float | None:
    try:
        return os.path.getmtime(path)
    except OSError:
        return None
