"""Every CPU path for the hot loops, measured side by side, and which one `auto` picks.

On this machine, then under the AVX2 emulation (torch, oneDNN and MKL capped at AVX2, see
bench/report.py), on the default model (SmolLM2-135M-Instruct):

- matmul: GFLOP/s of a 1024x1024 matmul in float32 and bfloat16, whether bfloat16 is native;

- decode, 1 and 8 streams, greedy, a fixed number of new tokens each (ignore_eos): the
  transformers engine with float32 weights, bfloat16 weights, int8 weights (over the
  auto dtype), int4 weights, and the llama.cpp backend (the packaged Q4_1 GGUF) where
  built (the fastest of three timed runs each); plus `auto` (load_engine's defaults) and, for one stream,
  plain `model.generate`
  of transformers at its defaults (float32), the baseline of decode_vs_hf;
- LoRA training: tunelab `sft` + `lora` on the built-in requests-to-JSON data, float32
  against bfloat16 autocast; tokens/s from the run's own metrics, first step excluded;
- choice scoring: `ending_loglikelihoods` over requests-to-JSON intent questions (three
  endings each), float32 against bfloat16; scored tokens/s;
- quality (this machine only): wikitext-2 perplexity of the exact weights against int8
  and int4, what those decode paths cost.

Each path runs in its own process with a time limit: a path that cannot finish there (bfloat16
where it is emulated) is reported as an upper bound ("<x") from the work it had not finished.

    python bench/cpu_paths.py               # both kinds of CPU, about 18 minutes on 2 cores
    python bench/cpu_paths.py --quick       # about 12 minutes (--hardware avx2: 8)
    python bench/cpu_paths.py --hardware avx2

The table says, per CPU kind and hot loop, each path's tokens/s, the one `auto` took, and
auto's rate over the fastest (auto and the path it took are one configuration measured twice;
the faster of the two counts). Last line:
    auto_vs_best_decode=<x> auto_vs_best_train=<x> auto_vs_best_score=<x> decode_vs_hf_avx2=<x>
(each auto_vs_best the lowest over both kinds of CPU and, for decode, both stream counts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import AVX2, describe, header, save

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a refrigerator works.",
    "Describe a walk through a busy market in the morning.",
    "List ideas for a birthday party for a ten-year-old, with details.",
    "Write a letter to a friend about your summer holiday.",
    "Explain the rules of chess to a beginner.",
    "Describe how bread is made, step by step.",
    "Give advice to someone starting to learn the guitar.",
]
DECODE = {  # path -> load_engine arguments
    "fp32": {"backend": "transformers", "dtype": "fp32", "quantize": "none"},
    "bf16": {"backend": "transformers", "dtype": "bf16", "quantize": "none"},
    "int8": {"backend": "transformers", "quantize": "int8"},
    "int4": {"backend": "transformers", "quantize": "int4"},
    "llama.cpp": {"backend": "llamacpp"},
    "auto": {},
}
PRECISIONS = ("fp32", "bf16")
SIZES = {False: {"tokens": 64, "steps": 8, "questions": 160, "limit": 150},
         True: {"tokens": 32, "steps": 4, "questions": 48, "limit": 60}}


# ---- children: one path each, in its own process --------------------------------------------------------------

def decode_child(path: str, streams: int, size: dict) -> dict:
    from tunelab.infer import DecodingConfig, Request
    from tunelab.infer.engine import generate

    prompts, n = PROMPTS[:streams], size["tokens"]
    if path == "hf":
        return hf_generate(prompts, n)
    from tunelab.infer.load import load_engine

    engine = load_engine(max_batch_size=streams, **DECODE[path])
    try:
        generate(engine, [Request(prompts[0], DecodingConfig(max_new_tokens=4, temperature=0))])  # warm-up
        started(len(prompts) * n)
        best = 0.0
        for _ in range(3):  # the fastest of three: these machines are noisy, and noise only ever slows
            start = time.perf_counter()
            answers = generate(engine, [Request(p, DecodingConfig(max_new_tokens=n, temperature=0, ignore_eos=True))
                                        for p in prompts])
            best = max(best, sum(len(a.token_ids) for a in answers) / (time.perf_counter() - start))
        return {"tok_s": best, "took": describe(engine)}
    finally:
        engine.close()


def hf_generate(prompts: list[str], n: int) -> dict:
    """The baseline: transformers' model.generate at its defaults (float32), greedy, one prompt at a time."""
    from transformers import AutoModelForCausalLM

    from tunelab.infer.generate import prompt_text
    from tunelab.models import load_tokenizer, resolve

    folder = resolve("smollm2-135m-instruct")
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    encoded = [tokenizer(prompt_text(tokenizer, p), return_tensors="pt", add_special_tokens=False) for p in prompts]
    model.generate(**encoded[0], max_new_tokens=4, do_sample=False)
    started(len(prompts) * n)
    best = 0.0
    for _ in range(3):  # the fastest of three, as for every path
        start = time.perf_counter()
        for enc in encoded:
            model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        best = max(best, len(prompts) * n / (time.perf_counter() - start))
    return {"tok_s": best, "took": "model.generate fp32"}


def train_child(path: str, size: dict, out: str) -> dict:
    from tunelab.config import load_config
    from tunelab.demo.requests import make_examples, write_jsonl
    from tunelab.hardware import compute_dtype
    from tunelab.objectives import run

    data = Path(out) / "train.jsonl"
    write_jsonl(make_examples(8 * size["steps"], seed=1), data)
    precision = "auto" if path == "auto" else path
    cfg = load_config(base={"data": {"train": str(data), "max_length": 256, "val_split": 0.0},
                            "method": "lora", "objective": "sft",
                            "train": {"max_steps": size["steps"], "batch_size": 4, "logging_steps": 1, "predict": False,
                                      "output_dir": out, "run_name": "run", "precision": precision}})
    started(4 * 256, metrics=str(Path(out) / "run" / "metrics.jsonl"))
    run(cfg)
    took = "bf16" if compute_dtype(precision) == compute_dtype("bf16") else "fp32"
    return {**metrics_rate(Path(out) / "run" / "metrics.jsonl"), "took": took}


def metrics_rate(file: Path) -> dict:
    """Tokens/s between the first logged step and the last (the first step's warm-up left out)."""
    rows = [json.loads(line) for line in file.read_text().splitlines() if '"tokens"' in line] if file.exists() else []
    rows = [r for r in rows if "tokens" in r and "time_s" in r]
    if len(rows) < 2:
        return {}
    return {"tok_s": (rows[-1]["tokens"] - rows[0]["tokens"]) / (rows[-1]["time_s"] - rows[0]["time_s"]),
            "steps": rows[-1]["step"]}


def score_child(path: str, size: dict) -> dict:
    from tunelab.demo.requests import make_examples
    from tunelab.eval.choice import Question, ending_loglikelihoods
    from tunelab.hardware import compute_dtype
    from tunelab.models import load_model

    dtype = compute_dtype("auto" if path == "auto" else path)
    model, tokenizer = load_model("smollm2-135m-instruct", dtype=dtype)
    intents = ["schedule_meeting", "send_message", "set_reminder"]
    questions = [Question(f"Request: {e['messages'][1]['content']}\nIntent:", [f" {i}" for i in intents], intents,
                          intents.index(e["gold"]["intent"])) for e in make_examples(size["questions"], seed=2)]
    tokens = sum(len(tokenizer(q.context + ending)["input_ids"]) for q in questions for ending in q.endings)
    ending_loglikelihoods(model, tokenizer, questions[:4], batch_size=4)  # warm-up
    started(tokens)
    start = time.perf_counter()
    ending_loglikelihoods(model, tokenizer, questions, batch_size=16)
    return {"tok_s": tokens / (time.perf_counter() - start), "took": "bf16" if dtype == compute_dtype("bf16")
            else "fp32"}


def started(work: int, metrics: str | None = None) -> None:
    """Tell the parent the clock starts now, and how many tokens the timed part holds (for a bound on timeout)."""
    print("START " + json.dumps({"t": time.time(), "work": work, "metrics": metrics}), flush=True)


def child(args) -> None:
    import torch

    torch.manual_seed(0)
    size = SIZES[args.quick]
    if args.child == "matmul":
        result = {"tok_s": 0.0, **matmul_rates(), "took": "matmul"}
    elif args.child == "decode":
        result = decode_child(args.path, args.streams, size)
    elif args.child == "train":
        result = train_child(args.path, size, args.out)
    else:
        result = score_child(args.path, size)
    print("RESULT " + json.dumps(result), flush=True)


def quality(chars: int) -> dict:
    """What the decode paths cost in accuracy: wikitext-2 perplexity, exact weights against int8 and int4."""
    import torch

    from tunelab.eval.perplexity import document_nll, perplexity_metrics
    from tunelab.hardware import compute_dtype
    from tunelab.infer.quantize import quantize_int4, quantize_int8
    from tunelab.models import load_model

    file = ROOT.parent / "shared" / "data" / "wikitext2" / "valid.txt"
    if not file.is_file():
        print(f"quality skipped: {file} is missing")
        return {}
    docs = [file.read_text(encoding="utf-8")[:chars]]
    ppl = {}
    for path, change in (("exact", None), ("int8", lambda m: quantize_int8(m, rows=1 << 30)), ("int4", quantize_int4)):
        model, tokenizer = load_model("smollm2-135m-instruct", dtype=compute_dtype("auto"))
        with torch.inference_mode():
            model = change(model) if change else model  # int8 for every row, as decoding uses it
            ppl[path] = perplexity_metrics(docs, document_nll(model, tokenizer, docs, 512, 512))["perplexity"]
    print(f"\nwikitext-2 perplexity ({chars} characters): " + ", ".join(f"{k} {v:.3f}" for k, v in ppl.items()))
    return {f"{q}_ppl_rel": round(ppl[q] / ppl["exact"] - 1, 4) for q in ("int8", "int4")}


# ---- parent: every path, each in a child with a time limit ---------------------------------------------------

def measure(loop: str, path: str, env: dict, quick: bool, streams: int = 1) -> dict:
    """Run one path in a child process; on its time limit, an upper bound from the work left unfinished."""
    size = SIZES[quick]
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--child", loop, "--path", path, "--streams", str(streams),
                   "--out", out] + (["--quick"] if quick else [])
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=str(ROOT))
        try:
            stdout, stderr = proc.communicate(timeout=size["limit"] + 120)  # load time + the timed part's limit
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            timed_out = True
        start = next((json.loads(line[6:]) for line in stdout.splitlines() if line.startswith("START ")), None)
        result = next((json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")), None)
        if result is not None and "tok_s" in result:
            return result
        if start is None or not timed_out:
            return {"error": (stderr.strip().splitlines() or ["no output"])[-1][:200]}
        if start.get("metrics"):  # a training run stopped part way: its logged steps are a real measurement
            partial = metrics_rate(Path(start["metrics"]))
            if partial:
                return {**partial, "took": path, "partial": True}
        return {"tok_s": start["work"] / (time.time() - start["t"]), "bound": True, "took": path}


def run_kind(name: str, env: dict, quick: bool, parts: set[str]) -> dict:
    """Every path of every hot loop on one kind of CPU."""
    kind = subprocess.run([sys.executable, "-c", "from tunelab.hardware import detect; print(detect().line())"],
                          env=env, capture_output=True, text=True, cwd=str(ROOT), check=False).stdout.strip()
    print(f"\n== {name}: {kind}", flush=True)
    loops: dict[str, dict] = {"hardware": kind}
    matmul = measure("matmul", "matmul", env, quick)
    loops["matmul_gflops"] = {k: matmul.get(k) for k in ("fp32", "bf16")}
    print(f"  matmul 1024x1024: fp32 {matmul.get('fp32')} GFLOP/s, bf16 {matmul.get('bf16')} GFLOP/s", flush=True)
    plan = []
    if "decode" in parts:
        plan += [(f"decode x{s}", "decode", p, s) for s in (1, 8) for p in (*DECODE, *(("hf",) if s == 1 else ()))]
    if "train" in parts:
        plan += [("train", "train", p, 1) for p in (*PRECISIONS, "auto")]
    if "score" in parts:
        plan += [("score", "score", p, 1) for p in (*PRECISIONS, "auto")]
    for label, loop, path, streams in plan:
        result = measure(loop, path, env, quick, streams)
        loops.setdefault(label, {})[path] = result
        print(f"  {label:<10} {path:<10} {rate(result):>9} tok/s  {result.get('took', result.get('error', ''))}",
              flush=True)
    return loops


def rate(result: dict) -> str:
    if "tok_s" not in result:
        return "failed"
    return ("<" if result.get("bound") else "") + f"{result['tok_s']:.1f}"


def auto_vs_best(paths: dict) -> tuple[float, str, str]:
    """(rate of the path auto took / the fastest path's, auto's path, the fastest path).

    `auto` and the path it took are the same configuration measured twice: its rate is the
    faster of the two, as each path's is the fastest of its timed runs.
    """
    measured = {p: r["tok_s"] for p, r in paths.items() if p not in ("auto", "hf") and "tok_s" in r}
    best = max(measured, key=measured.get)
    took = paths["auto"].get("took", "")
    picked = next((p for p in measured if took == p or took.startswith(p)), None)
    if picked is None:
        return float("nan"), took, best
    auto = max(measured[picked], paths["auto"].get("tok_s", 0.0))
    return auto / max(measured[best], auto), picked, best if measured[best] > auto else picked


def matmul_rates() -> dict:
    """GFLOP/s of a 1024x1024 matmul in float32 and bfloat16: does this CPU compute bfloat16 natively?"""
    import torch

    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(1024, 1024, dtype=dtype)
        a @ a
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < 1.0:
            a @ a
            n += 1
        rates[name] = round(2 * 1024**3 * n / (time.perf_counter() - start) / 1e9, 1)
    return rates


def main() -> None:
    header()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens, steps and questions; shorter limits")
    parser.add_argument("--hardware", default="native,avx2", help="native, avx2 or both (comma-separated)")
    parser.add_argument("--parts", default="decode,train,score,quality")
    parser.add_argument("--emulate-avx2", action="store_true", help="run everything under the AVX2 caps")
    parser.add_argument("--child", choices=("matmul", "decode", "train", "score"), help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    base = {k: v for k, v in os.environ.items() if k not in AVX2}
    kinds = {"native": base, "avx2": {**base, **AVX2}}
    parts = set(args.parts.split(","))
    results = {name: run_kind(name, kinds[name], args.quick, parts) for name in args.hardware.split(",")}

    print("\n| CPU | loop | " + " | ".join([*DECODE, "hf"]) + " | auto took | auto / fastest |")
    print("|---|---|" + "---|" * (len(DECODE) + 3))
    ratios: dict[str, list[float]] = {"decode": [], "train": [], "score": []}
    for name, loops in results.items():
        for label, paths in loops.items():
            if label in ("hardware", "matmul_gflops"):
                continue
            ratio, picked, best = auto_vs_best(paths)
            ratios[label.split()[0]].append(ratio)
            cells = [rate(paths[p]) if p in paths else "" for p in (*DECODE, "hf")]
            print(f"| {name} | {label} | " + " | ".join(cells) + f" | {picked} | {ratio:.2f} (fastest: {best}) |")
    avx2 = results.get("avx2", {}).get("decode x1", {})
    vs_hf = avx2["auto"]["tok_s"] / avx2["hf"]["tok_s"] if "tok_s" in avx2.get("auto", {}) and \
        "tok_s" in avx2.get("hf", {}) else float("nan")
    figures = {f"auto_vs_best_{k}": round(min(v), 3) if v else float("nan") for k, v in ratios.items()}
    figures["decode_vs_hf_avx2"] = round(vs_hf, 2)
    accuracy = quality(20_000 if args.quick else 60_000) if "quality" in parts else {}
    save("cpu_paths", {**figures, **accuracy, "hardware_measured": args.hardware, "paths": results}, quick=args.quick,
         tag=args.hardware.replace(",", "-"))
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
