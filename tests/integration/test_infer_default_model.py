"""The engine on the real default model: greedy answers equal transformers' own, a nested
JSON schema with free strings holds for 100 sampled answers, speculative decoding changes nothing."""

from __future__ import annotations

import json

import pytest

from tunelab.infer import Constraint, DecodingConfig, Request
from tunelab.infer.engine import generate
from tunelab.infer.generate import generation_kwargs, prompt_text
from tunelab.infer.load import load_engine

pytestmark = pytest.mark.slow

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 40},
    "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
    "rating": {"type": "number", "minimum": 0, "maximum": 10},
    "director": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                                  "country": {"type": "string", "maxLength": 20}},
                 "required": ["name", "country"], "additionalProperties": False},
    "genres": {"type": "array", "items": {"type": "string", "enum": ["drama", "comedy", "action", "horror"]},
               "minItems": 1, "maxItems": 3},
}, "required": ["title", "year", "rating", "director", "genres"], "additionalProperties": False}
PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "Give three tips for sleeping well."]


def test_greedy_answers_equal_transformers_generate():
    engine = load_engine(dtype="fp32", quantize=None)
    model, tok = engine.model, engine.tokenizer
    cfg = DecodingConfig(max_new_tokens=40)
    ours = generate(engine, [Request(p, cfg) for p in PROMPTS])
    for p, c in zip(PROMPTS, ours):
        enc = tok(prompt_text(tok, p), return_tensors="pt", add_special_tokens=False)
        ref = model.generate(**enc, **generation_kwargs(model, tok, cfg))[0, enc.input_ids.shape[1]:]
        assert c.text == tok.decode(ref, skip_special_tokens=True)


def test_one_hundred_answers_validate_against_a_nested_schema():
    jsonschema = pytest.importorskip("jsonschema")
    engine = load_engine(max_batch_size=25)
    requests = [Request("Describe a film you like as a JSON record.", DecodingConfig(max_new_tokens=160,
                        temperature=1.0, seed=i), constraint=Constraint.json_schema(SCHEMA)) for i in range(100)]
    outs = generate(engine, requests)
    for out in outs:
        assert out.finish_reason == "stop", out.text
        jsonschema.validate(json.loads(out.text), SCHEMA)
    assert len({o.text for o in outs}) > 50


@pytest.mark.parametrize("draft", ["layers:8", "ngram"])
def test_speculative_answers_equal_plain_answers(draft):
    cfg = DecodingConfig(max_new_tokens=48)
    # float32: in bfloat16 the draft's multi-token check rounds differently from one-token steps, so
    # near-tied tokens can flip (bench/speculative.py shows where); in float32 the answers must be equal
    plain = generate(load_engine(dtype="fp32", quantize=None), [Request(p, cfg) for p in PROMPTS])
    fast = generate(load_engine(dtype="fp32", quantize=None, draft=draft), [Request(p, cfg) for p in PROMPTS])
    assert [c.text for c in fast] == [c.text for c in plain]


def test_one_stream_of_the_default_model_takes_the_fastest_built_path():
    """`tunelab chat`'s engine: llama.cpp on the packaged GGUF with a thread per core where it is built,
    else the transformers engine."""
    from tunelab import hardware

    engine = load_engine(max_batch_size=1)
    try:
        answer = generate(engine, [Request(PROMPTS[0], DecodingConfig(max_new_tokens=12))])[0]
        assert answer.text.strip()
        if hardware.llamacpp_decode():
            assert type(engine).__name__ == "LlamaCppEngine"
            assert engine.llm.n_threads == hardware.threads()
        else:
            assert type(engine).__name__ == "TransformersEngine"
    finally:
        engine.close()
