"""Generation and chat on a tiny random model: batching, decoding options, stop strings, history."""

import torch
from rich.console import Console

from tunelab.infer import DecodingConfig, generate
from tunelab.infer.backends.transformers import TransformersEngine
from tunelab.infer.chat import chat_loop
from tunelab.infer.generate import cut_at_stop, generation_kwargs, prompt_text


def test_batched_greedy_equals_one_by_one(tiny):
    model, tok = tiny
    prompts = ["hello", "a much longer prompt that needs left padding in a batch", "x"]
    cfg = DecodingConfig(max_new_tokens=8)
    batched = generate(model, tok, prompts, cfg, batch_size=3)
    single = [generate(model, tok, [p], cfg, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(a, str) for a in batched)


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    cfg = DecodingConfig(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.9, seed=3)
    assert generate(model, tok, ["hi"], cfg) == generate(model, tok, ["hi"], cfg)


def test_generation_kwargs_cover_options(tiny):
    model, tok = tiny
    kw = generation_kwargs(model, tok, DecodingConfig(temperature=0.7, top_k=5, top_p=0.8, repetition_penalty=1.3,
                                                      stop=["\n\n"], max_new_tokens=7))
    assert kw["do_sample"] and kw["temperature"] == 0.7 and kw["top_k"] == 5 and kw["top_p"] == 0.8
    assert kw["repetition_penalty"] == 1.3 and kw["stop_strings"] == ["\n\n"] and kw["max_new_tokens"] == 7
    assert tok.convert_tokens_to_ids("<|im_end|>") in kw["eos_token_id"]
    greedy = generation_kwargs(model, tok, DecodingConfig())
    assert greedy["do_sample"] is False


def test_stop_strings_cut_output(tiny):
    model, tok = tiny
    with torch.no_grad():  # tied head: zero rows make special tokens (EOS) lose to ordinary bytes
        model.model.embed_tokens.weight[:3] = 0
    free = generate(model, tok, ["abc"], DecodingConfig(max_new_tokens=30, repetition_penalty=5.0))[0]
    assert len(free) > 4, "the random model should say something"
    stop = free[2:4]
    cut = generate(model, tok, ["abc"], DecodingConfig(max_new_tokens=30, repetition_penalty=5.0, stop=[stop]))[0]
    assert stop not in cut and free.startswith(cut)
    assert cut_at_stop("one. two. three", [". t"]) == "one"


def test_prompt_text_uses_template_and_system(tiny):
    _, tok = tiny
    text = prompt_text(tok, "hi", system="be brief")
    assert text.startswith("<|im_start|>system\nbe brief<|im_end|>") and text.endswith("<|im_start|>assistant\n")


def test_chat_loop_keeps_history_and_reset(tiny, monkeypatch):
    model, tok = tiny
    lines = iter(["hello", "again", "/reset", "/system be terse", "fresh", "/exit"])
    seen = []
    engine = TransformersEngine(model, tok, max_batch_size=1)
    real = engine.prompt_ids

    def spy(request):
        ids = real(request)
        seen.append(tok.decode(ids))
        return ids

    monkeypatch.setattr(engine, "prompt_ids", spy)
    chat_loop(engine, DecodingConfig(max_new_tokens=4), console=Console(file=open("/dev/null", "w")),
              read=lambda prompt: next(lines))
    engine.close()
    assert len(seen) == 3
    assert "hello" in seen[1] and "again" in seen[1]  # second turn sees the first
    assert "hello" not in seen[2] and "be terse" in seen[2]  # after /reset and /system


def test_generate_restores_padding_side_and_mode(tiny):
    model, tok = tiny
    model.train()
    generate(model, tok, ["a", "bb"], DecodingConfig(max_new_tokens=2))
    assert tok.padding_side == "right" and model.training
    torch.testing.assert_close(model.lm_head.weight, model.model.embed_tokens.weight)
