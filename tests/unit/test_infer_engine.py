"""The transformers engine on tiny random models: continuous batching gives what one-at-a-time
decoding gives, every decoding option does what it says, structured output always validates,
speculative decoding changes nothing but speed."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.errors import ConfigError
from tunelab.infer import Constraint, DecodingConfig, Request, stream
from tunelab.infer.backends.transformers import TransformersEngine
from tunelab.infer.engine import generate
from tunelab.infer.generate import generation_kwargs, prompt_text
from tunelab.infer.quantize import Int8Linear, quantize_int8
from tunelab.infer.text import TextStream
from tunelab.models import tiny_llama

PROMPTS = ["a", "hello there, how are you today?", "xyz", "a much longer prompt than the others, with words", "ok"]


@pytest.fixture
def model_tok():
    model, tok = tiny_llama(init_std=0.5)  # confident logits: greedy answers vary by prompt
    return model.eval(), tok


def answers(engine, prompts, cfg, **kw):
    return generate(engine, [Request(p, cfg, **kw) for p in prompts])


def test_batched_answers_equal_one_at_a_time_and_transformers_generate(model_tok):
    model, tok = model_tok
    cfg = DecodingConfig(max_new_tokens=12)
    batched = answers(TransformersEngine(model, tok, max_batch_size=2), PROMPTS, cfg)  # rows join and leave
    alone = [answers(TransformersEngine(model, tok, max_batch_size=1), [p], cfg)[0] for p in PROMPTS]
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    for p, c in zip(PROMPTS, batched):
        enc = tok(prompt_text(tok, p), return_tensors="pt", add_special_tokens=False)
        out = model.generate(**enc, **generation_kwargs(model, tok, cfg))[0, enc.input_ids.shape[1]:].tolist()
        assert c.token_ids == [t for t in out if t not in (tok.eos_token_id, tok.pad_token_id)]


def test_seeded_sampling_does_not_depend_on_the_batch(model_tok):
    model, tok = model_tok
    cfg = DecodingConfig(max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50, seed=5)
    alone = answers(TransformersEngine(model, tok), ["hello"], cfg)[0].token_ids
    crowd = generate(TransformersEngine(model, tok), [Request("other", DecodingConfig(max_new_tokens=10, temperature=1.0)),
                                                     Request("hello", cfg)])
    assert crowd[1].token_ids == alone
    unseeded = {tuple(answers(TransformersEngine(model, tok), ["hello"],
                              DecodingConfig(max_new_tokens=10, temperature=1.0))[0].token_ids) for _ in range(4)}
    assert len(unseeded) > 1


def test_top_k_one_is_greedy_and_min_p_one_is_greedy(model_tok):
    model, tok = model_tok
    greedy = answers(TransformersEngine(model, tok), PROMPTS[:3], DecodingConfig(max_new_tokens=8))
    for cfg in (DecodingConfig(max_new_tokens=8, temperature=1.0, top_k=1),
                DecodingConfig(max_new_tokens=8, temperature=1.0, min_p=1.0)):
        assert [c.token_ids for c in answers(TransformersEngine(model, tok), PROMPTS[:3], cfg)] == \
               [c.token_ids for c in greedy]


def test_penalties_discourage_repeats(model_tok):
    model, tok = model_tok
    def distinct(cfg):
        ids = answers(TransformersEngine(model, tok), ["aaaa"], cfg)[0].token_ids
        return len(set(ids)) / len(ids)

    plain = distinct(DecodingConfig(max_new_tokens=30, ignore_eos=True))
    assert distinct(DecodingConfig(max_new_tokens=30, ignore_eos=True, presence_penalty=2.0)) > plain
    assert distinct(DecodingConfig(max_new_tokens=30, ignore_eos=True, frequency_penalty=2.0)) > plain
    assert distinct(DecodingConfig(max_new_tokens=30, ignore_eos=True, repetition_penalty=5.0)) > plain


def test_max_tokens_stop_strings_and_streaming(model_tok):
    model, tok = model_tok
    full = answers(TransformersEngine(model, tok), ["hello"], DecodingConfig(max_new_tokens=20, ignore_eos=True))[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 20
    stop = full.text[5:8]
    cut = answers(TransformersEngine(model, tok), ["hello"],
                  DecodingConfig(max_new_tokens=20, ignore_eos=True, stop=[stop]))[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.find(stop)]
    deltas = list(stream(TransformersEngine(model, tok),
                         Request("hello", DecodingConfig(max_new_tokens=20, ignore_eos=True, stop=[stop]))))
    assert "".join(d.text for d in deltas) == cut.text and deltas[-1].finish_reason == "stop"
    assert all(stop not in d.text for d in deltas)


def test_text_stream_holds_back_stop_prefixes_and_partial_characters(model_tok):
    _, tok = model_tok
    text = TextStream(tok, stops=["END"])
    shown = [text.push(i) for i in tok.encode("abcEN", add_special_tokens=False)]
    assert "".join(shown) == "abc"  # "EN" may become "END"
    shown += [text.push(i) for i in tok.encode("X", add_special_tokens=False)]
    assert "".join(shown) + text.finish() == "abcENX"
    euro = TextStream(tok)
    pieces = [euro.push(i) for i in tok.encode("€", add_special_tokens=False)]  # three byte tokens
    assert pieces[:2] == ["", ""] and pieces[2] == "€"


def test_logprobs_are_the_models_own(model_tok):
    model, tok = model_tok
    out = answers(TransformersEngine(model, tok), ["hello"],
                  DecodingConfig(max_new_tokens=4, logprobs=True, top_logprobs=3))[0]
    prompt = tok(prompt_text(tok, "hello"), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out.token_ids])).logits[0, len(prompt) - 1:-1].float()
    expected = torch.log_softmax(logits, -1)
    assert len(out.logprobs) == len(out.token_ids)  # the end token is not reported
    for k, lp in enumerate(out.logprobs):
        assert lp.token_id == out.token_ids[k] and lp.logprob == pytest.approx(float(expected[k, lp.token_id]), abs=1e-4)
        assert [t for t, _ in lp.top] == expected[k].topk(3).indices.tolist()


def test_beam_search_matches_transformers(model_tok):
    model, tok = model_tok
    cfg = DecodingConfig(max_new_tokens=8, num_beams=3)
    out = answers(TransformersEngine(model, tok), ["hello"], cfg)[0]
    enc = tok(prompt_text(tok, "hello"), return_tensors="pt", add_special_tokens=False)
    ref = model.generate(**enc, **generation_kwargs(model, tok, cfg))[0, enc.input_ids.shape[1]:].tolist()
    assert out.token_ids == [t for t in ref if t not in (tok.eos_token_id, tok.pad_token_id)]


def test_a_tiny_temperature_is_greedy_not_an_error(model_tok):
    model, tok = model_tok
    greedy = answers(TransformersEngine(model, tok), ["hello"], DecodingConfig(max_new_tokens=6))[0]
    tiny_t = answers(TransformersEngine(model, tok), ["hello"], DecodingConfig(max_new_tokens=6, temperature=1e-30))[0]
    assert tiny_t.token_ids == greedy.token_ids


def test_a_failing_step_ends_its_requests_with_an_error(model_tok, monkeypatch):
    model, tok = model_tok
    engine = TransformersEngine(model, tok)

    def broken(handles):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "_prefill", broken)
    with pytest.raises(RuntimeError, match="boom"):
        answers(engine, ["hello"], DecodingConfig(max_new_tokens=4))


def test_cancel_frees_the_row(model_tok):
    model, tok = model_tok
    engine = TransformersEngine(model, tok)
    engine.start()
    handle = engine.submit(Request("hello", DecodingConfig(max_new_tokens=100_000, ignore_eos=True)))
    next(handle.deltas())
    handle.cancel()
    assert [d.finish_reason for d in handle.deltas()][-1] == "cancelled"
    engine.close()
    assert engine.load == (0, 0)


def test_bad_options_are_config_errors(model_tok):
    model, tok = model_tok
    engine = TransformersEngine(model, tok)
    for options in ({"top_p": 0}, {"temperature": -1}, {"num_beams": 2, "temperature": 1.0}, {"max_new_tokens": 0},
                    {"seed": 2**64}, {"num_beams": 2, "presence_penalty": 1.0}):
        with pytest.raises(ConfigError):  # refused when the options are made, before any request
            DecodingConfig(**options)
        with pytest.raises(ConfigError):  # and when a request carries options changed without a check
            engine.submit(Request("x", DecodingConfig().model_copy(update=options)))
    with pytest.raises(ConfigError, match="not loaded"):
        engine.submit(Request("x", adapter="nope"))
    with pytest.raises(ConfigError, match="num_beams"):
        engine.submit(Request("x", DecodingConfig(num_beams=2), constraint=Constraint.choice(["a", "b"])))
    with pytest.raises(ConfigError, match="does not compile"):
        engine.submit(Request("x", constraint=Constraint.json_schema({"type": "no-such-type"})))


NESTED = {"type": "object", "properties": {
    "id": {"type": "integer", "minimum": 1, "maximum": 9999},
    "label": {"type": "string", "enum": ["spam", "ham", "unsure"]},
    "score": {"type": "number"},
    "owner": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},  # free text: any byte a random byte-level model picks
        "roles": {"type": "array", "items": {"type": "string", "enum": ["admin", "user"]}, "minItems": 1,
                  "maxItems": 3}}, "required": ["name", "roles"], "additionalProperties": False},
    "active": {"type": "boolean"},
}, "required": ["id", "label", "owner", "active"], "additionalProperties": False}


def test_one_hundred_sampled_answers_all_validate_against_a_nested_schema(model_tok):
    jsonschema = pytest.importorskip("jsonschema")
    model, tok = model_tok
    requests = [Request("give me a record", DecodingConfig(max_new_tokens=300, temperature=1.0, seed=i),
                        constraint=Constraint.json_schema(NESTED)) for i in range(100)]
    outs = generate(TransformersEngine(model, tok, max_batch_size=25), requests)
    for out in outs:
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), NESTED)
    assert len({o.text for o in outs}) > 50  # sampled, not one answer repeated


def test_utf8_guard_follows_the_decoder():
    from tunelab.infer.utf8 import ACCEPT, Utf8Guard, advance

    assert advance(ACCEPT, "é€😀".encode()) == ACCEPT
    assert advance(ACCEPT, "€".encode()[:2]) == (1, 0x80, 0xBF)  # one byte still due
    for bad in (b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\x80", b"\x80", b"\xff"):
        assert advance(ACCEPT, bad) is None, bad
    guard = Utf8Guard([b"a", b"\xe2", b"\x82", b"\xac", b"\xed", b"\xa0", b"\x9f"], 7)
    assert guard.forbidden(ACCEPT).tolist() == [2, 3, 5, 6]  # continuation bytes cannot start a character
    after_ed = guard.after(ACCEPT, 4)
    assert 5 in guard.forbidden(after_ed).tolist() and 6 not in guard.forbidden(after_ed).tolist()  # no surrogates


def test_regex_and_choice_constraints(model_tok):
    model, tok = model_tok
    engine = TransformersEngine(model, tok)
    dates = answers(engine, ["a date"] * 5, DecodingConfig(max_new_tokens=20, temperature=1.0),
                    constraint=Constraint.regex(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]"))
    import re

    assert all(re.fullmatch(r"20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]", d.text) for d in dates)
    picks = answers(engine, ["pick"] * 5, DecodingConfig(max_new_tokens=10, temperature=1.0),
                    constraint=Constraint.choice(["yes", "no", "not sure"]))
    assert all(p.text in ("yes", "no", "not sure") for p in picks)


@pytest.mark.parametrize("draft", ["layers:1", "ngram"])
def test_speculative_greedy_answers_are_plain_greedy_answers(model_tok, draft):
    from tunelab.infer.speculative import make_draft

    model, tok = model_tok
    cfg = DecodingConfig(max_new_tokens=16)
    plain = answers(TransformersEngine(model, tok), PROMPTS, cfg)
    fast = answers(TransformersEngine(model, tok, draft=make_draft(draft, model)), PROMPTS, cfg)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]


def test_truncated_draft_shares_the_targets_weights(model_tok):
    from tunelab.infer.speculative import truncated_draft

    model, _ = model_tok
    draft = truncated_draft(model, 1)
    assert draft.config.num_hidden_layers == 1
    assert draft.model.embed_tokens.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert draft.model.layers[0].mlp.up_proj.weight.data_ptr() == model.model.layers[0].mlp.up_proj.weight.data_ptr()
    with pytest.raises(ConfigError):
        truncated_draft(model, 2)


def test_int8_weights_stay_close_and_spare_lora_matrices():
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_llama(init_std=0.5)
    model = model.to(torch.bfloat16).eval()
    ids = torch.tensor([[5, 9, 20, 33, 41]])
    with torch.no_grad():
        before = model(ids).logits.float()
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        quantize_int8(peft_model)
        after = peft_model(ids).logits.float()
    q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(q.base_layer, Int8Linear) and type(q.lora_A["default"]) is torch.nn.Linear
    assert (after - before).abs().max() / before.abs().max() < 0.05
