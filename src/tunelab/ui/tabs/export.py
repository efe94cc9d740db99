"""Export: a run shipped as a merged Hugging Face folder, GGUF or Ollama folder (checked against the run),
or quantized and measured; each in its own process, its result and verification shown."""

from __future__ import annotations

import json

import gradio as gr

from tunelab.ui.context import Context, error_text, flag_args
from tunelab.ui.forms import Form


def build(ctx: Context) -> None:
    from tunelab.compress.export import ExportConfig
    from tunelab.compress.quantize import QuantizeConfig

    with gr.Tab("Export", id="export") as tab:
        run = gr.Dropdown(ctx.run_names(), label="run", elem_id="export-run")
        with gr.Row():
            with gr.Column():
                gr.Markdown("**Export**: merged weights, GGUF for llama.cpp / Ollama, checked against the run")
                export_form = Form(ExportConfig, "export", skip=("output",))
                export_button = gr.Button("Export", variant="primary", elem_id="export-start")
            with gr.Column():
                gr.Markdown("**Quantize**: a smaller model, reloaded and measured against the run")
                quantize_form = Form(QuantizeConfig, "quantize", skip=("output", "calibration"))
                quantize_button = gr.Button("Quantize", variant="primary", elem_id="quantize-start")
        error = gr.Markdown(elem_id="export-error")
        status = gr.Markdown(elem_id="export-status")
        result = gr.JSON(label="result and verification", elem_id="export-result")
        log = gr.Textbox(label="log", lines=6, max_lines=6, autoscroll=True, elem_id="export-log")
        job_id = gr.State(None)

        tab.select(lambda: gr.update(choices=ctx.run_names()), None, run)
        export_button.click(lambda name, *v: start(ctx, "export", ExportConfig, export_form, name, v),
                            [run, *export_form.inputs], [error, job_id])
        quantize_button.click(lambda name, *v: start(ctx, "quantize", QuantizeConfig, quantize_form, name, v),
                              [run, *quantize_form.inputs], [error, job_id])
        gr.Timer(2.0).tick(lambda j: follow(ctx, j), job_id, [status, result, log])


def start(ctx: Context, kind: str, cls, form: Form, name: str | None, values):
    try:
        folder = ctx.run(name or "")
        raw = form.raw(values)
        cls.load(raw, kind)  # the schema's message now, not the child's later
        job = ctx.jobs.start(kind, [kind, str(folder), *flag_args(cls, raw)], folder / "exports")
    except Exception as e:  # noqa: BLE001
        return error_text(e), gr.skip()
    return "", job.id


def follow(ctx: Context, job_id: str | None):
    if not job_id:
        return gr.skip(), gr.skip(), gr.skip()
    job = next((j for j in ctx.jobs.all() if j.id == job_id), None)
    if job is None:
        return "", None, ""
    state = ctx.jobs.state(job)
    result = ctx.jobs.result(job) if state == "finished" else None
    line = f"{state}: `{job.command}`"
    if result and isinstance(result.get("verify"), dict):
        line += " · verification " + ("passed" if result["verify"].get("passed") else "did not pass")
    return line, json.loads(json.dumps(result, default=str)) if result else None, ctx.jobs.tail(job)
