"""Inference speed, each figure a ratio against a baseline measured in the same run.

(a) single-stream decode tokens/s: the engine for one stream at its defaults (backend auto: llama.cpp for
    the GGUF default model where llama-cpp-python is built, else transformers with int8 weights where the
    int8 kernel wins; the run prints which), with --backend transformers --quantize none (weights in the
    auto dtype: bfloat16 where the CPU computes it natively, else float32) and --backend transformers
    --dtype fp32, against plain `model.generate` of transformers with default settings (float32, greedy),
    same model, same prompts, 128 new tokens each; plus the int8 weights' perplexity cost on wikitext-2.
(b) aggregate tokens/s of 8 concurrent clients against 1 client, both against
    `tunelab serve` (a separate process) through the official openai package; at its
    defaults (weights in the auto dtype), and with --quantize int8.
(c) the llama.cpp backend against llama-cpp-python called directly, same GGUF, same prompts.

    python bench/serve.py                 # all three, about 8 minutes on 2 CPU cores
    python bench/serve.py --parts a       # one part
    python bench/serve.py --quick         # all three on 2 prompts x 48 tokens, (b) 2 requests per client of
                                          # 32 tokens, perplexity on 8,000 characters: about 1 minute
    python bench/serve.py --emulate-avx2 --quick   # as an AVX2-only CPU computes (bench/report.py):
                                                   # float32 weights, 70 s measured

The last line: decode_ratio_vs_hf=<x> concurrency_ratio_8v1=<x> llamacpp_ratio=<x>
(and the int8 ratio, the absolute tokens/s and the outputs' agreement, for the table; the keys
decode_bf16_* are the --quantize none engine, whose weights are float32 where bfloat16 is not native).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from report import describe, header, save

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a refrigerator works.",
    "Describe a walk through a busy market in the morning.",
    "List ideas for a birthday party for a ten-year-old, with details.",
]
MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Sizes:
    prompts: int = 4  # of PROMPTS, for (a) and (c)
    new_tokens: int = 128  # per prompt in (a) and (c)
    ppl_chars: int = 40_000  # of wikitext-2 for the int8 perplexity check
    requests_per_client: int = 4  # in (b)
    max_tokens: int = 64  # per request in (b)


QUICK = Sizes(prompts=2, new_tokens=48, ppl_chars=8_000, requests_per_client=2, max_tokens=32)


def part_a(size: Sizes) -> dict:
    from transformers import AutoModelForCausalLM

    from tunelab.infer import DecodingConfig, Request
    from tunelab.infer.engine import generate
    from tunelab.infer.generate import prompt_text
    from tunelab.infer.load import load_engine
    from tunelab.models import load_tokenizer, resolve

    folder = resolve(MODEL)
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder))  # transformers' defaults: float32
    prompts, new_tokens = PROMPTS[:size.prompts], size.new_tokens
    encoded = [tokenizer(prompt_text(tokenizer, p), return_tensors="pt", add_special_tokens=False) for p in prompts]

    def hf() -> tuple[float, list]:
        out, start = [], time.perf_counter()
        for enc in encoded:
            ids = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            out.append(ids[0, enc["input_ids"].shape[1]:].tolist())
        return len(prompts) * new_tokens / (time.perf_counter() - start), out

    def engine_rate(engine) -> tuple[float, list]:
        cfg = DecodingConfig(max_new_tokens=new_tokens, ignore_eos=True)
        generate(engine, [Request(prompts[0], DecodingConfig(max_new_tokens=8))])  # warm-up
        out, start = [], time.perf_counter()
        for p in prompts:  # one at a time: single-stream decoding
            out.append(generate(engine, [Request(p, cfg)])[0].token_ids)
        return len(prompts) * new_tokens / (time.perf_counter() - start), out

    with torch.inference_mode():
        model.generate(**encoded[0], max_new_tokens=8)  # warm-up
        base, base_ids = hf()
    # one stream at its defaults: backend auto may pick llama.cpp (the default model is a GGUF file) or
    # transformers with int8 weights, depending on the machine; `what` records which
    engine = load_engine(MODEL, max_batch_size=1)
    what = describe(engine)
    ours, ours_ids = engine_rate(engine)
    engine.close()
    # these two rows mean the transformers engine: named, not left to whatever backend auto picks
    unquantized = load_engine(MODEL, backend="transformers", max_batch_size=1, quantize=None)
    unquantized_what = describe(unquantized)
    ours16, ours16_ids = engine_rate(unquantized)
    unquantized.close()
    # same dtype as the baseline: what the decode loop alone gives
    engine32 = load_engine(MODEL, backend="transformers", max_batch_size=1, dtype="fp32")
    ours32, ours32_ids = engine_rate(engine32)
    engine32.close()

    quality = _int8_quality(size.ppl_chars)

    def agree(a, b):  # share of the first 32 tokens identical
        return sum(x[:32] == y[:32] for x, y in zip(a, b)) / len(a)

    print(f"(a) {len(prompts)} prompts x {new_tokens} tokens: transformers generate fp32: {base:.1f} tok/s | "
          f"engine defaults ({what}): {ours:.1f} | engine --quantize none ({unquantized_what}): {ours16:.1f} | "
          f"engine --dtype fp32: {ours32:.1f}; first-32-token agreement with generate: "
          f"fp32 {agree(base_ids, ours32_ids):.2f} --quantize none {agree(base_ids, ours16_ids):.2f} "
          f"defaults {agree(base_ids, ours_ids):.2f}", flush=True)
    return {"decode_ratio_vs_hf": ours / base, "decode_bf16_ratio_vs_hf": ours16 / base,
            "decode_fp32_ratio_vs_hf": ours32 / base, "hf_tok_s": base, "engine_tok_s": ours,
            "engine_bf16_tok_s": ours16, "fp32_identical": agree(base_ids, ours32_ids), **quality,
            "engines": {"defaults": what, "quantize_none": unquantized_what}}


def _int8_quality(chars: int) -> dict:
    """Perplexity on the start of wikitext-2 (../shared/data): weights in the auto dtype vs int8 weights."""
    from tunelab.eval.perplexity import document_nll, perplexity_metrics
    from tunelab.hardware import compute_dtype
    from tunelab.infer.quantize import quantize_int8
    from tunelab.models import load_model

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext2" / "valid.txt"
    if not path.is_file():
        print(f"(a) int8 quality skipped: {path} is missing", flush=True)
        return {}
    docs = [path.read_text(encoding="utf-8")[:chars]]
    dtype = compute_dtype("auto")  # the weights int8 stands in for when decoding
    model, tokenizer = load_model(MODEL, dtype=dtype)
    with torch.inference_mode():
        exact = perplexity_metrics(docs, document_nll(model, tokenizer, docs, 512, 512))["perplexity"]
        # every row through the int8 weights, as one-stream decoding runs them
        int8_model = quantize_int8(model, rows=1 << 30)
        int8 = perplexity_metrics(docs, document_nll(int8_model, tokenizer, docs, 512, 512))["perplexity"]
    name = str(dtype).removeprefix("torch.")
    print(f"(a) wikitext-2 perplexity ({chars} characters): {name} {exact:.3f}, int8 {int8:.3f}", flush=True)
    return {"int8_ppl_rel_diff": int8 / exact - 1}


def part_b(size: Sizes) -> dict:
    # the defaults: weights in the auto dtype (a server's batches run on them, int8 only where it wins for them)
    default = _concurrency([], size.requests_per_client, size.max_tokens)
    int8 = _concurrency(["--quantize", "int8"], size.requests_per_client, size.max_tokens)  # faster alone
    return {"concurrency_ratio_8v1": default[1] / default[0], "concurrency_int8_ratio_8v1": int8[1] / int8[0],
            "serve_1_tok_s": default[0], "serve_8_tok_s": default[1], "serve_int8_1_tok_s": int8[0],
            "serve_int8_8_tok_s": int8[1]}


def _concurrency(flags: list[str], requests_per_client: int, max_tokens: int) -> tuple[float, float]:
    """(tokens/s of 1 client, of 8 clients) against `tunelab serve FLAGS` in its own process."""
    import openai

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", "--port", str(port), "--embedding-model",
                             "none", *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
        deadline = time.time() + 180
        while True:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("tunelab serve did not start") from None
                time.sleep(0.5)

        def client_run(k: int, tokens: list) -> None:
            for i in range(requests_per_client):
                out = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": PROMPTS[(k + i) % len(PROMPTS)]}],
                    max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})
                tokens.append(out.usage.completion_tokens)

        def rate(clients: int) -> float:
            tokens: list[int] = []
            threads = [threading.Thread(target=client_run, args=(k, tokens)) for k in range(clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return sum(tokens) / (time.perf_counter() - start)

        rate(1)  # warm-up
        one, eight = rate(1), rate(8)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"(b) tunelab serve {' '.join(flags) or '(defaults)'}, {max_tokens} tokens per request: 1 client "
          f"{one:.1f} tok/s, 8 clients {eight:.1f} tok/s ({eight / one:.2f}x)", flush=True)
    return one, eight


def part_c(size: Sizes) -> dict:
    try:
        import llama_cpp
    except ImportError:
        print("(c) skipped: llama-cpp-python is not installed (see README: the llamacpp extra)", flush=True)
        return {"llamacpp_ratio": float("nan")}
    from tunelab.infer import DecodingConfig, Request
    from tunelab.infer.backends.llamacpp import LlamaCppEngine, find_gguf
    from tunelab.infer.engine import generate

    path = str(find_gguf(MODEL))
    prompts, new_tokens = PROMPTS[:size.prompts], size.new_tokens
    threads = os.cpu_count()
    direct = llama_cpp.Llama(model_path=path, n_ctx=1024, n_threads=threads, verbose=False)
    texts = []

    def direct_rate() -> float:
        tokens, start = 0, time.perf_counter()
        for p in prompts:
            out = direct.create_chat_completion(messages=[{"role": "user", "content": p}], max_tokens=new_tokens,
                                                temperature=0)
            tokens += out["usage"]["completion_tokens"]
            texts.append(out["choices"][0]["message"]["content"])
        return tokens / (time.perf_counter() - start)

    engine = LlamaCppEngine(path, n_ctx=1024, n_threads=threads)

    def engine_rate() -> float:
        tokens, start = 0, time.perf_counter()
        for p in prompts:
            tokens += len(generate(engine, [Request(p, DecodingConfig(max_new_tokens=new_tokens))])[0].token_ids)
        return tokens / (time.perf_counter() - start)

    direct_rate(), engine_rate()  # warm-up
    rates = [(direct_rate(), engine_rate()) for _ in range(2)]  # interleaved, so drift hits both
    base, ours = sum(r[0] for r in rates) / 2, sum(r[1] for r in rates) / 2
    engine.close()
    print(f"(c) llama-cpp-python direct: {base:.1f} tok/s | tunelab llamacpp backend: {ours:.1f} tok/s", flush=True)
    return {"llamacpp_ratio": ours / base, "llamacpp_direct_tok_s": base, "llamacpp_engine_tok_s": ours}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    header()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--quick", action="store_true", help="2 prompts x 48 tokens in (a) and (c), 2 requests of "
                        "32 tokens per client in (b), perplexity on 8,000 characters (minutes)")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    size = QUICK if args.quick else Sizes()
    figures: dict = {}
    for part in args.parts.split(","):
        figures.update({"a": part_a, "b": part_b, "c": part_c}[part.strip()](size))
    head = ["decode_ratio_vs_hf", "concurrency_ratio_8v1", "llamacpp_ratio"]
    keys = [k for k in head if k in figures] + [k for k in figures if k not in head and k != "engines"]
    details = {"engines": figures.get("engines"), "sizes": asdict(size)}
    save("serve", {**{k: figures[k] for k in keys}, "details": details}, quick=args.quick)
    print(" ".join(f"{k}={figures[k]:.2f}" for k in keys))


if __name__ == "__main__":
    main()
