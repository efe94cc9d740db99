from __future__ import annotations

import pytest
import sacrebleu

from tunelab.errors import ConfigError, DataError
from tunelab.eval.metrics import (
    GENERATION_METRICS,
    bleu,
    chrf,
    exact_match,
    extract_number,
    json_fields,
    label_words,
    normalize_answer,
    numeric_accuracy,
    rouge_l,
    score_generations,
    token_f1,
)

SENTIMENT = {"positive": ["positive", "good"], "negative": ["negative", "bad", "not good"]}


def test_normalize_answer_follows_squad():
    assert normalize_answer("  The Eiffel-Tower, in   Paris!  ") == "eiffeltower in paris"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match_ignores_case_articles_and_punctuation():
    preds = ["The Eiffel Tower!", "an apple.", "Paris, France", "42"]
    golds = ["eiffel tower", "apple", "Paris", ["forty-two", "42"]]
    assert exact_match(preds, golds) == 0.75


def test_token_f1_by_hand():
    # "cat sat" vs "cat sat on mat": precision 2/2, recall 2/4 -> F1 = 2/3
    assert token_f1(["the cat sat"], ["a cat sat on the mat"]) == 0.66667
    assert token_f1(["dog"], ["cat"]) == 0.0
    # best gold per example
    assert token_f1(["the cat sat"], [["dog", "cat sat"]]) == 1.0
    # empty after normalisation: 1 only if both are empty
    assert token_f1(["the"], ["a"]) == 1.0
    assert token_f1(["the"], ["cat"]) == 0.0


def test_bleu_identical_is_100_and_matches_sacrebleu():
    sentence = "the quick brown fox jumps over the lazy dog"
    assert bleu([sentence], [sentence]) == 100.0
    preds = ["the cat sat on the mat today", "a dog barked loudly at night"]
    golds = ["the cat sat on a mat", "the dog barked loudly all night"]
    expected = sacrebleu.corpus_bleu(preds, [golds]).score
    assert bleu(preds, golds) == pytest.approx(expected, abs=1e-5)
    assert 0 < bleu(preds, golds) < 100


def test_bleu_list_of_golds_is_multiple_references_padded_with_the_first():
    preds = ["the cat sat on the mat today", "a dog barked loudly at night"]
    golds = [["the cat sat on a mat", "the cat sat on the mat today"], "the dog barked loudly all night"]
    streams = [["the cat sat on a mat", "the dog barked loudly all night"],
               ["the cat sat on the mat today", "the dog barked loudly all night"]]
    assert bleu(preds, golds) == pytest.approx(sacrebleu.corpus_bleu(preds, streams).score, abs=1e-5)
    assert bleu(preds, golds) > bleu(preds, [golds[0][0], golds[1]])


def test_chrf_identical_is_100_and_matches_sacrebleu():
    assert chrf(["hello world"], ["hello world"]) == 100.0
    preds, golds = ["the cat sat on the mat"], ["the cat is on the mat"]
    assert chrf(preds, golds) == pytest.approx(sacrebleu.corpus_chrf(preds, [golds]).score, abs=1e-5)
    assert 0 < chrf(preds, golds) < 100


def test_rouge_l_by_hand():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" is 5 tokens of 6 each: F = 5/6
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == 0.83333
    # mean over examples, best gold per example
    assert rouge_l(["the cat sat on the mat", "red fox"], ["the cat is on the mat", ["blue dog", "red fox"]]) \
        == pytest.approx((5 / 6 + 1) / 2, abs=1e-5)


@pytest.mark.parametrize("text, expected", [
    ("#### 1,234", 1234.0),
    ("the answer is 42.", 42.0),
    ("-3.5 apples then 7", 7.0),
    ("-3.5 apples", -3.5),
    ("$18", 18.0),
    ("5 + 6 = 11 apples\n#### 11", 11.0),
    ("first 3 then #### -1,000.50 and 9 more", -1000.5),
    ("pages 3-4", 4.0),
    ("no number", None),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_numeric_accuracy_with_int_and_gsm8k_golds():
    preds = ["The answer is 18.", "so she sold 72 clips\n#### 72", "about 5", "no idea", "0.1"]
    golds = [18, "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", 6, 3, 0.1000000001]
    assert numeric_accuracy(preds, golds) == 0.6


def test_numeric_gold_without_number_is_a_data_error():
    with pytest.raises(DataError, match="#0"):
        numeric_accuracy(["1"], ["none"])


def test_json_fields_valid_invalid_partial():
    preds = ['{"name": "Ann", "age": 3}', "not json", 'Here: {"name": "bob", "age": 4}']
    golds = [{"name": "Ann", "age": 3}, {"name": "X", "age": 1}, '{"name": "Bob", "age": 5}']
    # valid 2/3, exact 1/3, fields 2 + 0 + 1 of 6
    assert json_fields(preds, golds) == {"json_valid": 0.66667, "json_exact": 0.33333, "field_accuracy": 0.5}


def test_label_words_earliest_match_and_unmatched():
    preds = ["Good movie, not bad at all", "Negative. Although parts were good", "It is not good",
             "goodness knows", "I'd say positive"]
    golds = ["positive", "negative", "negative", "positive", "negative"]
    # predicted: positive, negative, negative, unmatched, positive
    # F1 positive: P 1/2, R 1/2 -> 0.5; negative: P 2/2, R 2/3 -> 0.8; macro 0.65
    assert label_words(preds, golds, SENTIMENT) == {"label_accuracy": 0.6, "label_macro_f1": 0.65,
                                                    "label_unmatched": 0.2}


def test_label_words_prefers_longer_phrase_at_same_start():
    labels = {"neutral": ["not"], "negative": ["not good"]}
    assert label_words(["not good at all"], ["negative"], labels)["label_accuracy"] == 1.0


def test_registry_names_and_outputs():
    assert set(GENERATION_METRICS) == {"exact_match", "f1", "bleu", "chrf", "rouge_l", "numeric", "json", "label"}
    scores = score_generations(["exact_match", "f1", "numeric"], ["the cat sat 4"], ["a cat sat on the mat 4"])
    assert scores == {"exact_match": 0.0, "f1": 0.75, "numeric_accuracy": 1.0}
    scores = score_generations(["label"], ["bad"], ["negative"], {"labels": SENTIMENT})
    assert scores == {"label_accuracy": 1.0, "label_macro_f1": 1.0, "label_unmatched": 0.0}


def test_unknown_metric_lists_known_names():
    with pytest.raises(ConfigError, match="'bluer'.*known: exact_match, f1, bleu"):
        score_generations(["bluer"], ["a"], ["a"])


def test_label_without_labels_option_is_a_config_error():
    with pytest.raises(ConfigError, match="`labels`.*e.g."):
        score_generations(["label"], ["good"], ["positive"])


def test_length_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match="2 predictions but 1 golds"):
        score_generations(["f1"], ["a", "b"], ["a"])


def test_label_gold_outside_labels_is_a_data_error():
    with pytest.raises(DataError, match="'neutral'"):
        label_words(["good"], ["neutral"], SENTIMENT)
