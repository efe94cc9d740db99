"""Generative classification: objective sft on text/label records (label names as answers),
scored by ranking the label names; and rank_labels against a one-example-at-a-time
brute-force computation."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
import torch.nn.functional as F

from tests.jsonl import read_jsonl, write_jsonl
from tunelab.config import load_config
from tunelab.eval.classification import name_scores, rank_labels
from tunelab.models import tiny_llama
from tunelab.objectives import run

FILLER = ["the", "a", "this", "my", "our", "film", "meal", "trip", "show", "book", "day", "was", "really",
          "quite", "so", "very"]


def keyword_rows(n: int, seed: int) -> list[dict]:
    """Alternating 1/0 labels; each text holds its class keyword."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = 1 if i % 2 == 0 else 0
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 5))]
        words.insert(rng.randint(0, len(words)), "great" if label else "awful")
        rows.append({"text": " ".join(words), "label": label})
    return rows


def test_sft_on_classification_records_reports_accuracy(tiny_model_dir, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", keyword_rows(40, seed=0))
    validation = write_jsonl(tmp_path / "validation.jsonl", keyword_rows(10, seed=1))
    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", f"data.train={train}", f"data.validation={validation}",
        "data.label_names={0: negative, 1: positive}", 'data.prompt_template="Sentiment of: {text}"',
        "objective=sft", "method=lora", f"train.output_dir={tmp_path / 'runs'}", "train.run_name=gen",
        "train.precision=fp32", "train.batch_size=8", "train.epochs=2", "train.lr=1e-2", "train.logging_steps=1",
    ])
    assert cfg.data.label_names == {"0": "negative", "1": "positive"}
    assert cfg.data.prompt_template == "Sentiment of: {text}"
    summary = run(cfg)
    folder = tmp_path / "runs" / "gen"

    saved = json.loads((folder / "summary.json").read_text())
    assert saved["task"] == "causal_lm" and saved["data"]["format"] == "classification"
    assert 0.0 <= saved["accuracy"] <= 1.0 and 0.0 <= saved["macro_f1"] <= 1.0
    assert summary["accuracy"] == saved["accuracy"] and summary["macro_f1"] == saved["macro_f1"]
    assert saved["eval_loss"] is not None
    rows = read_jsonl(folder / "metrics.jsonl")
    scored = [r for r in rows if "eval_accuracy" in r]
    assert scored and scored[-1]["eval_accuracy"] == saved["accuracy"]
    assert scored[-1]["eval_macro_f1"] == saved["macro_f1"]
    assert scored[-1]["step"] == saved["steps"]


# ---------------------------------------------------------------- rank_labels


QUESTIONS = ["Is this good?", "Tell me the sentiment of: awful day", "x",
             "A longer question, so that the batch needs padding on the right", "What now"]
NAMES = ["a", "b", "cd"]  # the last name is two tokens long
SAME_START = ["cd", "ce", "cf"]  # two tokens each, one first token: only the second token's score decides


def scorer(seed: int):
    """A tiny Llama whose answers depend on the question: an untied output head with large
    random weights (the tied one barely moves with the prompt)."""
    model, tokenizer = tiny_llama(seed=0)
    generator = torch.Generator().manual_seed(seed)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(model.lm_head.weight.shape, generator=generator) * 0.3)
    return model.eval(), tokenizer


@torch.no_grad()
def brute_force_scores(model, tokenizer, questions, names, system=None) -> list[list[float]]:
    """Sum of each name's token log-probabilities after the chat-templated question, one
    example at a time, without padding."""
    scores = []
    for question in questions:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = tokenizer(text, add_special_tokens=False).input_ids
        row = []
        for name in names:
            ids = tokenizer(name, add_special_tokens=False).input_ids
            full = prompt + ids  # a prompt-tuned model returns its virtual tokens' logits first: keep the last len(full)
            logp = F.log_softmax(model(input_ids=torch.tensor([full])).logits[0, -len(full):].float(), dim=-1)
            row.append(sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(ids)))
        scores.append(row)
    return scores


def winners(scores: list[list[float]]) -> list[int]:
    return [max(range(len(row)), key=row.__getitem__) for row in scores]


@pytest.fixture(scope="module")
def varied():
    """(model, tokenizer, brute-force scores of NAMES and of SAME_START) for the first seed
    whose best name differs between questions in both lists, so agreeing means more than
    one constant answer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in range(20):
            model, tokenizer = scorer(seed)
            scores = brute_force_scores(model, tokenizer, QUESTIONS, NAMES)
            same_start = brute_force_scores(model, tokenizer, QUESTIONS, SAME_START)
            if len(set(winners(scores))) > 1 and len(set(winners(same_start))) > 1:
                return model, tokenizer, scores, same_start
    finally:
        torch.set_num_threads(threads)
    pytest.fail("no seed in 0..19 gives question-dependent winners")


def test_name_lengths_differ(varied):
    _, tokenizer, _, _ = varied
    lengths = [len(tokenizer(n, add_special_tokens=False).input_ids) for n in NAMES]
    assert len(set(lengths)) > 1


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_rank_labels_matches_brute_force(varied, batch_size):
    model, tokenizer, scores, _ = varied
    assert rank_labels(model, tokenizer, QUESTIONS, NAMES, batch_size=batch_size) == winners(scores)


def test_rank_labels_scores_every_token_of_a_name(varied):
    model, tokenizer, _, same_start = varied
    assert rank_labels(model, tokenizer, QUESTIONS, SAME_START, batch_size=2) == winners(same_start)


def test_rank_labels_orders_every_pair_like_brute_force(varied):
    """Every pair of names ranked alone: together these fix each question's whole ordering,
    including where the two-token name falls."""
    model, tokenizer, scores, _ = varied
    for i, j in itertools.combinations(range(len(NAMES)), 2):
        expected = [0 if row[i] >= row[j] else 1 for row in scores]
        assert rank_labels(model, tokenizer, QUESTIONS, [NAMES[i], NAMES[j]], batch_size=2) == expected, (i, j)


def test_rank_labels_uses_the_system_prompt(varied):
    model, tokenizer, _, _ = varied
    system = "You label sentiment."
    expected = winners(brute_force_scores(model, tokenizer, QUESTIONS, NAMES, system=system))
    assert rank_labels(model, tokenizer, QUESTIONS, NAMES, batch_size=2, system=system) == expected


def test_name_scores_skip_the_virtual_tokens_of_prompt_tuning(varied):
    """Prompt tuning prepends virtual tokens to the logits too; scores must read the input's positions."""
    import copy

    from peft import PromptTuningConfig, get_peft_model

    model, tokenizer, _, _ = varied
    tuned = get_peft_model(copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    expected = torch.tensor(brute_force_scores(tuned, tokenizer, QUESTIONS, NAMES))
    torch.testing.assert_close(name_scores(tuned, tokenizer, QUESTIONS, NAMES, batch_size=2), expected,
                               rtol=1e-4, atol=1e-4)


def test_shared_prompt_cache_scores_equal_whole_sequences(varied):
    """The fast path (left-padded prompts read once, names run on their cache) gives the same
    log-likelihoods as scoring each prompt+name whole, for names of one and of several tokens."""
    from tunelab.eval.classification import _prompt, _whole_sequence_scores

    model, tokenizer, *_ = varied
    names = [*NAMES, *SAME_START]
    fast = name_scores(model, tokenizer, QUESTIONS, names, batch_size=3)
    prefix = [_prompt(tokenizer, q, None) for q in QUESTIONS]
    ids = [tokenizer(n, add_special_tokens=False).input_ids for n in names]
    assert any(len(i) > 1 for i in ids)
    torch.testing.assert_close(fast, _whole_sequence_scores(model, tokenizer, prefix, ids, 3), atol=1e-4, rtol=1e-4)
