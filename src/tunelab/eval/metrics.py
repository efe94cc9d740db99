"""Metrics over generated text, as used by `tunelab eval` for generation tasks.

Covered: SQuAD exact match and token F1 (Rajpurkar et al. 2016, official v1.1 normalisation),
corpus BLEU (Papineni et al. 2002, via sacrebleu), chrF (Popović 2015, via sacrebleu),
ROUGE-L (Lin 2004, via rouge_score), numeric answers (GSM8K `#### n` style), JSON records
(see `json_match`) and classification by label words.

Shares and rates are fractions in [0, 1]; BLEU and chrF keep sacrebleu's 0-100 scale.
All figures are rounded to 5 decimals. A gold may be a string or a list of acceptable
strings: per-example scores take the best gold, BLEU/chrF use them as multiple references.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from tunelab.errors import ConfigError, DataError
from tunelab.eval.json_match import score_json

Gold = str | Sequence[str]
_PUNCTUATION = set(string.punctuation)


def _golds(gold: Any) -> list[str]:
    if isinstance(gold, (list, tuple)):
        if not gold:
            raise DataError("a gold answer is an empty list; give at least one acceptable answer")
        return [str(g) for g in gold]
    return [str(gold)]


def _mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 5) if values else 0.0


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def _f1(pred: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(preds: Sequence[str], golds: Sequence[Gold]) -> float:
    """Share of predictions equal to some gold after SQuAD normalisation."""
    return _mean([max(float(normalize_answer(p) == normalize_answer(g)) for g in _golds(gs))
                  for p, gs in zip(preds, golds, strict=True)])


def token_f1(preds: Sequence[str], golds: Sequence[Gold]) -> float:
    """Mean SQuAD token-overlap F1, best gold per example."""
    return _mean([max(_f1(p, g) for g in _golds(gs)) for p, gs in zip(preds, golds, strict=True)])


def _reference_streams(golds: Sequence[Gold]) -> list[list[str]]:
    refs = [_golds(g) for g in golds]
    width = max((len(r) for r in refs), default=1)
    return [[r[i] if i < len(r) else r[0] for r in refs] for i in range(width)]


def bleu(preds: Sequence[str], golds: Sequence[Gold]) -> float:
    """sacrebleu corpus BLEU (0-100); a list of golds gives multiple references."""
    import sacrebleu

    return round(float(sacrebleu.corpus_bleu(list(preds), _reference_streams(golds)).score), 5)


def chrf(preds: Sequence[str], golds: Sequence[Gold]) -> float:
    """sacrebleu corpus chrF (0-100); a list of golds gives multiple references."""
    import sacrebleu

    return round(float(sacrebleu.corpus_chrf(list(preds), _reference_streams(golds)).score), 5)


def rouge_l(preds: Sequence[str], golds: Sequence[Gold]) -> float:
    """Mean ROUGE-L F-measure (Porter stemming), best gold per example."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _mean([max(scorer.score(g, p)["rougeL"].fmeasure for g in _golds(gs))
                  for p, gs in zip(preds, golds, strict=True)])


_NUMBER = re.compile(r"(?:(?<!\w)[-+])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def extract_number(text: str) -> float | None:
    """The number after the last `####` if any, else the last number in the text; None if none.

    Commas as thousands separators, signs and decimals are read; `$` is ignored.
    """
    text = str(text).replace("$", "")
    if "####" in text:
        found = _NUMBER.search(text.rsplit("####", 1)[1])
        if found:
            return float(found.group().replace(",", ""))
    found = _NUMBER.findall(text)
    return float(found[-1].replace(",", "")) if found else None


def _gold_number(gold: Any, index: int) -> float:
    value = float(gold) if isinstance(gold, (int, float)) and not isinstance(gold, bool) else extract_number(gold)
    if value is None:
        raise DataError(f"gold answer #{index} has no number: {gold!r}")
    return value


def numeric_accuracy(preds: Sequence[str], golds: Sequence[Any]) -> float:
    """Share of predictions whose number equals the gold's (relative tolerance 1e-6)."""
    scores = []
    for i, (pred, gold) in enumerate(zip(preds, golds, strict=True)):
        value = extract_number(pred)
        targets = [_gold_number(g, i) for g in (gold if isinstance(gold, (list, tuple)) else [gold])]
        scores.append(float(value is not None and any(math.isclose(value, t, rel_tol=1e-6, abs_tol=1e-9)
                                                      for t in targets)))
    return _mean(scores)


def json_fields(preds: Sequence[str], golds: Sequence[dict | str]) -> dict[str, float]:
    """{"json_valid", "json_exact", "field_accuracy"} as fractions; golds are dicts or JSON object strings."""
    records = []
    for i, gold in enumerate(golds):
        record = json.loads(gold) if isinstance(gold, str) else gold
        if not isinstance(record, dict):
            raise DataError(f"gold answer #{i} is not a JSON object: {gold!r}")
        records.append(record)
    if len(preds) != len(records):
        raise ValueError(f"{len(preds)} predictions but {len(records)} golds")
    pct = score_json([str(p) for p in preds], records)
    names = {"json_valid": "json_valid", "json_exact": "exact_match", "field_accuracy": "field_accuracy"}
    return {name: round(pct[key] / 100, 5) for name, key in names.items()}


_UNMATCHED = "\x00unmatched"


def _label_patterns(labels: Any) -> list[tuple[str, re.Pattern]]:
    if not isinstance(labels, dict) or not labels:
        raise ConfigError("metric 'label' needs option `labels`: a mapping of label name to the words that signal it, "
                          "e.g. labels: {positive: [positive, good], negative: [negative, bad]}")
    patterns = []
    for name, words in labels.items():
        words = [words] if isinstance(words, str) else list(words or [])
        if not words:
            raise ConfigError(f"option `labels`: label {name!r} has no words; e.g. {name}: [{name}]")
        for word in words:
            patterns.append((str(name), re.compile(r"(?<!\w)" + re.escape(str(word).lower()) + r"(?!\w)")))
    return patterns


def _label_of(pred: str, patterns: list[tuple[str, re.Pattern]]) -> str:
    """The label of the earliest match (the longest at equal starts, then the first listed)."""
    hits = [(m.start(), -len(m.group()), i) for i, (_, p) in enumerate(patterns) if (m := p.search(pred.lower()))]
    return patterns[min(hits)[2]][0] if hits else _UNMATCHED


def label_words(preds: Sequence[str], golds: Sequence[Any], labels: dict[str, Sequence[str]]) -> dict[str, float]:
    """Classify each prediction by its earliest whole-word label word; score against gold label names.

    Returns {"label_accuracy", "label_macro_f1", "label_unmatched"}; macro F1 is over the gold
    label set, with unmatched predictions counted as a separate (always wrong) class.
    """
    from sklearn.metrics import f1_score

    patterns = _label_patterns(labels)
    known = {name for name, _ in patterns}
    gold_names = [str(g) for g in golds]
    for i, gold in enumerate(gold_names):
        if gold not in known:
            raise DataError(f"gold label #{i} {gold!r} is not in option `labels` ({', '.join(sorted(known))})")
    predicted = [_label_of(str(p), patterns) for p in preds]
    macro = f1_score(gold_names, predicted, labels=sorted(set(gold_names)), average="macro", zero_division=0) \
        if gold_names else 0.0
    return {"label_accuracy": _mean([float(p == g) for p, g in zip(predicted, gold_names, strict=True)]),
            "label_macro_f1": round(float(macro), 5),
            "label_unmatched": _mean([float(p == _UNMATCHED) for p in predicted])}


GENERATION_METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "exact_match": lambda preds, golds, **_: {"exact_match": exact_match(preds, golds)},
    "f1": lambda preds, golds, **_: {"f1": token_f1(preds, golds)},
    "bleu": lambda preds, golds, **_: {"bleu": bleu(preds, golds)},
    "chrf": lambda preds, golds, **_: {"chrf": chrf(preds, golds)},
    "rouge_l": lambda preds, golds, **_: {"rouge_l": rouge_l(preds, golds)},
    "numeric": lambda preds, golds, **_: {"numeric_accuracy": numeric_accuracy(preds, golds)},
    "json": lambda preds, golds, **_: json_fields(preds, golds),
    "label": lambda preds, golds, labels=None, **_: label_words(preds, golds, labels),
}


def score_generations(metrics: list[str], preds: Sequence[str], golds: Sequence[Any],
                      options: dict | None = None) -> dict[str, float]:
    """Run the named metrics over predictions and golds; one merged dict of figures."""
    unknown = [m for m in metrics if m not in GENERATION_METRICS]
    if unknown:
        raise ConfigError(f"unknown generation metric(s) {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(GENERATION_METRICS)}")
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions but {len(golds)} golds")
    scores: dict[str, float] = {}
    for name in metrics:
        scores.update(GENERATION_METRICS[name](list(preds), list(golds), **(options or {})))
    return scores
