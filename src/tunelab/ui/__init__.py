"""The web UI (`tunelab ui`): every capability behind a page, over the same schema, functions and run folders.

- `settings`: what the UI starts with (`UIConfig`), the folder fence (`Sandbox`), auth.
- `forms`: inputs generated from an options class, read back as the keys a user changed.
- `jobs`: long work as `tunelab` commands in their own processes, recorded on disk.
- `runs`: run folders read for status, progress, curves and summaries.
- `context`: what the tabs share; `app`: the page and `launch`.
- `tabs/`: one module per tab (data, train, runs, evaluate, chat, rag, compare, export).

Gradio is an optional extra: `pip install 'tunelab[ui]'`.
"""
