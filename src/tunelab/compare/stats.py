"""The statistics behind the report: confidence intervals, paired tests, the Pareto front.

Every route answers the same test examples, so two routes are compared pairwise, example by
example: a paired bootstrap of the metric's difference (any metric, macro-F1 included), and
for 0/1 scores McNemar's exact test on the examples where the two disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 2000


def _metric(metric: str, golds: Sequence) -> Callable[[np.ndarray, Sequence, np.ndarray], float]:
    """f(scores, predictions, index) -> the metric over the examples at `index`."""
    if metric == "macro_f1":
        from sklearn.metrics import f1_score

        gold = np.asarray([str(g) for g in golds])

        def macro(scores, preds, idx):
            return float(f1_score(gold[idx], np.asarray([str(p) for p in preds])[idx], average="macro"))
        return macro
    return lambda scores, preds, idx: float(np.mean(scores[idx]))


def confidence_interval(metric: str, scores: Sequence[float], preds: Sequence, golds: Sequence,
                        seed: int = 0) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of the metric over the test examples."""
    scores = np.asarray(scores, dtype=float)
    n = len(scores)
    if n == 0:
        return 0.0, 0.0
    f = _metric(metric, golds)
    rng = np.random.default_rng(seed)
    values = [f(scores, preds, rng.integers(0, n, n)) for _ in range(RESAMPLES if metric != "macro_f1" else 500)]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def paired_difference(metric: str, a: dict, b: dict, golds: Sequence, seed: int = 0) -> dict:
    """Route a minus route b on the same examples: the difference, its 95% paired-bootstrap interval,
    the two-sided bootstrap p-value, and McNemar's exact p where scores are 0/1.

    a, b: {"scores": [...], "predictions": [...]}, in the same example order.
    """
    sa, sb = np.asarray(a["scores"], dtype=float), np.asarray(b["scores"], dtype=float)
    if len(sa) != len(sb):
        raise ValueError(f"paired test: {len(sa)} against {len(sb)} examples; both routes must answer the same set")
    n = len(sa)
    f = _metric(metric, golds)
    everything = np.arange(n)
    diff = f(sa, a["predictions"], everything) - f(sb, b["predictions"], everything)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(RESAMPLES if metric != "macro_f1" else 500):
        idx = rng.integers(0, n, n)
        draws.append(f(sa, a["predictions"], idx) - f(sb, b["predictions"], idx))
    draws = np.asarray(draws)
    low, high = np.percentile(draws, [2.5, 97.5])
    p_boot = min(1.0, 2 * min(float(np.mean(draws <= 0)), float(np.mean(draws >= 0))))
    out = {"difference": float(diff), "low": float(low), "high": float(high), "p_bootstrap": p_boot,
           "test": "paired bootstrap"}
    if set(np.unique(sa)) <= {0.0, 1.0} and set(np.unique(sb)) <= {0.0, 1.0}:
        out["p_mcnemar"] = mcnemar(sa, sb)
        out["test"] = "McNemar exact"
    return out


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """McNemar's exact two-sided p-value: of the examples exactly one route gets right, is either
    route right more often than a fair coin would be?"""
    from scipy.stats import binomtest

    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, metric) no other point beats: as good or better on both, better on one."""
    front = []
    for i, (cost, value) in enumerate(points):
        dominated = any(c <= cost and v >= value and (c < cost or v > value)
                        for j, (c, v) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])
