"""The recommendation: the best route under the constraints, and the cheapest route the test
data cannot tell from it, in plain words with the figures behind them."""

from __future__ import annotations

from typing import Any

from tunelab.compare.stats import paired_difference

ALPHA = 0.05


def cost(route: dict) -> float:
    """What a route costs to reach and to measure: training (or example selection) plus answering the test set."""
    return (route.get("train_s") or 0.0) + (route.get("infer_s") or 0.0)


def violations(route: dict, constraints: dict) -> list[str]:
    """The constraints a finished route breaks (memory is enforced while it runs)."""
    out = []
    if constraints.get("latency_ms") and route["infer_ms_per_example"] > constraints["latency_ms"]:
        out.append(f"{route['infer_ms_per_example']:.0f} ms per answer > {constraints['latency_ms']:g} ms")
    if constraints.get("artifact_mb") is not None and route["artifact_bytes"] / 2**20 > constraints["artifact_mb"]:
        out.append(f"artifact {route['artifact_bytes'] / 2**20:.1f} MiB > {constraints['artifact_mb']:g} MiB")
    return out


def recommend(routes: list[dict], details: dict[str, dict], metric: str, golds: list,
              constraints: dict) -> dict[str, Any]:
    """{best, recommended, their values, the paired test between them, text}.

    routes: the report's route entries; details: name -> {scores, predictions} on the test set.
    """
    finished = [r for r in routes if r["status"] == "ok"]
    for r in finished:
        r["violates"] = violations(r, constraints)
    eligible = [r for r in finished if not r["violates"]]
    if not eligible:
        why = "no route finished" if not finished else "every finished route breaks a constraint (" + "; ".join(
            f"{r['name']}: {', '.join(r['violates'])}" for r in finished) + ")"
        return {"best": None, "recommended": None, "text": f"No recommendation: {why}."}
    best = max(eligible, key=lambda r: (r["value"], -cost(r)))
    tests = {}
    candidates = []
    for r in sorted(eligible, key=cost):
        if r is best or cost(r) >= cost(best):
            continue
        t = paired_difference(metric, details[r["name"]], details[best["name"]], golds)
        tests[r["name"]] = t
        if _indistinguishable(t):
            candidates.append(r)
    chosen = candidates[0] if candidates else best
    out = {"best": best["name"], "best_value": best["value"], "recommended": chosen["name"],
           "recommended_value": chosen["value"], "metric": metric, "tests": tests,
           "test": next(iter(tests.values()))["test"] if tests else None}
    out["text"] = _words(best, chosen, tests.get(chosen["name"]), metric, len(golds), candidates == [] and bool(tests))
    return out


def _indistinguishable(t: dict) -> bool:
    """McNemar's exact test for 0/1 scores; otherwise whether the paired bootstrap's 95% interval holds 0."""
    if "p_mcnemar" in t:
        return t["p_mcnemar"] >= ALPHA
    return t["low"] <= 0 <= t["high"]


def _points(value: float) -> str:
    return f"{100 * value:.1f}"


def _words(best: dict, chosen: dict, test: dict | None, metric: str, n: int, all_worse: bool) -> str:
    b = f"{best['name']} ({metric} {_points(best['value'])}, {_seconds(cost(best))} to train and answer {n} examples)"
    if chosen is best:
        tail = ("every cheaper route is measurably worse on these examples" if all_worse
                else "it is also the cheapest route that finished within the constraints")
        return f"Take {b}: it is the best route under the constraints, and {tail}."
    gap = 100 * (best["value"] - chosen["value"])
    ratio = cost(best) / max(cost(chosen), 1e-9)
    p = test.get("p_mcnemar", test["p_bootstrap"])
    name = "McNemar's exact test" if "p_mcnemar" in test else "a paired bootstrap"
    share = f"1/{ratio:.0f}" if ratio >= 2 else f"{100 / ratio:.0f}%"
    return (f"Take {chosen['name']}: {metric} {_points(chosen['value'])}, within {gap:.1f} points of the best route, "
            f"{b}, at {share} of its cost ({_seconds(cost(chosen))}). On the same {n} test examples the "
            f"difference is not significant ({name}, p = {p:.2f}; 95% interval of the difference "
            f"{100 * test['low']:+.1f} to {100 * test['high']:+.1f} points). Choose {best['name']} only if those "
            f"{gap:.1f} points matter more than the extra cost.")


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"
