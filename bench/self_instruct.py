"""Self-Instruct end to end: the default model writes instruction data from the shipped seed tasks, then
LoRA SFT on seeds + generated records is compared with the same budget (steps, batch) on the seeds alone.

Measured with `tunelab eval` on the 252 user-oriented instructions of ../shared/data/self_instruct
(instruction and input as the prompt, the human-written output as the reference), scored by ROUGE-L.
Every step is a `tunelab` command; the synthesis resumes if the script is run again.

    python bench/self_instruct.py [--count 200] [--steps 60] [--limit N] [--out bench/runs-self-instruct]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import header, save  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "self_instruct"
SEEDS = Path(__file__).resolve().parents[1] / "src" / "tunelab" / "data" / "synth" / "seed_tasks.jsonl"


def tunelab(*args: str) -> str:
    print("$ tunelab " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"tunelab {args[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def last_json(text: str) -> dict:
    return json.loads(text[text.index("\n{") + 1:] if not text.startswith("{") else text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="kept records to generate")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps of each SFT run (the same budget)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate on the first N instructions only")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "runs-self-instruct"))
    args, _ = parser.parse_known_args()
    header()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is missing: the evaluation set comes from the shared data folder")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    synth_file = out / "synth.jsonl"
    summary = last_json(tunelab("data", "synth", "self-instruct", "-o", str(synth_file), "--count", str(args.count),
                                *(["--resume"] if synth_file.exists() else [])))
    print(json.dumps(summary, indent=2))

    seeds = SEEDS.read_text(encoding="utf-8")
    generated = "".join(json.dumps({k: v for k, v in json.loads(line).items() if k != "provenance"}) + "\n"
                        for line in synth_file.read_text(encoding="utf-8").splitlines())
    (out / "seeds.jsonl").write_text(seeds, encoding="utf-8")
    (out / "seeds+synth.jsonl").write_text(seeds + generated, encoding="utf-8")
    tasks = [json.loads(line) for line in (DATA / "user_oriented.jsonl").read_text(encoding="utf-8").splitlines()]
    (out / "user_oriented.jsonl").write_text("".join(
        json.dumps({"prompt": t["instruction"] + (f"\n\n{t['input']}" if t.get("input") else ""),
                    "answer": t["output"]}) + "\n" for t in tasks), encoding="utf-8")

    runs = {}
    for name, data in (("seeds", "seeds.jsonl"), ("synth", "seeds+synth.jsonl")):
        run = out / "runs" / f"sft-{name}"
        if not (run / "summary.json").exists():
            tunelab("train", "--method", "lora", "--set", f"data.train={out / data}", "--set", "data.val_split=0",
                    "--set", f"train.max_steps={args.steps}", "--set", "train.batch_size=8", "--set",
                    f"train.output_dir={out / 'runs'}", "--set", f"train.run_name=sft-{name}", "--set",
                    "train.overwrite=true", "--set", "train.predict=false")
        runs[name] = json.loads((run / "summary.json").read_text())
    report = last_json(tunelab("eval", "--model", "smollm2-135m-instruct", "--adapter",
                               f"seeds={out / 'runs' / 'sft-seeds'}", "--adapter", f"synth={out / 'runs' / 'sft-synth'}",
                               "--tasks", f"{out / 'user_oriented.jsonl'}:generate:rouge_l", "--max-new-tokens",
                               str(args.max_new_tokens), *(["--limit", str(args.limit)] if args.limit else []),
                               "--output-dir", str(out), "--name", "eval", "--overwrite"))
    results = json.loads((Path(report["folder"]) / "report.json").read_text())
    scores = {m: r["rouge_l"] for m, r in next(iter(results["tasks"].values()))["results"].items()}
    figures = {"kept": summary["kept"], "candidates": summary["candidates"], "dropped_share": summary["dropped_share"],
               "train_loss": {k: v["train_loss"] for k, v in runs.items()}, "rouge_l": scores,
               "evaluated": next(iter(results["tasks"].values()))["n"]}
    print(json.dumps(figures, indent=2))
    save("self_instruct", figures, quick=bool(args.limit))
    print(f"kept={summary['kept']} rouge_l_base={scores['base']:.4f} rouge_l_seeds={scores['seeds']:.4f} "
          f"rouge_l_synth={scores['synth']:.4f} synth_minus_seeds={scores['synth'] - scores['seeds']:+.4f}")


if __name__ == "__main__":
    main()
