"""Sliding-window perplexity: window arithmetic, batched scoring against a per-token loop, the figures."""

import math

import pytest
import torch

from tunelab.eval.perplexity import document_nll, perplexity_metrics, prefix_token, windows


@pytest.mark.parametrize("n,window,stride", [(10, 4, 2), (10, 4, 4), (10, 4, 9), (3, 8, 4), (2, 4, 1), (50, 16, 5)])
def test_windows_score_every_token_once_with_enough_context(n, window, stride):
    spans = windows(n, window, stride)
    scored = [t for _, end, first in spans for t in range(first, end)]
    assert scored == list(range(1, n))  # every token after the prefix, once, in order
    for begin, end, first in spans:
        assert 0 <= begin < first <= end and end - begin <= window
        if begin > 0:  # a token's context is at least window - stride (one token when disjoint)
            assert first - begin >= max(1, window - stride)


def test_windows_refuse_nonsense():
    with pytest.raises(ValueError):
        windows(10, 1, 1)


def _naive(model, tokenizer, text, window, stride):
    """One forward pass per scored token, on exactly the context its window gives it."""
    seq = [prefix_token(tokenizer)] + tokenizer.encode(text, add_special_tokens=False)
    total = 0.0
    with torch.no_grad():
        for begin, end, first in windows(len(seq), window, stride):
            for t in range(first, end):
                logits = model(torch.tensor([seq[begin:t]])).logits[0, -1].double()
                total -= float(torch.log_softmax(logits, -1)[seq[t]])
    return total, len(seq) - 1


@pytest.mark.parametrize("window,stride", [(12, 5), (8, 8), (64, 32)])
def test_batched_windows_equal_a_per_token_loop(tiny, window, stride):
    model, tokenizer = tiny
    model.eval()
    docs = ["the quick brown fox jumps over the lazy dog, twice over", "short", "a middle-sized line of text"]
    got = document_nll(model, tokenizer, docs, window=window, stride=stride, batch_size=3)
    for doc, (nll, n) in zip(docs, got):
        ref_nll, ref_n = _naive(model, tokenizer, doc, window, stride)
        assert n == ref_n
        assert nll == pytest.approx(ref_nll, rel=1e-5)


def test_more_context_changes_the_score(tiny):
    """The window really limits context: a wide window and a narrow one differ on a long text."""
    model, tokenizer = tiny
    doc = "abcdefghij" * 6
    (wide, _), = document_nll(model, tokenizer, [doc], window=64, stride=32)
    (narrow, _), = document_nll(model, tokenizer, [doc], window=4, stride=1)
    assert wide != pytest.approx(narrow, rel=1e-4)


def test_figures_follow_the_harness_definitions():
    docs = ["one two  three", "four"]
    nll = [(6.0, 5), (2.0, 3)]
    m = perplexity_metrics(docs, nll)
    assert m["tokens"] == 8 and m["words"] == 4 and m["bytes"] == len("one two  three") + 4
    assert m["perplexity"] == pytest.approx(math.exp(8 / 8), rel=1e-6)
    assert m["word_perplexity"] == pytest.approx(math.exp(8 / 4), rel=1e-6)
    assert m["byte_perplexity"] == pytest.approx(math.exp(8 / 18), rel=1e-6)
    assert m["bits_per_byte"] == pytest.approx(8 / 18 / math.log(2), rel=1e-6)
