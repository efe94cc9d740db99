"""Real-data figures of the training objectives, each from a short run of the default model.

| stage | data (../shared/data) | run | figure |
|---|---|---|---|
| pt   | tinyshakespeare, last 10% of lines held out | LoRA, 80 steps of 8 blocks of 128 tokens | validation perplexity drop |
| rm   | hh_rlhf_harmless, 800 pairs: seeded 500 train / 300 held out | LoRA reward model, one epoch | held-out pairwise accuracy, lower end of its 95% Wilson interval |
| dpo  | the same split | LoRA policy, sigmoid loss, beta 0.1, one epoch | held-out reward accuracy (lower 95%) and mean margin of beta * log(pi / pi_ref) |
| ppo  | hh_rlhf_harmless prompts (32 of the same held-out 300; prompts cut to their last 64 tokens) | LoRA policy, the rm stage's reward model, 16 iterations of 16 prompts x 32 new tokens, 2 PPO epochs | held-out mean reward gain; final KL to the reference |
| grpo | gsm8k train (the first 1,064; 48 held-out questions) | LoRA policy, rewards `format` + 0.5 `has_answer`, 20 steps of 4 questions x 4 answers | share of greedy answers ending in `#### <number>`, after minus before |

Every stage is one `tunelab train` process (its own peak memory), with the settings in
STAGES below; results are kept in bench/objectives_results.json across runs, so a stage
can be rerun alone. ppo needs the rm stage's run.

    python bench/objectives_realdata.py                 # every stage, about an hour on 2 CPU cores
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

from report import header, save

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = Path(__file__).with_name("objectives_results.json")
HH = DATA / "hh_rlhf_harmless" / "train.jsonl"
GSM8K_PROMPT = "{prompt}\n\nGive only the final answer, in the form #### <number>"

# 800 of the 2,000 hh pairs: 500 train, 300 held out
HH_SPLIT = [f"data.train={HH}", "data.limit=800", "data.val_split=0.375"]

STAGES: dict[str, list[str]] = {
    "pt": ["objective=pt", "method=lora", f"data.train={DATA / 'tinyshakespeare' / 'input.txt'}",
           "data.val_split=0.1", "data.max_length=128", "train.batch_size=8", "train.lr=1e-3",
           "train.max_steps=80", "train.logging_steps=10"],
    "rm": ["objective=rm", "method=lora", *HH_SPLIT, "data.max_length=256", "train.batch_size=8", "train.lr=5e-4",
           "train.epochs=1", "train.logging_steps=10"],
    "dpo": ["objective=dpo", "method=lora", *HH_SPLIT, "data.max_length=256", "train.batch_size=8", "train.lr=3e-4",
            "train.epochs=1", "objective.beta=0.1", "train.logging_steps=10"],
    "ppo": ["objective=ppo", "method=lora", *HH_SPLIT, "data.max_length=64", "train.max_steps=16", "train.lr=3e-4",
            "objective.ppo_epochs=2", "objective.eval_prompts=32", "objective.eval_every=8", "train.logging_steps=1"],
    "grpo": ["objective=grpo", "method=lora", f"data.train={DATA / 'gsm8k' / 'train.jsonl'}", "data.limit=1064",
             "data.val_split=0.06", "data.columns={question: prompt}", f"objective.prompt_template={GSM8K_PROMPT}",
             "objective.rewards=[format, has_answer]", "objective.reward_weights=[1.0, 0.5]",
             "objective.num_generations=4", "objective.max_completion_length=64", "objective.temperature=0.7",
             "objective.eval_prompts=48", "train.batch_size=16", "train.lr=3e-4", "train.max_steps=20",
             "train.logging_steps=1"],
}


def run_stage(name: str, out: Path, results: dict, collect: bool = False) -> dict:
    """Run one stage as its own `tunelab train` process (or, with `collect`, read the
    summary of a run of it that already finished in `out`) and keep its summary."""
    settings = [*STAGES[name], f"train.output_dir={out}", f"train.run_name={name}", "train.overwrite=true"]
    if name == "ppo":
        settings.append(f"objective.reward_model={out / 'rm'}")
    start = time.time()
    if not collect:
        command = [sys.executable, "-m", "tunelab.cli", "train", *sum((["--set", s] for s in settings), [])]
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            raise SystemExit(f"stage {name} failed")
    if not (out / name / "summary.json").is_file():
        raise SystemExit(f"stage {name}: no finished run in {out / name}")
    summary = json.loads((out / name / "summary.json").read_text())
    summary["bench_seconds"] = summary["wall_s"] if collect else round(time.time() - start, 1)
    if RESULTS.is_file():  # stages may run in two processes at once: keep what the other wrote
        results.update({k: v for k, v in json.loads(RESULTS.read_text()).items() if k != name})
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
    header()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(STAGES), help="comma-separated stages")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-objectives"))
    parser.add_argument("--collect", action="store_true",
                        help="do not train: read the summaries of stage runs already finished in --out")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"real data folder {DATA} is missing; this benchmark needs the shared datasets")
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for name in args.only.split(","):
        if name not in STAGES:
            raise SystemExit(f"unknown stage {name}; choose from {', '.join(STAGES)}")
        summary = run_stage(name, Path(args.out), results, args.collect)
        print(f"{name}: {json.dumps({k: v for k, v in summary.items() if k != 'data'})}", flush=True)
    headline = figures(results)
    stages = {name: {k: v for k, v in summary.items() if k != "data"} for name, summary in results.items()}
    save("objectives_realdata", {**headline, "details": stages})
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in headline.items()))


if __name__ == "__main__":
    main()
