"""The objectives' real data from ../shared/data: preference pairs, prompts, raw text, and
the instruction-tuning example (skipped where the folder is missing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab import train
from tunelab.config import DataConfig, load_config
from tunelab.data.preference import build_pairs, build_unpaired
from tunelab.data.pretrain import build_pretrain

pytestmark = pytest.mark.realdata
ROOT = Path(__file__).resolve().parents[2]


def test_hh_pairs_split_into_train_and_at_least_300_held_out(shared_data):
    cfg = DataConfig(train=str(shared_data / "hh_rlhf_harmless/train.jsonl"), limit=1000, val_split=0.35)
    data = build_pairs(cfg, seed=42, objective="dpo")
    assert len(data.train) == 650 and len(data.validation) == 350 and not data.bad
    assert all(p["prompt"].endswith("\n\nAssistant:") for p in data.train + data.validation)
    assert len(build_unpaired(cfg, seed=42, objective="kto").train) == 1300


def test_tinyshakespeare_holds_out_its_last_tenth_of_lines(shared_data, tiny):
    _, tok = tiny
    text = (shared_data / "tinyshakespeare/input.txt").read_text()
    lines = text.splitlines(keepends=True)
    held = "".join(lines[len(lines) - round(len(lines) * 0.1):])
    data = build_pretrain(DataConfig(train=str(shared_data / "tinyshakespeare/input.txt"), val_split=0.1), tok, 256)
    tokens = sum(len(b["input_ids"]) for b in data.validation)
    assert abs(tokens - len(tok(held, add_special_tokens=False).input_ids)) < 256  # all but the short last block
    assert data.stats["train"]["tokens"] > 8 * tokens


@pytest.mark.slow
def test_instruction_tuning_example_runs_on_self_instruct(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    summary = train(load_config(ROOT / "examples/sft_self_instruct.yaml",
                                [f"train.output_dir={tmp_path}", "train.max_steps=2", "train.batch_size=2",
                                 "data.max_length=256", "data.validation=null", "data.val_split=0.05"]))
    assert summary["steps"] == 2 and summary["data"]["train"]["examples"] > 150
    assert summary["eval_loss"] > 0 and (tmp_path / "sft-self-instruct" / "adapter").is_dir()
