"""`tunelab compare` on SST-2: every route of the label ladder within one budget, one report.

The shipped example task (examples/compare/sst2.yaml): the default model, 2,000 training
sentences, the 872 dev sentences as the test set, a 45-minute budget on this machine. The
routes: zero-shot label scoring, few-shot (4 random, 4 similar), probes (the model's features,
MiniLM's), a classification head, LoRA, IA3 and full fine-tuning, each in its own process.

The baseline every route is measured against is the best route; the recommendation is the
cheapest route a paired test (McNemar's exact test) cannot tell from it.

    python bench/compare_sst2.py                    # about 45 minutes on 2 CPU cores
    python bench/compare_sst2.py --budget 10 --limit-train 500 --limit-test 200   # a quick look

It ends with the line
    routes=<n> best=<route> best_acc=<x> recommended=<route> recommended_acc=<x> wall_s=<s> budget_s=<s>
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from report import header, save

ROOT = Path(__file__).resolve().parents[1]
FULL = {"budget": 45.0, "limit_train": 2000}  # a run below these (or with --limit-test) is saved as a quick one


def main() -> int:
    header()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=45.0, help="minutes for every route together")
    parser.add_argument("--limit-train", type=int, default=2000)
    parser.add_argument("--limit-test", type=int, default=None, help="default: all 872 dev sentences")
    parser.add_argument("--output-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = parser.parse_args()

    os.chdir(ROOT)  # the example names its data relative to the project root
    if not Path("../shared/data/sst2/dev.jsonl").is_file():
        print("../shared/data/sst2 is missing: this benchmark needs the shared SST-2 data", file=sys.stderr)
        return 1
    import tunelab
    from tunelab.compare.task import load_task
    from tunelab.hardware import bf16_native

    # the hardware line above names the CPU; routes train and score in the precision it allows
    native = bf16_native()
    print("precision auto: " + ("bf16 (native on this CPU)" if native else "fp32 (bfloat16 is emulated on this CPU)"))

    output = args.output_dir or tempfile.mkdtemp(prefix="compare-sst2-")
    settings = [f"constraints.budget_minutes={args.budget}", f"limit_train={args.limit_train}",
                f"output_dir={output}"] + ([f"limit_test={args.limit_test}"] if args.limit_test else [])
    task = load_task("examples/compare/sst2.yaml", settings)
    started = time.time()
    report = tunelab.compare(task)
    wall = time.time() - started
    print((report.folder / "report.md").read_text())
    rec = report.recommendation
    ok = [r for r in report.routes if r["status"] == "ok"]
    best, chosen = report.route(rec["best"]), report.route(rec["recommended"])
    cost = lambda r: r["train_s"] + r["infer_s"]  # noqa: E731
    close = 100 * (best["value"] - chosen["value"]) <= 2
    cheap = cost(chosen) < cost(best) / 10
    print(f"recommended within 2 points of the best: {close}; at under a tenth of its cost: {cheap} "
          f"({cost(chosen):.0f} s against {cost(best):.0f} s)")
    print(f"within the budget plus 10%: {wall <= 1.1 * task.constraints.budget_minutes * 60}")
    figures = {"routes": len(ok), "best": rec["best"], "best_acc": best["value"], "recommended": rec["recommended"],
               "recommended_acc": chosen["value"], "wall_s": wall, "budget_s": task.constraints.budget_minutes * 60,
               "details": {"routes": report.routes}}
    smaller = args.budget < FULL["budget"] or args.limit_train < FULL["limit_train"] or args.limit_test is not None
    save("compare_sst2", figures, quick=smaller)
    print(f"routes={len(ok)} best={rec['best']} best_acc={best['value']:.4f} recommended={rec['recommended']} "
          f"recommended_acc={chosen['value']:.4f} wall_s={wall:.0f} budget_s={figures['budget_s']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
