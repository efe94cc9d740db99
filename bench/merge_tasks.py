"""Two specialists merged into one: each task's metric for each single run and each merge method.

The runs: the demo's requests-to-JSON LoRA run and a LoRA run on SST-2 sentiment, both on the
default model. They are merged by `tunelab merge` with mergekit (linear, SLERP, task arithmetic,
TIES, DARE-TIES; run folders given as models), by peft at the adapter level (cat, linear, TIES)
and into a two-expert mixture (mergekit-moe, hidden-state gates). Every model is scored on both
tasks: JSON field accuracy on the demo's 60 held-out requests (greedy) and accuracy on SST-2 dev
sentences (label scoring), each asked with its own task's system prompt.

    python bench/merge_tasks.py [--runs runs] [--sst2-dev 300]

Ends with one line of name=value pairs: each model's two scores and the best merge by the mean.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from report import header, save

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2"
SENTIMENT = "Classify the sentiment of the movie review sentence. Answer with one word: positive or negative."
LABELS = ["negative", "positive"]


def demo_run(runs: Path) -> Path:
    from tunelab.config import DEFAULT_MODEL, load_config
    from tunelab.demo.requests import make_examples, write_jsonl
    from tunelab.objectives import run

    if (runs / "demo-lora" / "adapter").is_dir():
        return runs / "demo-lora"
    data = runs / "demo-requests-to-json"
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(make_examples(400, seed=1), data / "train.jsonl")  # as `tunelab demo` trains it
    run(load_config(None, [f"model.name={DEFAULT_MODEL}", f"data.train={data / 'train.jsonl'}", "data.val_split=0.05",
                           "data.max_length=384", f"train.output_dir={runs}", "train.run_name=demo-lora",
                           "train.lr=1e-3", "train.batch_size=8", "method.name=lora", "method.r=16"]))
    return runs / "demo-lora"


def sst2_run(runs: Path, n: int = 320) -> Path:
    from tunelab.config import DEFAULT_MODEL, load_config
    from tunelab.objectives import run

    if (runs / "sst2-lora" / "adapter").is_dir():
        return runs / "sst2-lora"
    rows = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()[:n]]
    data = runs / "sst2-chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "system", "content": SENTIMENT}, {"role": "user", "content": r["text"]},
        {"role": "assistant", "content": LABELS[int(r["label"])]}]}) + "\n" for r in rows))
    run(load_config(None, [f"model.name={DEFAULT_MODEL}", f"data.train={data}", "data.val_split=0.05",
                           "data.max_length=128", f"train.output_dir={runs}", "train.run_name=sst2-lora",
                           "train.lr=1e-3", "train.batch_size=8", "method.name=lora", "method.r=16"]))
    return runs / "sst2-lora"


def merge_configs(demo: Path, sst2: Path) -> dict[str, dict]:
    """name -> the YAML `tunelab merge` takes (mergekit's own format, run folders as models)."""
    from tunelab.config import DEFAULT_MODEL

    both = lambda **p: [{"model": str(demo), "parameters": dict(p)}, {"model": str(sst2), "parameters": dict(p)}]
    return {
        "linear": {"merge_method": "linear", "models": both(weight=0.5), "dtype": "float32"},
        "slerp": {"merge_method": "slerp", "base_model": str(demo),
                  "models": [{"model": str(demo)}, {"model": str(sst2)}],
                  "parameters": {"t": 0.5}, "dtype": "float32"},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": DEFAULT_MODEL, "models": both(weight=1.0),
                            "dtype": "float32"},
        "ties": {"merge_method": "ties", "base_model": DEFAULT_MODEL, "models": both(weight=1.0, density=0.5),
                 "dtype": "float32"},
        "dare_ties": {"merge_method": "dare_ties", "base_model": DEFAULT_MODEL, "models": both(weight=1.0, density=0.5),
                      "dtype": "float32"},
        "adapter_cat": {"adapters": {"json": str(demo), "sst2": str(sst2)}, "weights": [1.0, 1.0],
                        "combination_type": "cat"},
        "adapter_linear": {"adapters": {"json": str(demo), "sst2": str(sst2)}, "weights": [0.5, 0.5],
                           "combination_type": "linear"},
        "adapter_ties": {"adapters": {"json": str(demo), "sst2": str(sst2)}, "weights": [1.0, 1.0],
                         "combination_type": "ties", "density": 0.5},
        "moe": {"base_model": DEFAULT_MODEL, "gate_mode": "hidden", "dtype": "float32", "experts": [
            {"source_model": str(demo), "positive_prompts": ["Remind me to pay the rent on Friday at 6pm",
                                                             "Schedule a meeting with Ana on Monday at 10:00"]},
            {"source_model": str(sst2), "positive_prompts": ["a gripping , beautifully acted film",
                                                             "the plot is dull and the jokes fall flat"]}]},
    }


def score(model, tokenizer, json_examples: list[dict], sst2: list[dict]) -> dict:
    from tunelab.eval.classification import label_accuracy
    from tunelab.eval.json_match import score_json
    from tunelab.infer import DecodingConfig, generate

    outputs = generate(model, tokenizer, [ex["messages"][:2] for ex in json_examples],
                       DecodingConfig(max_new_tokens=96), batch_size=30)
    fields = score_json(outputs, [ex["gold"] for ex in json_examples])
    sentiment = label_accuracy(model, tokenizer, [r["text"] for r in sst2], [int(r["label"]) for r in sst2], LABELS,
                               system=SENTIMENT)
    return {"json_field_acc": round(fields["field_accuracy"], 1), "sst2_acc": round(100 * sentiment["accuracy"], 1)}


def main() -> None:
    header()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "runs"))
    parser.add_argument("--sst2-dev", type=int, default=300)
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = parser.parse_args()
    from tunelab.compress.merge import merge
    from tunelab.config import DEFAULT_MODEL
    from tunelab.demo.requests import make_examples
    from tunelab.models import load_model, load_run
    from tunelab.hardware import compute_dtype

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    demo, sst2 = demo_run(runs), sst2_run(runs)
    json_examples = make_examples(60, seed=2)  # the demo's held-out requests
    dev = [json.loads(line) for line in (DATA / "dev.jsonl").read_text().splitlines()[:args.sst2_dev]]
    dtype = compute_dtype("auto")  # bfloat16 only where the CPU computes it natively
    results: dict[str, dict] = {}

    def measure(name: str, loaded) -> None:
        model, tokenizer = loaded
        results[name] = score(model.eval(), tokenizer, json_examples, dev)
        print(f"{name:<16} {results[name]}", flush=True)

    measure("base", load_model(DEFAULT_MODEL, dtype=dtype))
    measure("run: json", load_run(demo, dtype=dtype))
    measure("run: sst2", load_run(sst2, dtype=dtype))
    with tempfile.TemporaryDirectory(prefix="merge-bench-", dir=runs) as tmp:
        for name, config in merge_configs(demo, sst2).items():
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            start = time.time()
            out = merge(path, Path(tmp) / name)
            seconds = time.time() - start
            loader = load_run if (out / "config.yaml").is_file() else load_model
            measure(name, loader(str(out), dtype=dtype))
            results[name]["merge_s"] = round(seconds, 1)
    print(f"\n{time.time() - t0:.0f} s in all; dtype {str(dtype).removeprefix('torch.')}")
    print("| model | JSON field accuracy (%) | SST-2 accuracy (%) | mean |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['json_field_acc']} | {r['sst2_acc']} | {(r['json_field_acc'] + r['sst2_acc']) / 2:.1f} |")
    merges = {k: v for k, v in results.items() if k not in ("base", "run: json", "run: sst2")}
    best = max(merges, key=lambda k: merges[k]["json_field_acc"] + merges[k]["sst2_acc"])
    pairs = {f"{k.replace('run: ', 'run_')}_{task}": v[metric] for k, v in results.items()
             for task, metric in (("json", "json_field_acc"), ("sst2", "sst2_acc"))}
    pairs["best_merge"] = best
    save("merge_tasks", {**pairs, "details": {"dtype": str(dtype).removeprefix("torch."), "models": results}})
    print(" ".join(f"{k}={v}" for k, v in pairs.items()))


if __name__ == "__main__":
    sys.exit(main())
