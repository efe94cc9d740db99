"""Ship the demo run: merged, quantized every way, as GGUF, and checked against the run.

On the demo's LoRA run (runs/demo-lora; trained here first if missing) on the default model:

1. merge: the merged float32 folder against base + adapter, max |logit difference| over the
   run's own prompts;
2. GGUF q8_0 through llama.cpp: greedy token agreement with the run over 50 of its prompts
   (`tunelab export --verify`'s teacher-forced agreement);
3. every quantization method (naive round-to-nearest int8/int4, bitsandbytes, torchao,
   calibrated AutoRound int4 on the run's own training data, GGUF q8_0 / q4_k_m): size on disk,
   perplexity on WikiText-2 (validation) relative to the unquantized merged model, the run's
   task metric (JSON field accuracy on the demo's 60 held-out requests, greedy) and one-stream
   decode speed;
4. decode speed of the GGUF Q4_K_M in llama.cpp against the engine's own one-stream speed (the
   transformers backend as `tunelab chat` loads it), measured in the same run.

    python bench/compress.py [--runs runs] [--wikitext-lines 600]

Ends with one line: merge_max_abs_diff gguf_token_agreement q8_ppl_rel q4_rtn_ppl_rel
q4_calibrated_ppl_rel gguf_q4_tok_s_ratio_vs_hf.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIKITEXT = ROOT.parent / "shared" / "data" / "wikitext2" / "valid.txt"
sys.path.insert(0, str(ROOT / "bench"))

from report import header, save  # noqa: E402  (bench/ is on the path from here)

METHODS = ("naive-absmax-int8-channel", "naive-absmax-int4-group", "naive-zeropoint-int4-group", "bnb-int8", "bnb-nf4",
           "torchao-int8", "torchao-int4", "autoround-int4")
DECODE_TOKENS = 64


def wikitext_documents(lines: int) -> list[str]:
    """The first `lines` non-empty lines of WikiText-2 validation, joined into documents at section titles."""
    docs, current = [], []
    for line in WIKITEXT.read_text(encoding="utf-8").splitlines()[:lines]:
        if line.strip().startswith("= ") and current:
            docs.append("\n".join(current))
            current = []
        if line.strip():
            current.append(line.strip())
    return docs + (["\n".join(current)] if current else [])


def hf_decode_speed(model, tokenizer) -> float:
    """One-stream greedy decode tokens/s of a transformers model (prompt excluded)."""
    import torch

    ids = tokenizer("The history of the city begins", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=DECODE_TOKENS, min_new_tokens=DECODE_TOKENS, do_sample=False)
    return (out.shape[1] - ids.shape[1]) / (time.perf_counter() - start)


def gguf_decode_speed(path: Path) -> float:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, verbose=False)
    try:
        ids = llm.tokenize(b"The history of the city begins")
        for warm, n in ((True, 4), (False, DECODE_TOKENS)):
            llm.reset()
            start, count = time.perf_counter(), 0
            for _ in llm.generate(ids, top_k=1, temp=0.0):
                count += 1
                if count >= n:
                    break
            if not warm:
                return count / (time.perf_counter() - start)
    finally:
        llm.close()


def engine_decode_speed(source) -> float:
    """The engine `tunelab chat --adapter RUN` builds (one stream): its decode tokens/s."""
    from tunelab.infer.engine import Request, generate
    from tunelab.infer.load import load_engine
    from tunelab.config import DecodingConfig

    engine = load_engine(adapters=str(source.run_dir), max_batch_size=1)
    try:
        params = DecodingConfig(max_new_tokens=DECODE_TOKENS, ignore_eos=True)
        generate(engine, [Request("Write about the history of the city.", DecodingConfig(max_new_tokens=4))])
        start = time.perf_counter()
        answer = generate(engine, [Request("Write about the history of the city.", params)])[0]
        return len(answer.token_ids) / (time.perf_counter() - start)
    finally:
        engine.close()


def gguf_perplexity(path: Path, documents: list[str], tokenizer, window: int = 512) -> float:
    """Token perplexity under llama.cpp of the same token ids and windows the transformers models read."""
    import llama_cpp
    import numpy as np

    from tunelab.eval.perplexity import prefix_token, windows

    llm = llama_cpp.Llama(str(path), n_ctx=window, logits_all=True, verbose=False)
    nll, count = 0.0, 0
    try:
        for doc in documents:
            seq = [prefix_token(tokenizer)] + tokenizer.encode(doc, add_special_tokens=False)
            for begin, end, first in windows(len(seq), window, window):
                llm.reset()
                llm.eval(seq[begin:end])
                logits = np.asarray(llm.scores[:end - begin], dtype=np.float64)
                logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
                for pos in range(first, end):
                    nll -= logp[pos - begin - 1, seq[pos]]
                    count += 1
    finally:
        llm.close()
    return math.exp(nll / count)


def main() -> int:
    header()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "runs"))
    parser.add_argument("--wikitext-lines", type=int, default=600)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = parser.parse_args()
    if not WIKITEXT.is_file():
        print(f"{WIKITEXT} is missing: this benchmark needs the shared WikiText-2 data", file=sys.stderr)
        return 1
    import torch

    from merge_tasks import demo_run
    from tunelab.compress import gguf
    from tunelab.compress.hf import export_hf
    from tunelab.compress.quantize import QuantizeConfig, load_any, perplexity, quantize_source
    from tunelab.compress.quantizers import model_size_bytes
    from tunelab.compress.source import load_trained, open_source
    from tunelab.compress.verify import GGUFSide, HFSide, run_prompts, verify
    from tunelab.demo import evaluate
    from tunelab.demo.requests import make_examples

    torch.manual_seed(0)
    t0 = time.time()
    source = open_source(demo_run(Path(args.runs)))
    docs = wikitext_documents(args.wikitext_lines)
    held_out = make_examples(60, seed=2)
    out = Path(tempfile.mkdtemp(prefix="compress-bench-"))
    rows: dict[str, dict] = {}

    # 1. merged vs unmerged logits, float32
    trained, tokenizer = load_trained(source)
    hf = export_hf(source, out / "hf-fp32", dtype="fp32").path
    merged, _ = load_any(hf)
    prompts = run_prompts(source, 8)
    diff = 0.0
    with torch.no_grad():
        for messages in prompts:
            ids = torch.tensor([tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                                ["input_ids"]])
            diff = max(diff, float((trained(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max()))
    print(f"merge: max |logit diff| {diff:.2e} over {len(prompts)} prompts", flush=True)
    del trained
    gc.collect()

    # the unquantized reference: the merged model in float32
    ppl_ref = perplexity(merged, tokenizer, docs)
    task = evaluate(merged, tokenizer, held_out)[0]
    rows["merged fp32"] = {"size_mb": model_size_bytes(hf) / 1e6, "ppl": ppl_ref, "field_acc": task["field_accuracy"],
                           "tok_s": hf_decode_speed(merged, tokenizer)}
    print("merged fp32", rows["merged fp32"], flush=True)
    del merged
    gc.collect()

    # 2. GGUF q8_0 and q4_k_m; q8_0 checked against the run over 50 of its prompts
    reference = HFSide.from_source(source)
    for quant in ("q8_0", "q4_k_m"):
        path = gguf.export_gguf(source, out / f"demo-{quant}.gguf", quant=quant).path
        side = GGUFSide(path)
        if quant == "q8_0":
            check = verify(source, side, bits=8, n_prompts=50, max_new_tokens=48, reference=reference)
            print(check.summary(), flush=True)
        side.close()
        llm_ppl = gguf_perplexity(path, docs, tokenizer)
        rows[f"gguf {quant}"] = {"size_mb": path.stat().st_size / 1e6, "ppl": llm_ppl,
                                 "field_acc": gguf_field_accuracy(path, held_out), "tok_s": gguf_decode_speed(path)}
        print(f"gguf {quant}", rows[f"gguf {quant}"], flush=True)
    del reference
    gc.collect()

    # 3. every quantization method on the merged run (calibrated ones on its own training data)
    for method in args.methods.split(","):
        start = time.time()
        try:
            result = quantize_source(str(source.run_dir), QuantizeConfig(method=method, output=str(out / method),
                                                                         measure=False))
        except Exception as e:  # noqa: BLE001 - a method that cannot run here is reported, not fatal
            rows[method] = {"error": f"{type(e).__name__}: {e}"[:160]}
            print(method, rows[method], flush=True)
            continue
        model, tok = load_any(out / method)
        rows[method] = {"size_mb": result["size_bytes"] / 1e6, "ppl": perplexity(model, tok, docs),
                        "field_acc": evaluate(model, tok, held_out)[0]["field_accuracy"],
                        "tok_s": hf_decode_speed(model, tok), "quantize_s": time.time() - start}
        print(method, rows[method], flush=True)
        del model
        gc.collect()

    # 4. llama.cpp Q4_K_M against the engine's own one-stream decoding
    engine_tok_s = engine_decode_speed(source)
    ratio = rows["gguf q4_k_m"]["tok_s"] / engine_tok_s

    print(f"\n{time.time() - t0:.0f} s; WikiText-2 validation: {len(docs)} documents from {args.wikitext_lines} lines; "
          f"engine one-stream (tunelab chat --adapter): {engine_tok_s:.1f} tokens/s")
    print("| model | size (MB) | WikiText-2 ppl | ppl vs fp32 | JSON field acc (%) | decode tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        if "error" in r:
            print(f"| {name} | {r['error']} | | | | |")
            continue
        print(f"| {name} | {r['size_mb']:.0f} | {r['ppl']:.2f} | {r['ppl'] / ppl_ref - 1:+.2%} | "
              f"{r['field_acc']:.1f} | {r['tok_s']:.1f} |")
    rel = lambda name: rows[name]["ppl"] / ppl_ref - 1 if "ppl" in rows.get(name, {}) else float("nan")
    save("compress", {"merge_max_abs_diff": diff, "gguf_token_agreement": check.token_agreement,
                      "q8_ppl_rel": rel("naive-absmax-int8-channel"), "q4_rtn_ppl_rel": rel("naive-absmax-int4-group"),
                      "q4_calibrated_ppl_rel": rel("autoround-int4"), "gguf_q4_tok_s_ratio_vs_hf": ratio,
                      "details": {"engine_tok_s": engine_tok_s, "models": rows}})
    print(f"merge_max_abs_diff={diff:.2e} gguf_token_agreement={check.token_agreement:.3f} "
          f"q8_ppl_rel={rel('naive-absmax-int8-channel'):.4f} q4_rtn_ppl_rel={rel('naive-absmax-int4-group'):.4f} "
          f"q4_calibrated_ppl_rel={rel('autoround-int4'):.4f} gguf_q4_tok_s_ratio_vs_hf={ratio:.2f}")
    return 0


def gguf_field_accuracy(path: Path, examples: list[dict]) -> float:
    """The demo's JSON field accuracy of a GGUF file answering through the llama.cpp engine (greedy)."""
    from tunelab.config import DecodingConfig
    from tunelab.eval.json_match import score_json
    from tunelab.infer.engine import Request, generate
    from tunelab.infer.load import load_engine

    engine = load_engine(str(path))
    try:
        answers = generate(engine, [Request(ex["messages"][:2], DecodingConfig(max_new_tokens=96)) for ex in examples])
    finally:
        engine.close()
    return score_json([a.text for a in answers], [ex["gold"] for ex in examples])["field_accuracy"]


if __name__ == "__main__":
    sys.exit(main())
