"""Data: a file's detected format, examples as the model sees them (learned tokens marked),
token lengths, truncation and bad records (what `tunelab data FILE` prints, drawn); and the file
cleaned or deduplicated (`tunelab data clean / dedup`) into the UI's folder."""

from __future__ import annotations

import json

import gradio as gr

from tunelab.config import DataConfig
from tunelab.data.curate.clean import CleanConfig
from tunelab.data.curate.dedup import DedupConfig
from tunelab.ui.context import Context, error_text
from tunelab.ui.forms import Form

SHOWN = 3  # examples rendered
FILE_TYPES = [".jsonl", ".json", ".csv", ".parquet", ".txt"]


def build(ctx: Context) -> None:
    with gr.Tab("Data", id="data"):
        gr.Markdown("A data file as training will read it: its format, a few examples rendered with the chat "
                    "template (tokens the loss is computed on highlighted), token lengths, truncation and bad "
                    "records.")
        with gr.Row():
            file = gr.Textbox(label="data file", info="a path inside the UI's folders, or upload one",
                              elem_id="data-file", scale=4)
            upload = gr.UploadButton("Upload", file_types=FILE_TYPES, elem_id="data-upload", scale=1)
        model = gr.Textbox(ctx.default_model, label="model", info="its tokenizer and chat template render the "
                           "examples", elem_id="data-model")
        with gr.Accordion("how records become examples", open=False):
            form = Form(DataConfig, "data", only=("format", "max_length", "train_on", "system_prompt", "skip_bad",
                                                   "columns", "label_names", "prompt_template"))
        inspect_button = gr.Button("Inspect", variant="primary", elem_id="data-inspect")
        error = gr.Markdown(elem_id="data-error")
        summary = gr.Markdown(elem_id="data-summary")
        examples = gr.HighlightedText(label=f"the first {SHOWN} examples (learned tokens highlighted)",
                                      combine_adjacent=True, color_map={"learned": "#7fd18b"},
                                      elem_id="data-examples")
        lengths = gr.Plot(label="token lengths", elem_id="data-lengths")
        bad = gr.Textbox(label="bad records", lines=4, elem_id="data-bad")
        with gr.Accordion("curate: clean and deduplicate (tunelab data clean / dedup)", open=False):
            gr.Markdown("The result is written to the UI's folder and becomes the file shown above; the input is "
                        "left as it is.")
            with gr.Row():
                with gr.Column():
                    clean_form = Form(CleanConfig, "clean")
                    clean_button = gr.Button("Clean", elem_id="data-clean")
                with gr.Column():
                    dedup_form = Form(DedupConfig, "dedup")
                    dedup_button = gr.Button("Deduplicate", elem_id="data-dedup")
            curated = gr.JSON(label="what the step did", elem_id="data-curated")

        upload.upload(lambda f: f, upload, file)
        n = len(clean_form.inputs)
        clean_button.click(lambda f, *v: curate(ctx, "clean", clean_form, f, v[:n]), [file, *clean_form.inputs],
                           [error, curated, file])
        m = len(dedup_form.inputs)
        dedup_button.click(lambda f, *v: curate(ctx, "dedup", dedup_form, f, v[:m]), [file, *dedup_form.inputs],
                           [error, curated, file])
        inspect_button.click(lambda *v: inspect(ctx, form, *v), [file, model, *form.inputs],
                             [error, summary, examples, lengths, bad])


def inspect(ctx: Context, form: Form, file: str, model: str, *values):
    from tunelab.data import build_sft
    from tunelab.errors import DataError
    from tunelab.models import load_tokenizer, resolve

    blank = ("", "", None, None, "")
    try:
        path = ctx.sandbox.path(file, "data file")
        cfg = DataConfig.load({**form.raw(values), "train": str(path), "val_split": 0.0}, "data")
        tokenizer = load_tokenizer(resolve(ctx.sandbox.model(model) or ctx.default_model))
        try:
            data = build_sft(cfg, tokenizer)
        except DataError as e:
            if "preference records" not in str(e):
                raise
            return ("", *_preference(path, cfg))
    except Exception as e:  # noqa: BLE001  shown on the page, the page lives on
        return (error_text(e), *blank[1:])
    return ("", _summary(data.stats), _highlighted(data.train[:SHOWN], tokenizer),
            _histogram([len(e["input_ids"]) for e in data.train], cfg.max_length), "\n".join(data.bad[:50]))


def curate(ctx: Context, step: str, form: Form, file: str, values):
    """Clean or deduplicate the file shown into the UI's folder; the result becomes the file shown."""
    from tunelab.data.curate.clean import clean_file
    from tunelab.data.curate.dedup import dedup_files

    try:
        path = ctx.sandbox.path(file, "data file")
        out = ctx.state / "data" / f"{path.name.removesuffix('.jsonl')}.{step}.jsonl"
        if step == "clean":
            result = clean_file(path, out, CleanConfig.load(form.raw(values), "clean"), force=True)
        else:
            result = dedup_files([path], out, DedupConfig.load(form.raw(values), "dedup"), force=True)
    except Exception as e:  # noqa: BLE001
        return error_text(e), None, gr.skip()
    return "", result, str(out)


def _summary(stats: dict) -> str:
    s = stats["train"]
    lines = [f"**format**: {stats['format']} · **examples**: {s['examples']} · **bad records skipped**: "
             f"{stats['bad_records']}",
             f"**tokens**: {s['tokens']:,} ({s['learned_tokens']:,} learned) · **length** min / median / p95 / max: "
             f"{s['min']} / {s['p50']} / {s['p95']} / {s['max']}",
             f"**truncated**: {s['truncated']} · **dropped** (nothing left to learn): {s['dropped']}"]
    return "  \n".join(lines)


def _highlighted(examples: list[dict], tokenizer) -> list[tuple[str, str | None]]:
    from tunelab.data.tokenize import IGNORE

    out: list[tuple[str, str | None]] = []
    for i, example in enumerate(examples):
        if i:
            out.append((f"\n\n── example {i + 1} ──\n\n", None))
        for token, label in zip(example["input_ids"], example["labels"]):
            out.append((tokenizer.decode([token]), "learned" if label != IGNORE else None))
    return out


def _histogram(lengths: list[int], limit: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.8), dpi=100)
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#4a7bd0")
    ax.axvline(limit, color="#c0392b", linestyle="--", label=f"max_length {limit}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def _preference(path, cfg: DataConfig):
    """Preference pairs are not rendered as one sequence: show their count and first records."""
    from tunelab.data.dataset import load_records

    loaded = load_records(str(path), cfg)
    first = "\n\n".join(json.dumps(r, ensure_ascii=False, indent=1)[:1500] for r in loaded.records[:SHOWN])
    summary = (f"**format**: {loaded.format} · **records**: {len(loaded.records)} · **bad records skipped**: "
               f"{len(loaded.bad)} (preference pairs train with rm, dpo, kto, orpo or simpo)")
    return summary, [(first, None)], None, "\n".join(loaded.bad[:50])
