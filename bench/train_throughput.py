"""Training throughput: tunelab's `sft` + `lora` defaults against trl's SFTTrainer, on real data.

What it measures, in one process, on the default model (SmolLM2-135M-Instruct) and the
first 256 GSM8K train examples in chat form ({user: question, assistant: answer}), one
epoch, batch 8, max length 512, seed 42, lr 2e-4 cosine with 3% warmup (tunelab's
defaults, given to trl too so the losses are comparable):

  a          tunelab `sft` + `lora` with its defaults (r=16, alpha=32, all-linear,
             precision auto = bf16 where the CPU computes it natively, else fp32, group_by_length)
  b          trl SFTTrainer + peft LoraConfig of the same rank, alpha and targets, set up
             as the trl docs do (SFTConfig defaults, so gradient checkpointing on), float32
             (bf16=False), no packing
  c_nopack   as b with bf16=True (where bf16 is native; elsewhere it runs fp32, as the table says)
  c_pack     as b with bf16=True, packing=True (trl's default "bfd" strategy; same bf16 rule)
  (c)        the faster of c_nopack and c_pack
  x          (informational, not in the default run) as c_nopack with gradient
             checkpointing off: trl without its slowest default

Tokens are the real (non-padding) tokens of the data: tunelab's trainer sums the
attention masks of its batches; for trl they are summed from the tokenized (or packed)
training set trl prepared. Time is the Trainer's own train_runtime (trainer.train() only;
model loading and data preparation excluded). Loss is TrainOutput.training_loss (mean over
the epoch).

Loss masking: both learn only the assistant's answer. tunelab labels the answer tokens and
the <|im_end|> that ends them (its default data.train_on=assistant). trl gets the same
conversations as conversational prompt/completion records ({"prompt": [user],
"completion": [assistant]}), for which SFTConfig's completion_only_loss defaults to on:
it labels the tokens after "<|im_start|>assistant\\n", i.e. the answer, <|im_end|> and the
template's trailing "\\n" (one extra, near-certain token per example; trl's documented
assistant_only_loss needs a template with {% generation %} markers, which SmolLM2's lacks).

Command (about 30 minutes on 2 CPU cores):

    python bench/train_throughput.py                          # the full spec
    python bench/train_throughput.py --quick                  # a, b on 16 examples, max length 256: about 1 minute
    python bench/train_throughput.py --emulate-avx2 --quick   # as an AVX2-only CPU computes (bench/report.py):
                                                              # all float32, about 1.5 minutes

The last line printed is
    ratio_vs_trl_default=<a/b> ratio_vs_trl_tuned=<a/c> loss_rel_diff=<|loss_a-loss_b|/loss_b>
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import header, save

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
ALL_VARIANTS = ("a", "b", "c_nopack", "c_pack", "x")
FULL = {"examples": 256, "variants": "a,b,c", "max_length": 512, "wait_idle": 300}
QUICK = {"examples": 16, "variants": "a,b", "max_length": 256, "wait_idle": 0}  # the same comparison, smaller


@functools.cache
def trl_bf16() -> bool:
    """Whether the trl "bf16" variants ask for bf16: only where the CPU computes it natively (emulated, it
    would run 70-600x slower than float32, which measures the emulation, not trl)."""
    from tunelab.hardware import bf16_native

    return bf16_native()


def labels() -> dict[str, str]:
    half = "trl bf16" if trl_bf16() else "trl fp32 (bf16 not native)"
    return {"a": "tunelab sft+lora defaults", "b": "trl fp32, no packing", "c_nopack": f"{half}, no packing",
            "c_pack": f"{half}, packing", "x": f"{half}, no packing, no grad ckpt"}


def code_version() -> str:
    """The commit this tunelab checkout is at (with -dirty for uncommitted changes), for the record."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_ticks() -> tuple[int, int, float]:
    """(busy, total) clock ticks of the whole machine from /proc/stat, and this process's CPU seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    own = os.times()
    return sum(v) - v[3] - v[4], sum(v), own.user + own.system


def others_share(before: tuple, after: tuple) -> float:
    """Fraction of the machine's CPU capacity that other processes used between two cpu_ticks()."""
    hz = os.sysconf("SC_CLK_TCK")
    busy, total = after[0] - before[0], after[1] - before[1]
    return max(0.0, busy - (after[2] - before[2]) * hz) / max(total, 1)


def wait_for_quiet(limit_s: float, threshold: float = 0.15) -> float:
    """Wait (up to limit_s) until other processes use < threshold of the CPU over 10 s; returns the last share."""
    deadline, share = time.time() + limit_s, 0.0
    while True:
        before = cpu_ticks()
        time.sleep(10 if limit_s > 0 else 0.5)
        share = others_share(before, cpu_ticks())
        if share < threshold or time.time() >= deadline:
            return share
        print(f"    waiting: other processes use {share:.0%} of the CPU", flush=True)


def write_chat_jsonl(n: int, path: Path) -> list[list[dict]]:
    """First `n` GSM8K train records as chat messages, written to `path` (JSONL); returns them."""
    if not DATA.is_file():
        sys.exit(f"{DATA} not found: this benchmark needs the shared real data (../shared/data/gsm8k/train.jsonl "
                 "beside the project root)")
    conversations = []
    with DATA.open(encoding="utf-8") as f:
        for line in f:
            if len(conversations) == n:
                break
            r = json.loads(line)
            conversations.append([{"role": "user", "content": r["question"]},
                                  {"role": "assistant", "content": r["answer"]}])
    with path.open("w", encoding="utf-8") as f:
        for messages in conversations:
            f.write(json.dumps({"messages": messages}) + "\n")
    return conversations


def run_tunelab(data_file: Path, work: Path, args) -> dict:
    from tunelab import train
    from tunelab.config import DEFAULT_MODEL, load_config

    summary = train(load_config(None, [
        f"model.name={DEFAULT_MODEL}", f"data.train={data_file}", "data.val_split=0",
        f"data.max_length={args.max_length}", f"train.output_dir={work / 'runs'}", "train.run_name=bench",
        "train.overwrite=true", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
        "method.name=lora",
    ]))
    return {"tokens": summary["tokens_trained"], "runtime_s": summary["train_runtime_s"],
            "loss": summary["train_loss"]}


def run_trl(conversations: list[list[dict]], work: Path, args, bf16: bool, packing: bool,
            gradient_checkpointing: bool = True) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from tunelab.config import DEFAULT_MODEL, TrainConfig
    from tunelab.methods.lora import Config as LoraDefaults
    from tunelab.models import resolve

    t, lora = TrainConfig(), LoraDefaults()  # tunelab's defaults, so both sides optimise the same way
    dataset = Dataset.from_list([{"prompt": m[:1], "completion": m[1:]} for m in conversations])
    config = SFTConfig(
        output_dir=str(work / "trl"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, learning_rate=t.lr, lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        seed=t.seed, data_seed=t.seed, bf16=bf16, packing=packing,
        completion_only_loss=True,  # the default for prompt/completion data; explicit for the record
        gradient_checkpointing=gradient_checkpointing,  # trl's default is True
        use_cpu=True, report_to="none", save_strategy="no", logging_steps=5, disable_tqdm=True,
    )
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=str(resolve(DEFAULT_MODEL)), args=config,
                         train_dataset=dataset, peft_config=peft_config)
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * args.epochs
    result = trainer.train()
    out = {"tokens": int(tokens), "runtime_s": round(result.metrics["train_runtime"], 2),
           "loss": round(result.training_loss, 5)}
    del trainer
    gc.collect()
    return out


def main() -> None:
    header()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, help="first N GSM8K train examples (default 256; --quick 16)")
    p.add_argument("--variants", help="comma list of a, b, c (= c_nopack,c_pack), c_nopack, c_pack, x "
                   "(default a,b,c; --quick a,b)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, help="default 512; --quick 256")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--wait-idle", type=float, help="before each variant wait up to this many seconds for other "
                   "processes to go quiet (0: no; default 300, --quick 0)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--quick", action="store_true", help="variants a and b on 16 examples, max length 256 (minutes)")
    p.add_argument("--emulate-avx2", action="store_true",
                   help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = p.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:  # given options win over the mode's sizes
            setattr(args, key, value)
    wanted = [v for item in args.variants.split(",")
              for v in (["c_nopack", "c_pack"] if item.strip() == "c" else [item.strip()])]
    unknown = [v for v in wanted if v not in ALL_VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from a, b, c, {', '.join(ALL_VARIANTS[1:])}")

    import transformers

    transformers.logging.set_verbosity_error()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as tmp:
        work = Path(tmp)
        conversations = write_chat_jsonl(args.examples, work / "gsm8k_chat.jsonl")
        print(f"tunelab {code_version()}; data: first {len(conversations)} GSM8K train examples; batch "
              f"{args.batch_size}, max length {args.max_length}, {args.epochs} epoch(s)", flush=True)
        half = trl_bf16()
        runners = {
            "a": lambda: run_tunelab(work / "gsm8k_chat.jsonl", work, args),
            "b": lambda: run_trl(conversations, work, args, bf16=False, packing=False),
            "c_nopack": lambda: run_trl(conversations, work, args, bf16=half, packing=False),
            "c_pack": lambda: run_trl(conversations, work, args, bf16=half, packing=True),
            "x": lambda: run_trl(conversations, work, args, bf16=half, packing=False, gradient_checkpointing=False),
        }
        for name in ALL_VARIANTS:
            if name in wanted:
                print(f"--- {name}: {labels()[name]}", flush=True)
                wait_for_quiet(args.wait_idle)
                before = cpu_ticks()
                r = runners[name]()
                r["tokens_per_s"] = round(r["tokens"] / max(r["runtime_s"], 1e-9), 1)
                r["others_cpu"] = round(others_share(before, cpu_ticks()), 3)
                results[name] = r
                print(f"    {r}", flush=True)

    width = max([36] + [len(labels()[name]) for name in results])
    print(f"\n{'variant':<10} {'what':<{width}} {'tokens':>8} {'runtime_s':>10} {'tokens/s':>9} {'train_loss':>10} "
          f"{'others_cpu':>10}")
    for name, r in results.items():
        print(f"{name:<10} {labels()[name]:<{width}} {r['tokens']:>8} {r['runtime_s']:>10.1f} "
              f"{r['tokens_per_s']:>9.1f} {r['loss']:>10.4f} {r['others_cpu']:>10.0%}")
    print("others_cpu: share of the machine's CPU that other processes used during the variant (should be ~0%)")
    nan = float("nan")
    rate = lambda k: results[k]["tokens_per_s"] if k in results else nan  # noqa: E731
    c_name = max((k for k in ("c_nopack", "c_pack") if k in results), key=rate, default=None)
    a, b, c = rate("a"), rate("b"), rate(c_name) if c_name else nan
    loss_a, loss_b = (results[k]["loss"] if k in results else nan for k in ("a", "b"))
    ratio_b, ratio_c, loss_diff = a / b, a / c, abs(loss_a - loss_b) / loss_b
    verdict = lambda ok, value: "n/a" if value != value else ("met" if ok else "MISSED")  # noqa: E731  (nan: not run)
    print(f"(c) = {c_name}; targets: a/b >= 2 {verdict(ratio_b >= 2, ratio_b)}, a/c >= 1.5 "
          f"{verdict(ratio_c >= 1.5, ratio_c)}, loss within 5% of b {verdict(loss_diff <= 0.05, loss_diff)}")
    headline = {"ratio_vs_trl_default": ratio_b, "ratio_vs_trl_tuned": ratio_c, "loss_rel_diff": loss_diff}
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "code": code_version(),
                                         "results": results, "c": c_name, **headline}, indent=2))
    details = {"c": c_name, "trl_bf16": trl_bf16(), "examples": len(conversations), "max_length": args.max_length,
               "code": code_version(), "variants": results}
    smaller = args.examples < FULL["examples"] or args.max_length < FULL["max_length"]  # not the full spec
    save("train_throughput", {**headline, "details": details}, quick=args.quick or smaller)
    print(f"ratio_vs_trl_default={ratio_b:.2f} ratio_vs_trl_tuned={ratio_c:.2f} loss_rel_diff={loss_diff:.3f}")


if __name__ == "__main__":
    main()
