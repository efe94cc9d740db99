"""tunelab's multiple-choice accuracy against lm-evaluation-harness's own command line, on the
same local files and the same model: SST-2 dev posed as two endings, and a 4-way GSM8K set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.realdata, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_acc_and_acc_norm_equal_the_harness_within_half_a_point(shared_data, default_model_dir, tmp_path):
    env = {**os.environ, "TUNELAB_BENCH_RESULTS": str(tmp_path)}  # its saved figures stay out of bench/results
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "eval_choice.py"), "--agreement"], env=env,
                         capture_output=True, text=True, check=True, timeout=1500).stdout
    last = dict(pair.split("=") for pair in out.strip().splitlines()[-1].split())
    for key in ("sst2_dev_acc", "sst2_dev_acc_norm", "gsm8k_choice_acc", "gsm8k_choice_acc_norm"):
        ours, theirs = map(float, last[key].split("/"))
        assert abs(ours - theirs) * 100 <= 0.5, (key, ours, theirs)
    assert float(last["max_diff_points"]) <= 0.5
