"""Multiple choice by log-likelihood: tunelab against lm-evaluation-harness, same model, same questions.

Each set is a tunelab `choice` task over a local file; the harness runs the same file
through a task YAML that tunelab writes (`tunelab.eval.harness.choice_task_yaml`), with
its own command line (`lm_eval run --model hf ...`), and both accuracies are compared.

    python bench/eval_choice.py               # speed: 1,800 SST-2 questions x 2 endings, precision auto
    python bench/eval_choice.py --quick       # speed on 200 questions: about 1 minute
    python bench/eval_choice.py --agreement   # agreement: SST-2 dev (872) and a GSM8K 4-way set, fp32
    python bench/eval_choice.py --emulate-avx2 --quick   # as an AVX2-only CPU computes (bench/report.py):
                                                         # float32, 44 s measured

Speed mode runs in tunelab's auto precision (`compute_dtype("auto")`): bfloat16 where the CPU
computes it natively, float32 where bfloat16 would be emulated; both sides use that dtype.

Sets (from ../shared/data):
- sst2_1800: 1,800 sentences of the SST-2 train split (seeded), endings " negative" / " positive"
  (sst2_200 with --quick);
- sst2_dev: the 872 SST-2 dev sentences, the same two endings (the first 200 with --quick);
- gsm8k_choice: 300 GSM8K train problems (seeded), four numeric endings: the right answer and
  three answers of other problems, in seeded order (100 with --quick).

Speed mode times both in this process on the same model object: tunelab reading the file
and scoring it, against the harness's `simple_evaluate` (its data loading and scoring; its
task index is built before the clock starts). Agreement mode runs the harness's own command
line, which loads the model itself; its times there are the harness's
`total_evaluation_time_seconds` and tunelab's scoring, for information only.
Speed mode ends with the line (with --quick, seconds_1800q is the 200 questions' time scaled to 1,800)
    seconds_1800q=<s> ratio_vs_harness=<harness_s/tunelab_s> acc_diff_vs_harness=<max abs diff in points>
Agreement mode ends with (one line)
    sst2_dev_acc=<tunelab>/<harness> sst2_dev_acc_norm=... gsm8k_choice_acc=... gsm8k_choice_acc_norm=...
    max_diff_points=<x>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import header, save

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SST2_TEMPLATE = "{text}\nQuestion: Is this sentence positive or negative?\nAnswer:"
SPEED_QUESTIONS = {False: 1800, True: 200}  # by --quick
AGREEMENT_LIMITS = {"sst2_dev": 200, "gsm8k_choice": 100}  # --quick --agreement: the first N of each set


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_set(name: str, folder: Path, limit: int | None = None):
    """The TaskConfig of a named set (sst2_<N>: N seeded SST-2 train sentences), its file written into
    `folder`; `limit` keeps the first N questions of sst2_dev or gsm8k_choice."""
    from tunelab.eval.config import TaskConfig

    if name.startswith("sst2"):
        if name == "sst2_dev":
            rows = read_jsonl(DATA / "sst2" / "dev.jsonl")[:limit]
        else:
            rows = read_jsonl(DATA / "sst2" / "train.jsonl")
            rows = random.Random(0).sample(rows, int(name.split("_")[1]))
        file = write_jsonl([{"text": r["text"], "label": r["label"]} for r in rows], folder / f"{name}.jsonl")
        return TaskConfig(name=name, kind="choice", file=str(file), template=SST2_TEMPLATE,
                          choices=["negative", "positive"], gold_field="label")
    if name == "gsm8k_choice":
        rows = read_jsonl(DATA / "gsm8k" / "train.jsonl")
        rng = random.Random(0)
        picked = rng.sample(range(len(rows)), 300)[:limit]
        answers = [r["answer"].split("####")[-1].strip().replace(",", "") for r in rows]
        out = []
        for i in picked:
            others = list(dict.fromkeys(a for a in rng.sample(answers, 20) if a != answers[i]))[:3]
            choices = others + [answers[i]]
            rng.shuffle(choices)
            out.append({"question": rows[i]["question"], "choices": choices, "gold": choices.index(answers[i])})
        file = write_jsonl(out, folder / f"{name}.jsonl")
        return TaskConfig(name=name, kind="choice", file=str(file), template="Question: {question}\nAnswer:")
    raise SystemExit(f"unknown set {name}")


def run_tunelab(task, model, tokenizer, batch_size: int) -> tuple[dict, float]:
    """tunelab's figures and seconds: reading the task file and scoring it."""
    from tunelab.eval.choice import choice_metrics, ending_loglikelihoods
    from tunelab.eval.tasks import choice_questions

    t0 = time.perf_counter()
    questions = choice_questions(task)
    lls = ending_loglikelihoods(model, tokenizer, questions, batch_size)
    return choice_metrics(lls, questions), time.perf_counter() - t0


def write_harness_task(task, folder: Path) -> tuple[str, Path]:
    from tunelab.eval.harness import choice_task_yaml

    tasks_dir = folder / f"harness_{task.name}"
    tasks_dir.mkdir(exist_ok=True)
    name = f"tunelab_{task.name}"
    (tasks_dir / f"{name}.yaml").write_text(choice_task_yaml(task, name), encoding="utf-8")
    return name, tasks_dir


def run_harness_api(task, model, tokenizer, batch_size: int, folder: Path) -> tuple[dict, float]:
    """The harness's figures and seconds through its API, on the same model object in this process:
    its task index is built before the clock starts; the clock covers its data loading and scoring."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    name, tasks_dir = write_harness_task(task, folder)
    manager = TaskManager(include_path=str(tasks_dir))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    t0 = time.perf_counter()
    out = lm_eval.simple_evaluate(model=lm, tasks=[name], task_manager=manager, bootstrap_iters=0)
    seconds = time.perf_counter() - t0
    return {k.split(",")[0]: v for k, v in out["results"][name].items() if "stderr" not in k}, seconds


def run_harness_cli(task, model_dir: Path, dtype: str, batch_size: int, folder: Path) -> tuple[dict, float]:
    """The harness's own command line on the same file; (its figures, its evaluation seconds)."""
    harness_name, tasks_dir = write_harness_task(task, folder)
    out = folder / f"harness_out_{task.name}"
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "run", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype={dtype}", "--tasks", harness_name,
           "--include_path", str(tasks_dir), "--batch_size", str(batch_size), "--device", "cpu",
           "--output_path", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = json.loads(max(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime).read_text())
    figures = {k.split(",")[0]: v for k, v in result["results"][harness_name].items() if "stderr" not in k}
    return figures, float(result["total_evaluation_time_seconds"])


def speed_dtype():
    """tunelab's auto precision for scoring, and a few words on why."""
    import torch

    from tunelab.hardware import compute_dtype

    if compute_dtype("auto") == torch.bfloat16:
        return torch.bfloat16, "bfloat16", "bfloat16 (native on this CPU)"
    return torch.float32, "float32", "float32 (bfloat16 is emulated on this CPU)"


def main() -> None:
    header()
    parser = argparse.ArgumentParser()
    parser.add_argument("--agreement", action="store_true", help="SST-2 dev and GSM8K choice in fp32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="speed: 200 questions instead of 1,800; agreement: "
                        "the first 200 SST-2 dev and 100 GSM8K questions (about a minute each)")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} is missing: this benchmark needs the shared datasets")
    import torch

    from tunelab.models import load_model, resolve

    model_dir = resolve("smollm2-135m-instruct")
    n_speed = SPEED_QUESTIONS[args.quick]
    sets = ["sst2_dev", "gsm8k_choice"] if args.agreement else [f"sst2_{n_speed}"]
    if args.agreement:  # exact comparison: both sides in float32
        dtype, dtype_name, why = torch.float32, "float32", "float32 (agreement: exact comparison)"
    else:
        dtype, dtype_name, why = speed_dtype()
    print(f"dtype: {why}", flush=True)
    line, diffs, times, sets_seen = [], [], {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, tokenizer = load_model(str(model_dir), dtype=dtype)
        for name in sets:
            task = make_set(name, folder, AGREEMENT_LIMITS.get(name) if args.quick else None)
            ours, ours_s = run_tunelab(task, model, tokenizer, args.batch_size)
            if args.agreement:  # the harness's own command line, its own model loading
                theirs, theirs_s = run_harness_cli(task, model_dir, dtype_name, args.batch_size, folder)
            else:  # timing: the same model object (so the same dtype), scoring only
                theirs, theirs_s = run_harness_api(task, model, tokenizer, args.batch_size, folder)
            times[name] = (ours_s, theirs_s)
            sets_seen[name] = {"questions": ours["n"], "tunelab_s": ours_s, "harness_s": theirs_s,
                               **{f"{m}_{side}": r[m] for m in ("acc", "acc_norm", "acc_bytes")
                                  for side, r in (("tunelab", ours), ("harness", theirs))}}
            print(f"{name}: {ours['n']} questions, {dtype_name}")
            print(f"  {'':10} {'tunelab':>9} {'harness':>9}")
            for metric in ("acc", "acc_norm", "acc_bytes"):
                diff = abs(ours[metric] - theirs[metric]) * 100
                diffs.append(diff)
                print(f"  {metric:10} {ours[metric]:9.4f} {theirs[metric]:9.4f}   diff {diff:.2f} points")
                if metric != "acc_bytes":
                    line.append(f"{name}_{metric}={ours[metric]:.4f}/{theirs[metric]:.4f}")
            print(f"  seconds    {ours_s:9.1f} {theirs_s:9.1f}   harness/tunelab {theirs_s / ours_s:.2f}x")
    details = {"dtype": dtype_name, "sets": sets_seen}
    if args.agreement:
        pairs = dict(pair.split("=") for pair in line)  # "<tunelab>/<harness>", as printed
        save("eval_choice", {**pairs, "max_diff_points": max(diffs), "details": details}, quick=args.quick,
             tag="agreement")
        print(" ".join(line + [f"max_diff_points={max(diffs):.2f}"]))
    else:
        ours_s, theirs_s = times[sets[0]]
        seconds = ours_s * 1800 / n_speed  # the key names 1,800 questions; --quick scales its 200 to that
        if args.quick:
            print(f"seconds_1800q: {ours_s:.1f} s for {n_speed} questions, scaled to 1,800")
        save("eval_choice", {"seconds_1800q": seconds, "ratio_vs_harness": theirs_s / ours_s,
                             "acc_diff_vs_harness": max(diffs[:2]), "details": details}, quick=args.quick)
        print(f"seconds_1800q={seconds:.1f} ratio_vs_harness={theirs_s / ours_s:.2f} "
              f"acc_diff_vs_harness={max(diffs[:2]):.2f}")

if __name__ == "__main__":
    main()
