"""Continued pretraining on a tiny model: the loss is the plain next-token loss over every
token, validation perplexity falls, the run resumes, and wrong data is one clear error."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.crash import SimulatedCrash, crash_at
from tests.jsonl import write_jsonl
from tunelab import train
from tunelab.config import ModelConfig, load_config
from tunelab.data.pretrain import build_pretrain
from tunelab.errors import DataError
from tunelab.models.loading import load_model
from tunelab.training.trainer import latest_checkpoint


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    lines = [f"The {w} fox jumps over the lazy dog number {i % 7}." for i, w in
             zip(range(300), ["quick", "brown", "sly", "red"] * 75)]
    path = tmp_path_factory.mktemp("pt") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def settings(model_dir, data, out, name, *extra) -> list[str]:
    return [f"model.name={model_dir}", f"data.train={data}", "objective=pt", f"train.output_dir={out}",
            f"train.run_name={name}", "data.max_length=64", "train.batch_size=4", "train.lr=3e-3",
            "train.logging_steps=1", "train.precision=fp32", *extra]


def test_perplexity_is_exp_of_the_mean_token_loss(corpus, tmp_path, tiny_model_dir):
    """perplexity_before, from the trainer, against a plain loop: every block, every next token."""
    summary = train(load_config(None, settings(tiny_model_dir, corpus, tmp_path, "ppl", "train.max_steps=1")))
    model, tok = load_model(ModelConfig(name=str(tiny_model_dir)), dtype=torch.float32)
    cfg = load_config(None, settings(tiny_model_dir, corpus, tmp_path, "x"))
    blocks = build_pretrain(cfg.data, tok, 64).validation
    nll, count = 0.0, 0
    with torch.no_grad():
        for b in blocks:
            ids = torch.tensor([b["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            nll += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    assert summary["perplexity_before"] == pytest.approx(math.exp(nll / count), rel=1e-4)


def test_pt_lowers_validation_perplexity(corpus, tmp_path, tiny_model_dir):
    summary = train(load_config(None, settings(tiny_model_dir, corpus, tmp_path, "pt", "train.max_steps=30")))
    assert summary["perplexity_after"] < 0.8 * summary["perplexity_before"]
    assert summary["perplexity_drop"] == pytest.approx(1 - summary["perplexity_after"] / summary["perplexity_before"],
                                                       abs=1e-4)
    run = tmp_path / "pt"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png", "adapter/adapter_config.json"):
        assert (run / name).is_file(), name
    assert "eval_perplexity" in (run / "metrics.jsonl").read_text()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_pt_resumes_from_its_checkpoint(method, corpus, tmp_path, tiny_model_dir, monkeypatch):
    common = [f"method={method}", "train.max_steps=6", "train.save_steps=2", "train.save_total_limit=3"]
    straight = train(load_config(None, settings(tiny_model_dir, corpus, tmp_path, "straight", *common)))
    crash_at(monkeypatch, 5)
    with pytest.raises(SimulatedCrash):
        train(load_config(None, settings(tiny_model_dir, corpus, tmp_path, "resumed", *common)))
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-4"
    resumed = train(load_config(None, settings(tiny_model_dir, corpus, tmp_path, "resumed", *common,
                                               "train.resume=true")))
    assert resumed["resumed_from"] == "checkpoint-4"
    assert resumed["perplexity_after"] == pytest.approx(straight["perplexity_after"], rel=1e-5)


def test_pt_on_records_without_text_is_one_clear_error(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "chat.jsonl", [{"instruction": "hi", "output": "hello"}])
    with pytest.raises(DataError, match=r"chat\.jsonl:1.*missing field 'text'.*objective pt reads raw text"):
        train(load_config(None, settings(tiny_model_dir, data, tmp_path, "bad")))


def test_pt_with_qlora(corpus, tmp_path, tiny_model_dir):
    summary = train(load_config(None, settings(tiny_model_dir, corpus, tmp_path, "q", "method=qlora",
                                               "train.max_steps=2")))
    assert summary["steps"] == 2 and summary["perplexity_after"] > 0
