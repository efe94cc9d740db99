"""The main job: LoRA SFT of the default model on the requests-to-JSON task, before vs after.

Makes the task's data, measures the base model zero-shot on the held-out split, trains a
LoRA adapter, measures again, and prints a before/after table with example outputs.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunelab.config import DEFAULT_MODEL, load_config
from tunelab.demo.requests import make_examples, write_jsonl
from tunelab.eval.json_match import score_json
from tunelab.infer import DecodingConfig, generate
from tunelab.models import load_model, load_run
from tunelab.hardware import compute_dtype


def evaluate(model, tokenizer, examples: list[dict]) -> tuple[dict, list[str]]:
    """Greedy answers for the held-out requests, scored against the gold records."""
    prompts = [ex["messages"][:2] for ex in examples]
    outputs = generate(model, tokenizer, prompts, DecodingConfig(max_new_tokens=96), batch_size=32)
    return score_json(outputs, [ex["gold"] for ex in examples]), outputs


def run_demo(output_dir: str = "runs", n_train: int = 400, n_test: int = 60, epochs: float = 1.0,
             model: str = DEFAULT_MODEL, console: Console | None = None) -> dict:
    """Run the demo end to end; returns {"before": metrics, "after": metrics, "summary": run summary}."""
    console = console or Console()
    t0 = time.time()
    folder = Path(output_dir) / "demo-requests-to-json"
    folder.mkdir(parents=True, exist_ok=True)
    train, test = make_examples(n_train, seed=1), make_examples(n_test, seed=2)
    write_jsonl(train, folder / "train.jsonl")

    console.rule("1/3  base model, zero-shot, on the held-out requests")
    dtype = compute_dtype("auto")  # bf16 inference where the CPU/GPU has it: several times faster
    base, tokenizer = load_model(model, dtype=dtype)
    before, before_out = evaluate(base, tokenizer, test)
    del base

    console.rule("2/3  LoRA SFT")
    cfg = load_config(None, [
        f"model.name={model}", f"data.train={folder / 'train.jsonl'}", "data.val_split=0.05", "data.max_length=384",
        f"train.output_dir={output_dir}", "train.run_name=demo-lora", "train.overwrite=true",
        f"train.epochs={epochs}", "train.lr=1e-3", "train.batch_size=8", "method.name=lora", "method.r=16",
    ])
    from tunelab.objectives import run

    summary = run(cfg)

    console.rule("3/3  tuned model on the same held-out requests")
    tuned, tokenizer = load_run(Path(output_dir) / "demo-lora", dtype=dtype)
    after, after_out = evaluate(tuned, tokenizer, test)

    table = Table(title=f"requests -> JSON, {n_test} held-out requests (greedy)")
    table.add_column("metric")
    table.add_column("base zero-shot", justify="right")
    table.add_column("LoRA-tuned", justify="right")
    for key in before:
        table.add_row(key, f"{before[key]:.1f}%", f"{after[key]:.1f}%")
    console.print(table)
    for ex, b, a in list(zip(test, before_out, after_out))[:3]:
        console.print(f"[bold]request:[/bold] {ex['messages'][1]['content']}")
        console.print(f"  base:  {b[:160]!r}", markup=False)
        console.print(f"  tuned: {a[:160]!r}", markup=False)
    console.print(f"trained {summary['tokens_trained']:,} tokens at {summary['tokens_per_s']:.0f} tokens/s; "
                  f"run folder {Path(output_dir) / 'demo-lora'}; total {time.time() - t0:.0f} s")
    return {"before": before, "after": after, "summary": summary}
