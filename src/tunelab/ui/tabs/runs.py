"""Runs: every run folder with its status and headline results; pick several to lay their loss
curves over each other and their summaries side by side."""

from __future__ import annotations

import gradio as gr

from tunelab.ui import runs
from tunelab.ui.context import Context, error_text


def build(ctx: Context) -> None:
    with gr.Tab("Runs", id="runs") as tab:
        table = gr.Dataframe(label="runs", interactive=False, elem_id="runs-table")
        with gr.Row():
            chosen = gr.Dropdown(ctx.run_names(), multiselect=True, label="runs to compare", elem_id="runs-select",
                                 scale=4)
            refresh = gr.Button("Refresh", elem_id="runs-refresh", scale=1)
        error = gr.Markdown(elem_id="runs-error")
        curves = gr.LinePlot(runs.curves([]), x="step", y="loss", color="curve", title="loss",
                             elem_id="runs-loss", height=300)
        side = gr.Dataframe(label="summaries side by side", interactive=False, elem_id="runs-summaries")
        config = gr.Code(label="config.yaml of the first run chosen", language="yaml", elem_id="runs-config")

        def listing(selected):
            names = ctx.run_names()
            return runs.overview(runs.run_folders(ctx.runs_dir), ctx.running_runs()), \
                gr.update(choices=names, value=[n for n in selected or [] if n in names])

        for event in (tab.select, refresh.click):
            event(listing, chosen, [table, chosen])
        chosen.change(lambda names: compare(ctx, names), chosen, [error, curves, side, config])


def compare(ctx: Context, names: list[str] | None):
    try:
        folders = [ctx.run(n) for n in names or []]
    except Exception as e:  # noqa: BLE001
        return error_text(e), runs.curves([]), None, ""
    first = (folders[0] / "config.yaml").read_text(encoding="utf-8") if folders else ""
    return "", runs.curves(folders), runs.summaries(folders) if folders else None, first
