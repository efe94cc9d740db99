"""Every adaptation method on one task: SST-2 sentiment, the same data and budget for all.

Each method trains on the same seeded subset of ../shared/data/sst2/train.jsonl (default
2,000 sentences), one epoch, batch 16, and is scored on the whole dev set (872
sentences). The default model is SmolLM2-135M-Instruct; MiniLM (all-MiniLM-L6-v2, a
BERT-family encoder) runs with head and full as the encoder baseline.

* Methods that train weights beside a classification head run `objective: classify`.
* Prompt-style methods (prompt, prefix, ptuning) prepend virtual tokens to a language
  model and have no classification head: they run generative classification,
  `objective: sft` with the label names ("negative"/"positive") as answers, and are
  scored by ranking the two names.
* probe embeds the sentences with the frozen model (mean-pooled hidden states, or MiniLM
  sentence embeddings), caches them, and fits logistic regression. It runs twice; the
  second run (embeddings cached) gives probe_seconds.

Learning rates are per method (each method's usual range; see LR below); everything else
is the same. Every run is its own process, so peak RSS is the method's own.

Command (about 40 minutes on 2 CPU cores):

    python bench/methods_sst2.py                       # every method
    python bench/methods_sst2.py --only lora,probe --train-examples 200   # a quick look

It prints one Markdown table row per method and ends with the line
    lora_dev_acc=<x> probe_seconds=<s> methods=<n>
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from report import header, save

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
SMOL, MINILM = "smollm2-135m-instruct", "all-minilm-l6-v2"
LABEL_NAMES = ["data.label_names={0: negative, 1: positive}"]
GENERATIVE = ["objective=sft", "data.prompt_template=Is the sentiment of this movie review negative or positive?\n\n{text}"]

# row name -> (model, objective/method settings, learning rate)
RUNS: dict[str, tuple[str, list[str], float]] = {
    "head": (SMOL, ["objective=classify", "method=head"], 5e-3),
    "freeze (last 2 blocks)": (SMOL, ["objective=classify", "method=freeze"], 5e-4),
    "lora": (SMOL, ["objective=classify", "method=lora"], 1e-3),
    "lora + dora": (SMOL, ["objective=classify", "method=lora", "method.dora=true"], 1e-3),
    "lora + rslora": (SMOL, ["objective=classify", "method=lora", "method.rslora=true"], 5e-4),  # scale x4
    "lora + pissa": (SMOL, ["objective=classify", "method=lora", "method.init=pissa_niter_4"], 2e-4),
    "lora+ (ratio 16)": (SMOL, ["objective=classify", "method=lora", "method.lora_plus_ratio=16"], 5e-4),
    "qlora": (SMOL, ["objective=classify", "method=qlora"], 1e-3),
    "ia3": (SMOL, ["objective=classify", "method=ia3"], 5e-3),
    "adapter (houlsby)": (SMOL, ["objective=classify", "method=adapter"], 1e-3),
    "full": (SMOL, ["objective=classify", "method=full"], 3e-5),
    "prompt (generative)": (SMOL, GENERATIVE + ["method=prompt",
                            "method.init_text=Classify the sentiment of the review as negative or positive."], 3e-2),
    # without the reparameterisation MLP, random prefixes (N(0, 1) keys/values) wreck the model:
    # first loss 15.7, and the run ended at chance (50.8%); the paper trains through the MLP
    "prefix (generative)": (SMOL, GENERATIVE + ["method=prefix", "method.projection=true"], 2e-3),
    "ptuning (generative)": (SMOL, GENERATIVE + ["method=ptuning"], 1e-2),
    "probe (mean-pooled)": (SMOL, ["objective=classify", "method=probe"], 0.0),
    "probe (MiniLM embeddings)": (SMOL, ["objective=classify", "method=probe", f"method.embedder={MINILM}"], 0.0),
    "MiniLM head": (MINILM, ["objective=classify", "method=head"], 5e-2),
    "MiniLM full": (MINILM, ["objective=classify", "method=full"], 5e-5),
}


# Run order: the headline row first, then the rest; the table prints in RUNS order.
FIRST = ["lora", "probe (mean-pooled)", "probe (MiniLM embeddings)", "MiniLM head", "MiniLM full"]


def subset(n: int, seed: int, folder: Path) -> Path:
    rows = [json.loads(line) for line in (SST2 / "train.jsonl").read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    path = folder / f"sst2-train-{n}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    return path


def run(name: str, model: str, sets: list[str], lr: float, train: Path, out: Path, args) -> dict:
    """One method in its own process; returns its summary.json."""
    run_name = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    cmd = [sys.executable, "-m", "tunelab.cli", "train", "--set", f"model.name={model}",
           "--set", f"data.train={train}", "--set", f"data.validation={SST2 / 'dev.jsonl'}",
           "--set", "data.max_length=128", "--set", f"train.epochs={args.epochs}", "--set", "train.batch_size=16",
           "--set", f"train.lr={lr}", "--set", "train.warmup_ratio=0.06", "--set", "train.logging_steps=20",
           "--set", f"train.output_dir={out}", "--set", f"train.run_name={run_name}", "--set", "train.overwrite=true"]
    for s in sets + LABEL_NAMES:
        cmd += ["--set", s]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{name}: failed\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
        return {"failed": True}
    summary = json.loads((out / run_name / "summary.json").read_text())
    summary["process_s"] = round(time.perf_counter() - start, 1)
    return summary


def row(name: str, s: dict) -> str:
    if s.get("failed"):
        return f"| {name} | failed | | | | | |"
    acc = s.get("accuracy")
    tps = s.get("tokens_per_s")
    return (f"| {name} | {acc * 100:.1f} | {s['trainable_params']:,} | {s['wall_s']:.0f} | "
            f"{tps if tps is not None else '-'} | {s['peak_rss_mb']:,.0f} | {s['artifact_bytes']:,} |")


def main() -> None:
    header()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-examples", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--only", default="", help="comma-separated row names (or a prefix of them)")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench-sst2"))
    p.add_argument("--emulate-avx2", action="store_true",
                   help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = p.parse_args()
    if not SST2.is_dir():
        sys.exit(f"{SST2}: the shared SST-2 data is missing; this benchmark needs ../shared/data/sst2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = subset(args.train_examples, args.seed, out)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    names = [n for n in RUNS if not wanted or any(n.startswith(w) for w in wanted)]
    print(f"SST-2: {args.train_examples} train sentences (seed {args.seed}), {args.epochs:g} epoch(s), batch 16; "
          "dev 872 sentences\n", flush=True)
    table_head = ("| method | dev acc % | trainable params | wall s | train tokens/s | peak RSS MB | artifact bytes |\n"
                  "|---|---:|---:|---:|---:|---:|---:|")
    print(table_head, flush=True)
    saved = out / "results.json"  # rows of earlier runs into the same folder are kept (rerun one with --only)
    results = json.loads(saved.read_text()) if saved.is_file() else {}
    probe_seconds = results.get("probe (mean-pooled)", {}).get("cached_process_s")
    for name in sorted(names, key=lambda n: FIRST.index(n) if n in FIRST else len(FIRST)):
        model, sets, lr = RUNS[name]
        results[name] = run(name, model, sets, lr, train, out, args)
        if name.startswith("probe") and not results[name].get("failed"):
            again = run(name, model, sets, lr, train, out, args)  # embeddings cached now
            results[name]["cached_wall_s"] = again.get("wall_s")
            results[name]["cached_process_s"] = again.get("process_s")
            if name == "probe (mean-pooled)":
                probe_seconds = again.get("process_s")
        print(row(name, results[name]), flush=True)
        saved.write_text(json.dumps(results, indent=2))
    print("\n" + table_head)
    for name in (n for n in RUNS if n in results):
        print(row(name, results[name]))
    lora = results.get("lora", {}).get("accuracy")
    done = sum(1 for r in results.values() if not r.get("failed"))
    smaller = args.train_examples < 2000 or args.epochs < 1  # a quick look, not the full table
    save("methods_sst2", {"lora_dev_acc": lora, "probe_seconds": probe_seconds, "methods": done, "details": results},
         quick=smaller)
    print(f"\nlora_dev_acc={lora if lora is not None else 'nan'} "
          f"probe_seconds={probe_seconds if probe_seconds is not None else 'nan'} methods={done}")


if __name__ == "__main__":
    main()
