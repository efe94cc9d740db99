"""Real public data from ../shared/data through the data pipeline (skipped where the folder is missing)."""

import pytest

from tunelab.config import DataConfig
from tunelab.data import build_sft, load_records
from tunelab.data.tokenize import IGNORE

pytestmark = pytest.mark.realdata


@pytest.mark.parametrize("path, fmt, columns", [
    ("sst2/dev.jsonl", "classification", {}),
    ("hh_rlhf_harmless/train.jsonl", "preference", {}),
    ("self_instruct/seed_tasks.jsonl", "instruction", {}),
    ("self_instruct/user_oriented.jsonl", "instruction", {}),
    ("gsm8k/train.jsonl", "prompt_completion", {"question": "prompt", "answer": "completion"}),
    ("tinyshakespeare/input.txt", "text", {}),
    ("wikitext2/valid.txt", "text", {}),
])
def test_every_file_reads_and_detects(shared_data, path, fmt, columns):
    loaded = load_records(str(shared_data / path), DataConfig(columns=columns, limit=500))
    assert loaded.format == fmt and loaded.records and not loaded.bad


def test_gsm8k_sft_examples_end_with_the_stop_token(shared_data, tiny):
    """Chat-formatted GSM8K: answers learned, prompts masked, each answer ends with <|im_end|>."""
    _, tok = tiny
    end = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = DataConfig(train=str(shared_data / "gsm8k/train.jsonl"), columns={"question": "prompt", "answer": "completion"},
                     limit=64, max_length=2048, val_split=0.25)
    data = build_sft(cfg, tok)
    assert data.stats["train"]["examples"] == 48 and data.stats["validation"]["examples"] == 16
    for ex in data.train:
        learned = [t for t in ex["labels"] if t != IGNORE]
        assert learned[-1] == end
        assert tok.decode(learned[:-1]).rstrip().split("#### ")[-1].strip().replace(",", "").lstrip("-").isdigit()
        assert ex["labels"][0] == IGNORE


def test_truncation_is_reported(shared_data, tiny):
    _, tok = tiny
    cfg = DataConfig(train=str(shared_data / "gsm8k/train.jsonl"), columns={"question": "prompt", "answer": "completion"},
                     limit=50, max_length=300, val_split=0)
    stats = build_sft(cfg, tok).stats["train"]
    assert stats["truncated"] > 0 and stats["max"] <= 300
