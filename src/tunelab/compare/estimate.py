"""Each route's predicted cost before it runs, so the budget can be shared out and what cannot
fit is skipped with its reason.

Training and feature routes: `tunelab plan` of their run config (memory breakdown, steps,
seconds per step from a measured probe). Answering the test set, for every route: forward
FLOPs (2 per parameter and token; few-shot prompts carry k examples; label names run on the
prompt's cache; generation adds one forward per new token) at the forward-only rate measured by
the plan's probe of the same model (cached), plus the process start and model load.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from tunelab.config import RunConfig

START_S = 20.0  # a route's process: Python, torch and transformers imported, the model read
ANSWERED_NEW_TOKENS = 0.5  # generations stop at the answer's end: about half of max_new_tokens, on average


@dataclass
class Estimate:
    """A route's predicted cost: what the plan says before it runs."""

    seconds: float  # in all: start, training, answering the test set
    train_s: float
    infer_s: float
    peak_mb: float
    trainable_params: int
    artifact_bytes: int
    steps: int = 0  # optimizer steps of a full run (0: no gradient steps)
    seconds_per_step: float = 0.0
    start_s: float = START_S

    def to_dict(self) -> dict:
        return asdict(self)


def estimate(job: dict, measure: bool = True) -> Estimate:
    """The predicted cost of `job` (a route's job dict). `measure`: probe this machine's speed when no
    cached probe knows it (seconds); else a matrix-multiply benchmark stands in."""
    from tunelab.compare.planner import plan

    if job["family"] == "features":  # answering is embedding the test set with the same encoder
        p = plan(_run(job), probe=measure)
        infer = p.seconds_per_step * math.ceil(_lines(job["test"]) / job["run"]["method"]["batch_size"])
        return Estimate(START_S + p.seconds_total + infer, p.seconds_total, infer, p.peak_mb, p.trainable_params,
                        p.artifact_bytes)
    rate, total, base_mb = _forward_rate(job, measure)
    infer = _answer_flops(job, total) / rate
    if job["family"] == "training":
        p = plan(_run(job), probe=measure)
        train = p.seconds_total
        answering = total * 2 / 2**20  # the trained result is read again to answer, training's memory still held
        return Estimate(START_S + train + infer, train, infer, max(p.peak_mb + answering, base_mb),
                        p.trainable_params, p.artifact_bytes, p.steps, p.seconds_per_step)
    setup = 0.0
    if job.get("prompting", {}).get("select") == "similar":
        setup = _lines(job["train"]) * 0.002  # MiniLM embeds about 500 short texts a second on 2 cores
    return Estimate(START_S + setup + infer, setup, infer, base_mb, 0, 0)


def _run(job: dict) -> RunConfig:
    from tunelab.config import load_config

    return load_config(None, base=job["run"])


def _forward_rate(job: dict, measure: bool) -> tuple[float, int, float]:
    """(forward FLOP/s on this machine, the model's parameters, MiB a process answering holds)."""
    from tunelab.compare.planner import MB, Skeleton, _rss_bytes
    from tunelab.compare.probe import achieved_tflops
    from tunelab.config import load_config

    cfg = load_config(None, base={"model": {"name": job["model"]}, "objective": {"name": "classify"},
                                  "method": {"name": "probe"}, "data": {"train": job["train"]},
                                  "train": {"batch_size": job["batch_size"]}})
    skeleton = Skeleton.of(cfg)
    tflops, _, _ = achieved_tflops(cfg, skeleton, (job["batch_size"], 64), measure=measure)
    from tunelab.hardware import compute_dtype

    weights = skeleton.total * 4 + skeleton.total * compute_dtype("auto").itemsize  # read in float32, then cast
    return tflops * 1e12, skeleton.total, (_rss_bytes() + weights) / MB + 256  # + activations and the kv cache


def _answer_flops(job: dict, params: int) -> float:
    """Forward FLOPs of answering every test example the route's way."""
    from tunelab.data.readers import read_records

    records = [r.data for r in read_records(job["test"])]
    chars = sum(len(_text(r)) for r in records) / max(len(records), 1)
    tokens = chars / 4 + 40  # about 4 characters a token, plus the instruction and chat template
    settings = job.get("prompting", {})
    k = settings.get("k", 0)
    if job["kind"] == "labels":  # a prompt is read once; its label names run on its cache
        return 2.0 * params * len(records) * (tokens * (1 + k) + len(job["labels"]))
    samples = settings.get("self_consistency", 1)
    new = job["max_new_tokens"] * ANSWERED_NEW_TOKENS * (2 if settings.get("cot") else 1)
    context = tokens * (1 + k) + (settings.get("top_k", 0) * 120 if job["family"] == "retrieval" else 0)
    decode_penalty = 6.0  # one token per step: a small matrix product runs far below the batched rate
    return 2.0 * params * len(records) * samples * (context + new * decode_penalty)


def _text(record: dict) -> str:
    if "text" in record:
        return str(record["text"])
    if "messages" in record:
        return " ".join(str(m.get("content", "")) for m in record["messages"][:-1])
    return str(record.get("prompt", ""))


def _lines(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)
