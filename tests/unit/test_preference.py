"""Preference data and held-out preference metrics: formats, splits, clear errors, the interval."""

from __future__ import annotations

import math

import pytest
import torch

from tests.jsonl import write_jsonl
from tunelab.config import DataConfig
from tunelab.data.preference import build_pairs, build_unpaired, unpair
from tunelab.errors import DataError
from tunelab.eval.preference import pair_metrics, wilson_interval

PAIRS = [{"prompt": f"Q{i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(10)]


def test_wilson_interval_matches_the_formula():
    # 60 of 100: p = 0.6, z = 1.96; center (p + z^2/2n) / (1 + z^2/n), half z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    z, n, p = 1.96, 100, 0.6
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = wilson_interval(60, 100)
    assert lo == pytest.approx(center - half) and hi == pytest.approx(center + half)
    assert lo == pytest.approx(0.5020, abs=1e-4)  # 60/100 is just above chance at 95%
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_pair_metrics_counts_strict_wins_and_mean_margin():
    m = pair_metrics(torch.tensor([2.0, 0.0, 1.0, 3.0]), torch.tensor([1.0, 0.0, 2.0, 0.0]))
    assert m["accuracy"] == 0.5  # the tie counts as a loss
    assert m["margin"] == pytest.approx((1 + 0 - 1 + 3) / 4)
    assert m["pairs"] == 4 and m["accuracy_lo95"] < 0.5 < m["accuracy_hi95"]


def test_pairs_split_with_a_seed(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    data = build_pairs(DataConfig(train=str(path), val_split=0.2), seed=1, objective="dpo")
    assert len(data.train) == 8 and len(data.validation) == 2
    assert build_pairs(DataConfig(train=str(path), val_split=0.2), seed=1, objective="dpo").validation == data.validation


def test_missing_rejected_names_the_line_field_and_objective(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": " yes"}])
    with pytest.raises(DataError, match=r"p\.jsonl:1.*missing field 'rejected'.*objective dpo needs preference pairs"):
        build_pairs(DataConfig(train=str(path)), seed=0, objective="dpo")


def test_instruction_data_is_refused_for_preference_objectives(tmp_path):
    path = write_jsonl(tmp_path / "i.jsonl", [{"instruction": "Say hi", "output": "hi"}])
    with pytest.raises(DataError, match="missing field 'prompt'.*objective rm"):
        build_pairs(DataConfig(train=str(path)), seed=0, objective="rm")
    with pytest.raises(DataError, match="holds instruction records; objective kto"):
        build_unpaired(DataConfig(train=str(path)), seed=0, objective="kto")


def test_pairs_become_one_good_and_one_bad_completion():
    out = unpair(PAIRS[:2])
    assert out == [{"prompt": "Q0?", "completion": " good 0", "label": True},
                   {"prompt": "Q0?", "completion": " bad 0", "label": False},
                   {"prompt": "Q1?", "completion": " good 1", "label": True},
                   {"prompt": "Q1?", "completion": " bad 1", "label": False}]
    shuffled = unpair(PAIRS, seed=3)
    assert sorted(map(str, shuffled)) == sorted(map(str, unpair(PAIRS))) and shuffled != unpair(PAIRS)


def test_kto_reads_unpaired_records_and_keeps_pairs_for_validation(tmp_path):
    rows = [{"prompt": f"Q{i}", "completion": f" a{i}", "label": i % 2 == 0} for i in range(6)]
    data = build_unpaired(DataConfig(train=str(write_jsonl(tmp_path / "u.jsonl", rows)), val_split=0), 0, "kto")
    assert data.train == rows and data.validation == []
    data = build_unpaired(DataConfig(train=str(write_jsonl(tmp_path / "p.jsonl", PAIRS)), val_split=0.2), 0, "kto")
    assert len(data.train) == 16 and len(data.validation) == 2 and "chosen" in data.validation[0]


def test_unpaired_label_must_be_true_or_false(tmp_path):
    path = write_jsonl(tmp_path / "u.jsonl", [{"prompt": "Q", "completion": " a", "label": "yes"}])
    expected = r"u\.jsonl: holds prompt_completion records; objective kto needs .*label \(true/false\)"
    with pytest.raises(DataError, match=expected):
        build_unpaired(DataConfig(train=str(path)), 0, "kto")
