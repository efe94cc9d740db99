"""Shared fixtures: tiny random models built in code, the real data folder (or a skip)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama-style model with a byte-level tokenizer, saved as a local HF folder."""
    from tunelab.models import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory) -> Path:
    """A one-output sequence classifier on a tiny model: any such folder serves as a reward model."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tunelab.models import save_tiny

    base = save_tiny(tmp_path_factory.mktemp("rm-base") / "model")
    folder = tmp_path_factory.mktemp("rm") / "model"
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture
def tiny():
    """(model, tokenizer) built fresh in memory."""
    from tunelab.models import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip the test when it is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is missing; these tests need the shared datasets beside the project root")
    return SHARED_DATA


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The real default model, converted once from its packaged GGUF (slow tests only)."""
    from tunelab.models import resolve

    return resolve("smollm2-135m-instruct")


@pytest.fixture(autouse=True)
def torch_threads(request):
    """One thread for tiny models (threads only add OpenMP synchronisation there); all for `slow` tests."""
    import torch

    before = torch.get_num_threads()
    if request.node.get_closest_marker("slow") is None:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from tunelab.models.hub import embedder_folder

    return AutoTokenizer.from_pretrained(str(embedder_folder("all-minilm-l6-v2")))


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT with the MiniLM vocabulary, saved as a sentence-transformers folder (mean pooling,
    unit vectors): `Embedder(str(folder))` loads it."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-embedder")
    tokenizer = _minilm_tokenizer()
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=512))
    bert.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    word = models.Transformer(str(root / "bert"), max_seq_length=256)
    folder = root / "model"
    SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean"),
                                 models.Normalize()], device="cpu").save(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_cross_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT scoring (question, passage) pairs with one output: a cross-encoder folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-cross-encoder") / "model"
    tokenizer = _minilm_tokenizer()
    torch.manual_seed(1)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=1))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
