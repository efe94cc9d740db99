"""Multiple choice by log-likelihood: equal to lm-evaluation-harness request by request, cache or not."""

import pytest
import torch

from tunelab.eval import choice
from tunelab.eval.choice import Question, choice_metrics, encode_pair, ending_loglikelihoods

QUESTIONS = [
    Question("Review: a warm, funny film.\nSentiment:", [" positive", " negative"], ["positive", "negative"], 0),
    Question("Q: what comes after one, two?\nA: ", ["three", "four and five", "zero"], ["three", "four and five",
                                                                                       "zero"], 0),
    Question("x", [" a", " bc", " a b c d"], ["a", "bc", "a b c d"], 2),  # a one-token context: no cache
    Question("The same start, then a long ending follows here:", [" yes", " no, definitely not that one"],
             ["yes", "no, definitely not that one"], 1),
]


def test_encode_pair_moves_trailing_space_to_the_ending(tiny):
    _, tokenizer = tiny
    context, ending = encode_pair(tokenizer, "Answer: ", "yes")
    assert tokenizer.decode(context) == "Answer:" and tokenizer.decode(ending) == " yes"


def test_equal_to_the_harness_loglikelihood(tiny):
    """lm-eval's own HFLM on the same in-memory model and the same (context, ending) requests."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = tiny
    model.eval()
    ours = ending_loglikelihoods(model, tokenizer, QUESTIONS, batch_size=2)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3)
    requests = [Instance("loglikelihood", {}, (q.context, e), i) for q in QUESTIONS for i, e in enumerate(q.endings)]
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    flat = [x for row in ours for x in row]
    assert flat == pytest.approx(theirs, rel=1e-4, abs=1e-4)


def test_shared_context_cache_equals_whole_sequences(tiny, monkeypatch):
    model, tokenizer = tiny
    model.eval()
    cached = ending_loglikelihoods(model, tokenizer, QUESTIONS, batch_size=4)
    monkeypatch.setattr(choice, "_is_prompt_learning", lambda m: True)  # forces the no-cache path
    whole = ending_loglikelihoods(model, tokenizer, QUESTIONS, batch_size=4)
    for a, b in zip(cached, whole):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-5)


def test_prompt_tuning_adapter_is_scored_whole(tiny):
    """Virtual tokens shift every position: the scores must still be those of the real tokens."""
    from peft import PromptTuningConfig, get_peft_model

    model, tokenizer = tiny
    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    peft_model.eval()
    q = QUESTIONS[0]
    got = ending_loglikelihoods(peft_model, tokenizer, [q])[0]
    for ending, score in zip(q.endings, got):
        context, cont = encode_pair(tokenizer, q.context, ending)
        with torch.no_grad():
            logits = peft_model(input_ids=torch.tensor([context + cont])).logits[0, -len(context + cont):]
        logp = torch.log_softmax(logits.float(), -1)
        want = sum(float(logp[len(context) - 1 + i, t]) for i, t in enumerate(cont))
        assert score == pytest.approx(want, rel=1e-5)


def test_acc_norm_divides_by_characters_and_acc_bytes_by_bytes():
    # ending 0: -4 over 2 chars (-2/char); ending 1: -6 over 6 chars (-1/char)
    q = Question("c", [" ab", " abcdef"], ["ab", "abcdef"], 1)
    m = choice_metrics([[-4.0, -6.0]], [q])
    assert (m["acc"], m["acc_norm"], m["acc_bytes"]) == (0.0, 1.0, 1.0)
    # "é" is one character but two bytes: -2.6 over 1 char/2 bytes (-1.3/byte) vs -4 over 3 (-1.33)
    q = Question("c", [" é", " abc"], ["é", "abc"], 0)
    m = choice_metrics([[-2.6, -4.0]], [q])
    assert (m["acc"], m["acc_norm"], m["acc_bytes"]) == (1.0, 0.0, 1.0)
    assert m["predictions"] == [{"pred": 0, "pred_norm": 1, "gold": 0}]


def test_lora_adapter_through_the_cache_equals_the_harness(tiny):
    """A LoRA model (moved off its start) scored through the shared-context cache, against HFLM."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.eval()
    long_contexts = [q for q in QUESTIONS if len(tokenizer.encode(q.context)) > 2]
    ours = [x for row in ending_loglikelihoods(peft_model, tokenizer, long_contexts) for x in row]
    lm = HFLM(pretrained=peft_model, tokenizer=tokenizer, batch_size=4)
    requests = [Instance("loglikelihood", {}, (q.context, e), i) for q in long_contexts
                for i, e in enumerate(q.endings)]
    theirs = [ll for ll, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-4)


def test_empty_context_scores_the_ending_from_the_start_token(tiny):
    model, tokenizer = tiny
    model.eval()
    (score,) = ending_loglikelihoods(model, tokenizer, [Question("", ["hello"], ["hello"], 0)])[0:1][0]
    ids = [tokenizer.eos_token_id if tokenizer.bos_token_id is None else tokenizer.bos_token_id]
    ids += tokenizer.encode("hello")
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    assert score == pytest.approx(sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)), rel=1e-5)
