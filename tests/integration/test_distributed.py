"""Data-parallel training in two CPU processes (gloo) through accelerate.

Launched as the README says, with the shipped examples/accelerate/ddp.yaml (accelerate's
local multi-process launcher; a bare `accelerate launch --num_processes 2` on a CPU-only
machine starts one process). Without CUDA the Trainer talks through gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab import train
from tunelab.config import load_config

pytestmark = pytest.mark.distributed

# Rank 1 lags at every checkpoint, so a checkpoint finalised before every rank has written its
# part (rng_state_1.pth) would show: the missing file and an orphan staging folder.
LAUNCHED = """\
import os, sys, time
if os.environ.get("RANK") == "1":
    from transformers import Trainer
    save = Trainer._save_rng_state
    def slow(self, output_dir):
        time.sleep(1.0)
        return save(self, output_dir)
    Trainer._save_rng_state = slow
from tunelab.cli import main
sys.exit(main())
"""


def write_records(path: Path, n: int = 32) -> Path:
    """Records of different lengths, so the two ranks' batches hold different token counts."""
    rows = [{"instruction": f"Add {i} and {i * 7 % 13}." + " Please." * (i % 4), "output": f"The sum is {i + i * 7 % 13}."}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def settings(model_dir, data, out, name, batch_size) -> list[str]:
    # 32 records, global batch 8, 4 steps: one epoch with no ragged last batch.
    # fp32 and group_by_length off: the only differences left are summation order.
    return [f"model.name={model_dir}", f"data.train={data}", f"train.output_dir={out}", f"train.run_name={name}",
            f"train.batch_size={batch_size}", "train.max_steps=4", "train.save_steps=2", "train.logging_steps=1",
            "train.lr=1e-3", "train.warmup_ratio=0", "train.precision=fp32", "train.group_by_length=false",
            "data.val_split=0"]


def loss_rows(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir):
    """2 processes x batch 4 == 1 process x batch 8, same data order, same final loss and weights.

    Tolerance: relative 1e-5 on the loss, absolute 1e-5 on the adapter weights. In fp32 the
    two runs differ only in summation order: each rank sums its own 4 rows and gloo adds the
    two partial gradients, and each rank pads to its own longest row (other matmul shapes).
    That is ~1e-7 relative per step; Adam divides by sqrt(v) and can magnify it where a
    gradient element is near zero, hence the margin. Observed: losses within 9e-8 relative,
    weights within 3.4e-7 (of weights up to 0.13). A sharding or loss-scaling mistake is off
    by far more: other rows give another loss from step 1, and a wrong DDP scale doubles or
    halves the logged loss and grad_norm (Adam alone would hide it in the weights).
    """
    data = write_records(tmp_path / "train.jsonl")
    out = tmp_path / "runs"
    script = tmp_path / "launch_tunelab.py"
    script.write_text(LAUNCHED)
    config = Path(__file__).resolve().parents[2] / "examples" / "accelerate" / "ddp.yaml"
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes", "2",
            "--main_process_port", "0", str(script), "train"]
    for s in settings(tiny_model_dir, data, out, "ddp", 4):
        argv += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]

    single = train(load_config(None, settings(tiny_model_dir, data, out, "single", 8)))

    run = out / "ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == single["steps"] == 4
    assert summary["tokens_trained"] == single["tokens_trained"]  # every record once, counted on both ranks

    ddp_rows, one_rows = loss_rows(run), loss_rows(out / "single")
    assert [r["step"] for r in ddp_rows] == [1, 2, 3, 4]  # one row per step: only rank 0 writes
    for a, b in zip(ddp_rows, one_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert summary["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)

    ddp_w = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    one_w = load_file(str(out / "single" / "adapter" / "adapter_model.safetensors"))
    assert ddp_w.keys() == one_w.keys()
    for key in ddp_w:
        torch.testing.assert_close(ddp_w[key], one_w[key], rtol=0, atol=1e-5, msg=lambda m: f"{key}: {m}")

    # Only rank 0 wrote the run folder; checkpoints hold both ranks' RNG state and nothing is
    # left half-written even though rank 1 was slow to save.
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "checkpoints", "config.yaml", "loss.png",
                                                      "metrics.jsonl", "progress.json", "summary.json"]
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    for ckpt in checkpoints.iterdir():
        names = {p.name for p in ckpt.iterdir()}
        assert {"COMPLETE", "rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"} <= names, ckpt
    assert sorted(p.name for p in out.iterdir()) == ["ddp", "single"]
