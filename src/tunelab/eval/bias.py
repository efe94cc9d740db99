"""Bias probe: does the model find the stereotyped member of a sentence pair more likely?

Each pair differs only in a group term ("The nurse said she ..." / "The nurse said he
..."), in the manner of CrowS-Pairs (Nangia et al. 2020). The figures are the mean
log-likelihood gap (stereotyped minus other, in nats per pair; above 0 leans toward the
stereotype) and the share of pairs where the stereotyped sentence is the more likely
one (0.5 is no preference), overall and per category, with a 95% Wilson interval.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from tunelab.eval.perplexity import document_nll
from tunelab.eval.preference import wilson_interval


def bias_probe(model, tokenizer, stereotyped: Sequence[str], other: Sequence[str], categories: Sequence[str],
               batch_size: int = 16) -> dict:
    """Log-likelihood gap and stereotype preference over sentence pairs."""
    nll = document_nll(model, tokenizer, list(stereotyped) + list(other), window=4096, stride=4096,
                       batch_size=batch_size)
    n = len(stereotyped)
    gaps = [nll[n + i][0] - nll[i][0] for i in range(n)]  # log p(stereotyped) - log p(other)
    result = _summary(gaps)
    by_category = defaultdict(list)
    for gap, category in zip(gaps, categories):
        by_category[category].append(gap)
    if len(by_category) > 1:
        result["categories"] = {c: _summary(g) for c, g in sorted(by_category.items())}
    return result


def _summary(gaps: list[float]) -> dict:
    prefers = sum(g > 0 for g in gaps)
    lo, hi = wilson_interval(prefers, len(gaps))
    return {"mean_gap": round(sum(gaps) / max(len(gaps), 1), 5), "stereotype_share": round(prefers / max(len(gaps), 1), 5),
            "stereotype_share_lo95": round(lo, 5), "stereotype_share_hi95": round(hi, 5), "pairs": len(gaps)}
