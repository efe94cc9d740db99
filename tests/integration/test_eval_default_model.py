"""Evaluation figures on the real default model (SmolLM2-135M-Instruct)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunelab.eval.perplexity import document_nll, perplexity_metrics, prefix_token, windows
from tunelab.models import load_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_sliding_window_perplexity_matches_a_naive_reference(default_model_dir):
    """Batched windows against one forward pass per token on exactly its window's context, to 1e-4 relative."""
    model, tokenizer = load_model(str(default_model_dir), dtype=torch.float32)
    text = (ROOT / "examples" / "data" / "field_notes.txt").read_text()[:1200]
    window, stride = 96, 40
    (nll, n), = document_nll(model, tokenizer, [text], window=window, stride=stride, batch_size=4)
    seq = [prefix_token(tokenizer)] + tokenizer.encode(text, add_special_tokens=False)
    reference = 0.0
    with torch.no_grad():
        for begin, end, first in windows(len(seq), window, stride):
            for t in range(first, end):
                logits = model(input_ids=torch.tensor([seq[begin:t]])).logits[0, -1].double()
                reference -= float(torch.log_softmax(logits, -1)[seq[t]])
    assert n == len(seq) - 1 > 200
    ours = perplexity_metrics([text], [(nll, n)])
    theirs = perplexity_metrics([text], [(reference, n)])
    for key in ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4)
