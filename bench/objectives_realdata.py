"""Real-data figures of the training objectives, each from a short run of the default model.

| stage | data (../shared/data) | run | figure |
|---|---|---|---|
| pt   | tinyshakespeare, last 10% of lines held out | LoRA, 80 steps of 8 blocks of 128 tokens | validation perplexity drop |
| rm   | hh_rlhf_harmless, 1,000 pairs: seeded 650 train / 350 held out | LoRA reward model, one epoch | held-out pairwise accuracy, lower end of its 95% Wilson interval |
| dpo  | the same split | LoRA policy, sigmoid loss, beta 0.1, one epoch | held-out reward accuracy (lower 95%) and mean margin of beta * log(pi / pi_ref) |
| ppo  | hh_rlhf_harmless prompts (the same held-out 350) | LoRA policy, the rm stage's reward model | held-out mean reward gain; final KL to the reference |
| grpo | gsm8k train (the first 1,064; 64 held-out questions) | LoRA policy, rewards `format` + 0.5 `has_answer`, 25 steps | share of greedy answers ending in `#### <number>`, after minus before |

Every stage is one `tunelab train` process (its own peak memory), with the settings in
STAGES below; results are kept in bench/objectives_results.json across runs, so a stage
can be rerun alone. ppo needs the rm stage's run.

    python bench/objectives_realdata.py                 # every stage, about 40 minutes on 2 CPU cores
    python bench/objectives_realdata.py --only pt,dpo   # some stages

It ends with the line
    pt_ppl_drop=<fraction> rm_acc_lo95=<x> dpo_acc_lo95=<x> dpo_margin=<x> ppo_reward_gain=<x> ppo_kl=<x> grpo_format_gain=<x>
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).with_name("objectives_results.json")
HH = DATA / "hh_rlhf_harmless" / "train.jsonl"
GSM8K_PROMPT = ("{prompt}\n\nSolve it step by step. End with the final answer alone on the last line, "
                "in the form #### <number>")

# 1,000 of the 2,000 hh pairs: 650 train, 350 held out (the issue asks for at least 300)
HH_SPLIT = [f"data.train={HH}", "data.limit=1000", "data.val_split=0.35"]

STAGES: dict[str, list[str]] = {
    "pt": ["objective=pt", "method=lora", f"data.train={DATA / 'tinyshakespeare' / 'input.txt'}",
           "data.val_split=0.1", "data.max_length=128", "train.batch_size=8", "train.lr=1e-3",
           "train.max_steps=80", "train.logging_steps=10"],
    "rm": ["objective=rm", "method=lora", *HH_SPLIT, "data.max_length=256", "train.batch_size=8", "train.lr=5e-4",
           "train.epochs=1", "train.logging_steps=10"],
    "dpo": ["objective=dpo", "method=lora", *HH_SPLIT, "data.max_length=256", "train.batch_size=8", "train.lr=3e-4",
            "train.epochs=1", "objective.beta=0.1", "train.logging_steps=10"],
    "ppo": ["objective=ppo", "method=lora", *HH_SPLIT, "data.max_length=256", "train.max_steps=30",
            "train.logging_steps=1"],
    "grpo": ["objective=grpo", "method=lora", f"data.train={DATA / 'gsm8k' / 'train.jsonl'}", "data.limit=1064",
             "data.val_split=0.06", "data.columns={question: prompt}", f"objective.prompt_template={GSM8K_PROMPT}",
             "objective.rewards=[format, has_answer]", "objective.reward_weights=[1.0, 0.5]",
             "objective.num_generations=4", "objective.max_completion_length=160", "objective.eval_prompts=64",
             "train.batch_size=8", "train.lr=2e-4", "train.max_steps=25", "train.logging_steps=1"],
}


def run_stage(name: str, out: Path, results: dict) -> dict:
    settings = [*STAGES[name], f"train.output_dir={out}", f"train.run_name={name}", "train.overwrite=true"]
    if name == "ppo":
        settings.append(f"objective.reward_model={out / 'rm'}")
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "tunelab.cli", "train", *sum((["--set", s] for s in settings), [])],
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {proc.returncode})")
    summary = json.loads((out / name / "summary.json").read_text())
    summary["bench_seconds"] = round(time.time() - start, 1)
    results[name] = summary
    RESULTS.write_text(json.dumps(results, indent=2))
    return summary


def figures(results: dict) -> dict:
    """The headline figures of the stages that have run (missing ones: nan)."""
    nan = float("nan")
    pt, rm, dpo, ppo, grpo = (results.get(k, {}) for k in ("pt", "rm", "dpo", "ppo", "grpo"))
    return {
        "pt_ppl_drop": pt.get("perplexity_drop", nan),
        "rm_acc_lo95": rm.get("accuracy_lo95", nan),
        "dpo_acc_lo95": dpo.get("reward_accuracy_lo95", nan),
        "dpo_margin": dpo.get("reward_margin", nan),
        "ppo_reward_gain": ppo.get("reward_gain", nan),
        "ppo_kl": ppo.get("kl_final", nan),
        "grpo_format_gain": (grpo["rewards_after"]["format"] - grpo["rewards_before"]["format"]) if grpo else nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(STAGES), help="comma-separated stages")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-objectives"))
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real data folder {DATA} is missing; this benchmark needs the shared datasets")
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in args.only.split(","):
        if name not in STAGES:
            raise SystemExit(f"unknown stage {name}; choose from {', '.join(STAGES)}")
        summary = run_stage(name, Path(args.out), results)
        print(f"{name}: {json.dumps({k: v for k, v in summary.items() if k != 'data'})}", flush=True)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures(results).items()))


if __name__ == "__main__":
    main()
