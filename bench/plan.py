"""How close `tunelab plan` comes: predicted against measured peak RSS and training time.

Each config below is planned (`tunelab plan --json`, which measures its probe once and
caches it), then trained (`tunelab train`, which records the prediction and the outcome
in summary.json); both are fresh processes, as a user runs them. Every config is the
default model on real data from ../shared/data, a few optimizer steps each:

| config | data | method | objective | max length | batch |
|---|---|---|---|---|---|
| lora-256-b4 | self_instruct seed tasks | lora r16 | sft | 256 | 4 |
| lora-256-b8 | self_instruct seed tasks | lora r16 | sft | 256 | 8 |
| full-128-b4 | self_instruct seed tasks | full | sft | 128 | 4 |
| freeze-256-b4 | self_instruct seed tasks | freeze (last 4 blocks) | sft | 256 | 4 |
| qlora-256-b4 | self_instruct seed tasks | qlora r16 | sft | 256 | 4 |
| prompt-256-b4 | self_instruct seed tasks | prompt tuning (20 tokens) | sft | 256 | 4 |
| classify-lora-64-b8 | sst2 | lora r16 | classify | 64 | 8 |
| classify-probe | sst2 | probe (the model's own features) | classify | 64 | 32 |
| dpo-lora-256-b2 | hh_rlhf_harmless | lora r16 | dpo | 256 | 2 |

Errors are predicted / measured - 1 (measured time: the Trainer's train_runtime).

    python bench/plan.py                 # every config, about 10 minutes on 2 CPU cores
    python bench/plan.py --only lora-256-b4,dpo-lora-256-b2

It ends with the line
    plan_rss_max_err=<fraction> plan_time_max_err=<fraction> configs=<n>
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from report import header, save

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SEED_TASKS = DATA / "self_instruct" / "seed_tasks.jsonl"
SST2 = DATA / "sst2" / "train.jsonl"
HH = DATA / "hh_rlhf_harmless" / "train.jsonl"

SFT = [f"data.train={SEED_TASKS}", "data.limit=160"]
CONFIGS: dict[str, list[str]] = {
    "lora-256-b4": [*SFT, "method=lora", "data.max_length=256", "train.batch_size=4"],
    "lora-256-b8": [*SFT, "method=lora", "data.max_length=256", "train.batch_size=8"],
    "full-128-b4": [*SFT, "method=full", "data.max_length=128", "train.batch_size=4", "train.lr=1e-5"],
    "freeze-256-b4": [*SFT, "method=freeze", "method.last_n_layers=4", "data.max_length=256", "train.batch_size=4"],
    "qlora-256-b4": [*SFT, "method=qlora", "data.max_length=256", "train.batch_size=4"],
    "prompt-256-b4": [*SFT, "method=prompt", "data.max_length=256", "train.batch_size=4", "train.lr=3e-3"],
    "classify-lora-64-b8": [f"data.train={SST2}", "data.limit=400", "objective=classify", "method=lora",
                            "data.max_length=64", "train.batch_size=8"],
    "classify-probe": [f"data.train={SST2}", "data.limit=400", "objective=classify", "method=probe",
                       "method.cache=false", "data.max_length=64", "train.batch_size=32"],
    "dpo-lora-256-b2": [f"data.train={HH}", "data.limit=120", "objective=dpo", "method=lora", "data.max_length=256",
                        "train.batch_size=2"],
}
STEPS = 8


def tunelab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})


def run(name: str, settings: list[str], out: Path) -> dict:
    common = [*settings, f"train.output_dir={out}", f"train.run_name={name}", f"train.max_steps={STEPS}",
              "train.overwrite=true", "data.val_split=0.1", "train.eval_steps=0"]
    sets = [x for s in common for x in ("--set", s)]
    planned = tunelab("plan", *sets, "--json")
    if planned.returncode:
        raise SystemExit(f"{name}: tunelab plan failed:\n{planned.stderr[-2000:]}")
    trained = tunelab("train", *sets)
    if trained.returncode:
        raise SystemExit(f"{name}: tunelab train failed:\n{trained.stderr[-2000:]}")
    summary = json.loads((out / name / "summary.json").read_text())
    plan = summary["plan"]
    # a probe's time is embedding plus fitting (what its plan predicts); training's is the Trainer's runtime
    measured_time = summary.get("train_runtime_s") or (summary.get("embed_seconds", 0) + summary.get("fit_seconds", 0))
    return {"config": name, "rss_pred": plan["peak_mb"], "rss_meas": summary["peak_rss_mb"],
            "time_pred": plan["seconds_total"], "time_meas": measured_time,
            "rss_err": plan["peak_mb"] / summary["peak_rss_mb"] - 1,
            "time_err": plan["seconds_total"] / measured_time - 1,
            "source": plan["throughput_source"]}


def main() -> None:
    header()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated config names")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: the shared data folder is missing; this benchmark reads real data from it")
    names = [n for n in CONFIGS if not args.only or n in args.only.split(",")]
    from tunelab.hardware import bf16_native

    # the hardware line above names the CPU; the runs train (and the plan predicts) in the precision it allows
    native = bf16_native()
    print("precision auto: " + ("bf16 (native on this CPU)" if native else "fp32 (bfloat16 is emulated on this CPU)"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = run(name, CONFIGS[name], Path(tmp))
            rows.append(row)
            print(f"{name:<22} rss {row['rss_pred']:>7.0f} / {row['rss_meas']:>7.0f} MiB ({row['rss_err']:+.1%})   "
                  f"time {row['time_pred']:>7.1f} / {row['time_meas']:>7.1f} s ({row['time_err']:+.1%})", flush=True)
    print("\n| config | peak RSS predicted | measured | error | train time predicted | measured | error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['rss_pred']:.0f} MiB | {r['rss_meas']:.0f} MiB | {r['rss_err']:+.1%} | "
              f"{r['time_pred']:.1f} s | {r['time_meas']:.1f} s | {r['time_err']:+.1%} |")
    rss = max(abs(r["rss_err"]) for r in rows)
    time_err = max(abs(r["time_err"]) for r in rows)
    save("plan", {"plan_rss_max_err": rss, "plan_time_max_err": time_err, "configs": len(rows), "details": rows})
    print(f"plan_rss_max_err={rss:.3f} plan_time_max_err={time_err:.3f} configs={len(rows)}")


if __name__ == "__main__":
    main()
