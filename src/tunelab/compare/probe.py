"""How fast this machine trains a given model and method: a few measured steps, cached.

The plan counts a step's FLOPs; what this CPU achieves on them depends on its instruction
sets, threads, the precision and the shapes, so it is measured: the run's own model with
its method applied, one warm-up and five timed steps (forward, backward, AdamW) on a
batch of the run's shape, under the run's precision. The rate and the first step's extra time are cached per model,
method, precision, batch shape and CPU in the tunelab cache (`plan-probes.json`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tunelab.config import RunConfig

STEPS = 5  # timed steps (after one warm-up); their median is the rate: 3 varied by 20% run to run here
PROBE_VERSION = "3"  # part of the cache key: probes measured the old way are not reused
MAX_PROBE_LENGTH = 512  # longer rows are probed at this length: FLOP/s change little past it
# Probed at the length rows are padded to on average: short rows reach far fewer FLOP/s than long ones
# (sst2 at 8 x 25 tokens ran at half the rate of 8 x 64), so the rate is the one of the run's own shape.


def achieved_tflops(cfg: RunConfig, skeleton, rows: tuple[int, int],
                    measure: bool = True) -> tuple[float, float, str]:
    """(TFLOP/s a training step of `cfg` achieves here, the first step's extra seconds (kernel set-up,
    allocations), where the figures come from)."""
    from tunelab.hardware import compute_dtype

    batch, length = rows[0], max(8, min(rows[1], MAX_PROBE_LENGTH))
    dtype = str(compute_dtype(cfg.train.precision)).replace("torch.", "")
    key = "|".join([PROBE_VERSION, cfg.model.name, cfg.method_name, cfg.objective_name, dtype,
                    f"{batch}x{_bucket(length)}", cpu_model(), str(_threads())])  # the caps too: see cpu_model
    cache = _cache_file()
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if isinstance(known.get(key), dict):
        return known[key]["tflops"], known[key]["warmup_s"], "measured on this machine (cached probe)"
    if not measure:
        return _matmul_tflops(dtype), 0.0, f"a {dtype} matrix-multiply benchmark of this CPU (no probe)"
    tflops, warmup = _probe(cfg, skeleton, batch, length)
    known[key] = {"tflops": tflops, "warmup_s": warmup}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(known, indent=1))
    os.replace(tmp, cache)
    return tflops, warmup, f"measured on this machine ({STEPS} steps of {batch}x{length})"


def _probe(cfg: RunConfig, skeleton, batch: int, length: int) -> tuple[float, float]:
    import torch

    from tunelab.compare.planner import REFERENCE, flops_per_token
    from tunelab.hardware import compute_dtype
    from tunelab.methods import METHODS
    from tunelab.training.setup import load_for_training

    classify = cfg.objective_name in ("classify", "rm")
    features = METHODS[cfg.method_name].kind == "features"
    task = "classify" if classify and not features else "causal_lm"
    extra = {"num_labels": 2} if task == "classify" else {}
    if features:  # the frozen encoder as the probe loads it: a sentence embedder in float32, else the compute dtype
        from transformers import AutoModel

        from tunelab.models.loading import load_model

        encoder_dtype = torch.float32 if cfg.method.embedder else compute_dtype(cfg.train.precision)
        model, tokenizer = load_model(cfg.model, dtype=encoder_dtype, auto_class=AutoModel)
    else:
        model, tokenizer = load_for_training(cfg, task, **extra)
    vocab = min(len(tokenizer), model.get_input_embeddings().num_embeddings)
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(batch, dtype=torch.long) if task == "classify" else ids
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6) if trainable and not features else None
    dtype = compute_dtype(cfg.train.precision)
    model.train(not features)
    times = []
    for step in range(STEPS + 1):
        start = time.perf_counter()
        autocast = dtype != torch.float32 and not (features and cfg.method.embedder)  # embedders run in float32
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            if features:
                with torch.no_grad():
                    model(input_ids=ids)
            elif cfg.objective_name in REFERENCE:
                loss = _preference_loss(model, ids)
            else:
                loss = model(input_ids=ids, labels=labels).loss
        if optimizer is not None:
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)  # the first step also sets kernels and allocators up
    seconds = sorted(times[1:])[len(times) // 2 - 1]
    flops = batch * length * flops_per_token(skeleton, length, trained=not features, head=True)
    if cfg.objective_name in REFERENCE:  # the reference's forward pass, counted as the plan counts it
        flops += batch * length * flops_per_token(skeleton, length, trained=False)
    return flops / seconds / 1e12, max(0.0, times[0] - seconds)


def fit_seconds(examples: int, dim: int, method_cfg) -> float:
    """Seconds the probe's classifier takes to fit `examples` vectors of `dim` features, measured on
    synthetic two-class data of that shape (hidden states are harder to separate than these, so it
    is a floor)."""
    import numpy as np

    from tunelab.methods.probe import _pipeline

    rng = np.random.default_rng(0)
    X = rng.normal(size=(max(examples, 2), dim)).astype(np.float32)
    y = (X[:, : max(dim // 50, 1)].sum(1) + 3 * rng.normal(size=len(X)) > 0).astype(int)
    start = time.perf_counter()
    _pipeline(method_cfg).fit(X, y)
    return time.perf_counter() - start


def _preference_loss(model, ids):
    """A DPO-shaped step, as trl's costs: every row's log-probabilities over the whole vocabulary under
    the policy and, without gradients, under the reference (the same weights here; the same work),
    then the pairwise loss on first-half against second-half rows."""
    import torch
    import torch.nn.functional as F

    def logps(logits):
        return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)

    policy = logps(model(input_ids=ids).logits)
    with torch.no_grad():
        reference = logps(model(input_ids=ids).logits)
    margin = policy - reference
    half = max(ids.shape[0] // 2, 1)
    return -F.logsigmoid(0.1 * (margin[:half] - margin[half:2 * half])).mean() if ids.shape[0] > 1 else -margin.mean()


def _matmul_tflops(dtype: str) -> float:
    import torch

    a = torch.randn(1024, 1024, dtype=getattr(torch, dtype))
    a @ a
    start = time.perf_counter()
    for _ in range(4):
        a @ a
    return 4 * 2 * 1024**3 / (time.perf_counter() - start) / 1e12 * 0.5  # a training step reaches about half


def _bucket(length: int) -> int:
    return 1 << max(3, (length - 1).bit_length())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def cpu_model() -> str:
    """The CPU's model name and kind, with any instruction-set caps (an AVX2-capped AVX-512 CPU is
    another machine for speed)."""
    from tunelab.hardware import detect

    hw = detect()
    return " ".join([hw.model, f"({hw.kind})", *hw.limits])


def _cache_file() -> Path:
    from tunelab.models.hub import cache_dir

    return cache_dir() / "plan-probes.json"
