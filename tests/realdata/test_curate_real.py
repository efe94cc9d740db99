"""Curation on real text: the benchmark's goals on planted duplicates and junk, and decontamination of
GSM8K training problems against the Self-Instruct user-oriented instructions with planted copies."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.data.curate.decontaminate import find_contamination
from tunelab.data.curate.io import records

pytestmark = pytest.mark.realdata
ROOT = Path(__file__).resolve().parents[2]


def test_planted_duplicates_and_junk_meet_the_goals(shared_data, tmp_path):
    env = {**os.environ, "TUNELAB_BENCH_RESULTS": str(tmp_path)}  # its saved figures stay out of bench/results
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "curate.py"), "--quick"], env=env,
                         capture_output=True, text=True, check=True, timeout=600).stdout
    last = {k: float(v) for k, v in (pair.split("=") for pair in out.strip().splitlines()[-1].split())}
    assert last["dedup_precision"] >= 0.95 and last["dedup_recall"] >= 0.95, out
    assert last["junk_removed"] >= 0.9 and last["clean_kept"] >= 0.95, out


def test_decontamination_finds_every_planted_copy_and_none_elsewhere(shared_data):
    evaluation = list(records(shared_data / "self_instruct" / "user_oriented.jsonl"))
    train = [data for data, _ in records(shared_data / "gsm8k" / "train.jsonl")][:3000]
    assert not find_contamination(train, evaluation).hits  # the two sets share nothing as given
    rng = random.Random(0)
    quotable = [k for k, (item, _) in enumerate(evaluation) if len(item["instruction"].split()) >= 8]
    planted = dict(zip(rng.sample(range(len(train)), 15), rng.sample(quotable, 15)))
    for i, k in planted.items():  # an instruction quoted inside a training problem, re-cased
        train[i] = {"question": f"{train[i]['question']} Also: {evaluation[k][0]['instruction'].lower()}",
                    "answer": train[i]["answer"]}
    found = find_contamination(train, evaluation)
    assert set(found.hits) == set(planted)
    for i, k in planted.items():
        assert evaluation[k][1] in found.hits[i]
