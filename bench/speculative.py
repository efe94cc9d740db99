"""Speculative decoding on the default model: speed against plain greedy decoding, same loop.

Both sides are transformers' `generate` on the same model object, greedy, 128 new tokens, in
tunelab's auto precision by default (bfloat16 where the CPU computes it natively, else float32):
plain, then with each draft (the target's first N layers as an early-exit
draft; prompt lookup). Two kinds of prompt: open questions (the answer is new text) and
edits (the answer mostly copies the prompt, as in extraction or rewriting).

    python bench/speculative.py               # precision auto, about 4 minutes on 2 CPU cores (AVX512-BF16)
    python bench/speculative.py --dtype fp32  # float32: answers must be token for token the plain ones

The last line: speedup_layers=<x> speedup_ngram_open=<x> speedup_ngram_edit=<x> identical=<0|1>
"""

from __future__ import annotations

import os
import time

from report import header, save

OPEN = ["Explain how a refrigerator works.", "Write a short story about a robot who learns to paint."]
EDIT = [
    ("Correct the spelling and return the whole text: 'Teh quick brown fox jumpd over the lazy dog while the farmer "
     "watchd from the porch, drinking his cofee and reading the newspapper about the wether.'"),
    ("Rewrite this list as a numbered list, keeping every item: apples, bread, milk, eggs, cheese, butter, coffee, "
     "rice, pasta, tomatoes, onions, garlic"),
]
NEW_TOKENS, LAYERS = 128, 8


def main() -> None:
    header()
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                        help="auto: bf16 where the CPU computes it natively, else fp32")
    parser.add_argument("--emulate-avx2", action="store_true",
                        help="re-run with torch/oneDNN/MKL capped at AVX2 (see bench/report.py)")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch  # after header(): under --emulate-avx2 the process re-runs before loading anything heavy

    from tunelab.hardware import bf16_native, compute_dtype
    from tunelab.infer.generate import prompt_text
    from tunelab.infer.speculative import draft_kwargs, truncated_draft
    from tunelab.models import load_model

    dtype = compute_dtype(args.dtype, key="--dtype")
    if dtype == torch.bfloat16:
        why = "bfloat16 (native on this CPU)" if bf16_native() else "bfloat16 (emulated on this CPU: slow)"
    else:
        why = "float32 (bfloat16 is emulated on this CPU)" if args.dtype == "auto" else "float32 (as asked)"
    print(f"dtype: {why}", flush=True)
    model, tok = load_model("smollm2-135m-instruct", dtype=dtype)
    model.eval()
    drafts = {"none": {}, f"layers:{LAYERS}": draft_kwargs(truncated_draft(model, LAYERS)),
              "ngram": draft_kwargs("ngram")}
    results, outputs = {}, {}
    with torch.inference_mode():
        for kind, prompts in (("open", OPEN), ("edit", EDIT)):
            encoded = [tok(prompt_text(tok, p), return_tensors="pt", add_special_tokens=False) for p in prompts]
            model.generate(**encoded[0], max_new_tokens=4, do_sample=False)  # warm-up
            for name, extra in drafts.items():
                start, tokens = time.perf_counter(), 0
                for i, enc in enumerate(encoded):
                    out = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False, temperature=None,
                                         top_p=None, top_k=None, **extra)[0, enc["input_ids"].shape[1]:]
                    tokens += len(out)
                    outputs[(kind, i, name)] = out.tolist()
                results[(kind, name)] = tokens / (time.perf_counter() - start)
    identical = all(outputs[(k, i, n)] == outputs[(k, i, "none")] for (k, i, n) in outputs)
    for (k, i, n), out in outputs.items():
        plain = outputs[(k, i, "none")]
        if out != plain:
            first = next((j for j, (a, b) in enumerate(zip(out, plain)) if a != b), min(len(out), len(plain)))
            print(f"{k} prompt {i}, {n}: first differs from plain at token {first} of {len(plain)}")
    for kind in ("open", "edit"):
        base = results[(kind, "none")]
        print(f"{kind:>4}: plain {base:.1f} tok/s | " + " | ".join(
            f"{n} {results[(kind, n)]:.1f} tok/s ({results[(kind, n)] / base:.2f}x)" for n in drafts if n != "none"))
    layers = f"layers:{LAYERS}"
    speedup_layers = (results[("open", layers)] / results[("open", "none")]
                      + results[("edit", layers)] / results[("edit", "none")]) / 2
    figures = {"speedup_layers": speedup_layers,
               "speedup_ngram_open": results[("open", "ngram")] / results[("open", "none")],
               "speedup_ngram_edit": results[("edit", "ngram")] / results[("edit", "none")],
               "identical": int(identical)}
    tok_s = {f"{kind} {draft}": rate for (kind, draft), rate in results.items()}
    details = {"dtype": str(dtype).removeprefix("torch."), "tok_s": tok_s}
    save("speculative", {**figures, "details": details}, tag="" if args.dtype == "auto" else args.dtype)
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
