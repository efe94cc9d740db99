"""The page: one tab per capability, and `launch` with safe defaults.

Safe by default: loopback only unless a host is given (then a warning when no auth is set);
no analytics, update checks, share links or web fonts, so the page never calls outside the
machine; uploads limited in size and kept in the UI's own folder.
"""

from __future__ import annotations

import os
import sys

from tunelab.ui.context import Context
from tunelab.ui.settings import LOOPBACK, UIConfig, read_auth

TABS = ("data", "train", "runs", "evaluate", "chat", "rag", "compare", "export")


def build_app(ctx: Context):
    """The Blocks of every tab (built, not launched)."""
    import importlib

    import gradio as gr

    with gr.Blocks(title="tunelab", analytics_enabled=False) as app:
        gr.Markdown(f"## tunelab\nRuns in `{ctx.runs_dir}` · folders: `{ctx.sandbox.listed()}`")
        with gr.Tabs():
            for name in TABS:
                importlib.import_module(f"tunelab.ui.tabs.{name}").build(ctx)
    return app


def theme():
    """Gradio's default look with the system's fonts: its own would be fetched from Google."""
    import gradio as gr

    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def launch(cfg: UIConfig, block: bool = True):
    """Serve the UI; with `block` False, return (app, url) and serve in the background (tests)."""
    ctx = Context.create(cfg)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(ctx.state / "uploads")  # uploads stay in the UI's own folder
    auth = read_auth(cfg.auth)
    if cfg.host not in LOOPBACK and auth is None:
        print(f"warning: tunelab ui listens on {cfg.host} with no --auth: anyone who can reach this machine can "
              "train, read and write in its folders; set --auth USER:PASS", file=sys.stderr)
    app = build_app(ctx)
    app.queue(default_concurrency_limit=4)
    _, url, _ = app.launch(server_name=cfg.host, server_port=cfg.port, auth=auth, share=False, ssr_mode=False,
                           mcp_server=False, pwa=False, enable_monitoring=False, inbrowser=False,
                           max_file_size=f"{cfg.max_upload_mb}mb", theme=theme(), footer_links=["settings"],
                           prevent_thread_lock=not block, quiet=not block)
    return app, url
