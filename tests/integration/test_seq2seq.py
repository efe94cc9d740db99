"""Objective sft on an encoder-decoder (a tiny random T5): source/target examples, every
method that supports seq2seq, reloading the run, and generating from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import T5ForConditionalGeneration

from tests.jsonl import read_jsonl, write_jsonl
from tunelab.config import load_config
from tunelab.data import Collator, build_sft
from tunelab.data.tokenize import IGNORE
from tunelab.models import load_run, load_tokenizer, save_tiny
from tunelab.objectives import run

WORDS = ["cat", "dog", "sun", "red", "box", "cup", "pen", "map"]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("t5") / "model", family="t5")


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    rows = [{"instruction": f"Repeat {w}", "output": w} for w in WORDS * 4]
    return write_jsonl(tmp_path_factory.mktemp("seq2seq") / "repeat.jsonl", rows)


def settings(model: Path, data: Path, out: Path, name: str, method: str, *extra) -> list[str]:
    return [f"model.name={model}", f"data.train={data}", "data.val_split=0", f"method={method}",
            f"train.output_dir={out}", f"train.run_name={name}", "train.precision=fp32", "train.overwrite=true",
            "train.batch_size=8", "train.max_steps=30", "train.logging_steps=1", *extra]


def base_of(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@pytest.mark.parametrize(("method", "lr"), [("lora", 1e-2), ("full", 1e-3), ("ia3", 1e-1), ("prompt", 3e-1),
                                            ("adapter", 1e-2)])
def test_method_trains_reloads_and_generates(method, lr, t5_dir, records, tmp_path):
    summary = run(load_config(None, settings(t5_dir, records, tmp_path / "runs", "s2s", method, f"train.lr={lr}")))
    folder = tmp_path / "runs" / "s2s"
    assert summary["task"] == "seq2seq" and summary["steps"] == 30
    losses = [r["loss"] for r in read_jsonl(folder / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 30
    assert summary["train_loss"] < losses[0]

    model, tokenizer = load_run(folder)
    assert isinstance(base_of(model), T5ForConditionalGeneration)
    assert next(model.parameters()).dtype == torch.float32
    model.eval()
    enc = tokenizer(["Repeat cat", "Repeat a longer word"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5)
    assert out.shape[0] == 2 and 2 <= out.shape[1] <= 6  # decoder start token + at most 5 new tokens
    assert (out[:, 0] == base_of(model).config.decoder_start_token_id).all()


def test_collated_labels_are_the_target_ending_with_eos(t5_dir, records):
    cfg = load_config(None, [f"model.name={t5_dir}", f"data.train={records}", "data.val_split=0"])
    tokenizer = load_tokenizer(t5_dir)
    data = build_sft(cfg.data, tokenizer, seq2seq=True)
    rows = read_jsonl(records)
    assert len(data.train) == len(rows)
    batch = Collator(tokenizer.pad_token_id)(data.train[:4])
    assert batch["labels"].shape[0] == 4
    for row, record in enumerate(rows[:4]):
        labels = [t for t in batch["labels"][row].tolist() if t != IGNORE]
        target = tokenizer(record["output"], add_special_tokens=False).input_ids
        assert labels == target + [tokenizer.eos_token_id]
        n = int(batch["attention_mask"][row].sum())
        source = tokenizer(record["instruction"], add_special_tokens=True).input_ids
        assert batch["input_ids"][row, :n].tolist() == source
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
    # padding in the labels is ignored by the loss, never a token to learn
    lengths = [len(x["labels"]) for x in data.train[:4]]
    for row, n in enumerate(lengths):
        assert (batch["labels"][row, n:] == IGNORE).all()


# ---------------------------------------------------------------- generation through tunelab


@pytest.fixture(scope="module")
def constant_run(t5_dir, tmp_path_factory) -> Path:
    """A full fine-tune that answers every request with "ok" (an easy target that 20 steps learn)."""
    root = tmp_path_factory.mktemp("constant")
    data = write_jsonl(root / "ok.jsonl", [{"instruction": f"Repeat {w}", "output": "ok"} for w in WORDS * 2])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test thread setting; tiny models want one
    try:
        run(load_config(None, settings(t5_dir, data, root / "runs", "ok", "full", "train.max_steps=20",
                                       "train.lr=1e-2", "train.logging_steps=5")))
    finally:
        torch.set_num_threads(threads)
    return root / "runs" / "ok"


def test_trained_model_generates_its_answer(constant_run):
    from tunelab.infer import prompt_text

    model, tokenizer = load_run(constant_run)
    model.eval()
    for prompt in ("Repeat cat", prompt_text(tokenizer, "Repeat cat")):
        enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=5)
        assert tokenizer.decode(out[0], skip_special_tokens=True) == "ok"


def test_tunelab_generate_returns_the_encoder_decoder_answer(constant_run):
    from tunelab.infer import DecodingConfig, generate

    model, tokenizer = load_run(constant_run)
    assert generate(model, tokenizer, ["Repeat cat", "Repeat dog"], DecodingConfig(max_new_tokens=5)) == ["ok", "ok"]
