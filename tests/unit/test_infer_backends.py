"""The llama.cpp and vLLM backends: vLLM's option mapping (no GPU needed), llama.cpp on the default GGUF."""

import asyncio
import importlib.util
import json
import sys
from types import SimpleNamespace

import pytest

from tunelab.errors import ConfigError, ModelError
from tunelab.infer import Constraint, DecodingConfig, Request, stream
from tunelab.infer.backends.vllm import sampling_params_kwargs

# --- vLLM: the option mapping ---


def test_vllm_maps_every_decoding_field():
    cfg = DecodingConfig(max_new_tokens=33, temperature=0.7, top_k=5, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                         presence_penalty=0.5, frequency_penalty=-0.25, stop=["\n\n", "END"], seed=7, logprobs=True,
                         top_logprobs=4, ignore_eos=True)
    assert sampling_params_kwargs(cfg) == {
        "n": 1, "max_tokens": 33, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "min_p": 0.05,
        "repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.25, "stop": ["\n\n", "END"],
        "seed": 7, "logprobs": 4, "ignore_eos": True}


def test_vllm_defaults_mean_off():
    kw = sampling_params_kwargs(DecodingConfig())
    assert kw["temperature"] == 0 and kw["top_k"] == -1 and kw["top_p"] == 1.0 and kw["min_p"] == 0
    assert kw["logprobs"] is None and kw["seed"] is None and kw["stop"] == [] and kw["ignore_eos"] is False
    assert "structured_outputs" not in kw
    # log-probs of the chosen token only: vLLM's logprobs=0
    assert sampling_params_kwargs(DecodingConfig(logprobs=True))["logprobs"] == 0
    assert sampling_params_kwargs(DecodingConfig(top_logprobs=3))["logprobs"] is None


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


@pytest.mark.parametrize("constraint, expected", [
    (Constraint.json_schema(SCHEMA), {"json": SCHEMA}),
    (Constraint.json_object(), {"json_object": True}),
    (Constraint.regex(r"\d{3}-\d{4}"), {"regex": r"\d{3}-\d{4}"}),
    (Constraint.choice(["yes", "no"]), {"choice": ["yes", "no"]}),
    (Constraint("grammar", 'root ::= "a" | "b"'), {"grammar": 'root ::= "a" | "b"'}),
])
def test_vllm_maps_every_constraint_kind(constraint, expected):
    assert sampling_params_kwargs(DecodingConfig(), constraint)["structured_outputs"] == expected


def test_vllm_rejects_unknown_constraint():
    with pytest.raises(ConfigError, match="unknown constraint kind"):
        sampling_params_kwargs(DecodingConfig(), Constraint("xml", "<a/>"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_without_vllm_says_how_to_install():
    from tunelab.infer.backends.vllm import VLLMEngine

    with pytest.raises(ModelError, match="pip install vllm") as e:
        VLLMEngine("smollm2-135m-instruct")
    assert "GPU" in str(e.value)


class _FakeAsyncLLM:
    """Stands in for vLLM's AsyncLLM: streams cumulative outputs like vLLM does, forever when max_tokens > 4."""

    @classmethod
    def from_engine_args(cls, args):
        engine = cls()
        engine.args, engine.calls, engine.model_config = args, [], SimpleNamespace(max_model_len=512)
        return engine

    async def generate(self, prompt, sampling, request_id, lora_request=None):
        self.calls.append((prompt, sampling, request_id, lora_request))
        text, ids, steps, i = "", [], [], 0
        while True:
            await asyncio.sleep(0.01)
            text, ids = text + ["Hel", "lo", " wor", "ld"][i % 4], ids + [100 + i]
            steps.append({100 + i: SimpleNamespace(logprob=-0.5), 7: SimpleNamespace(logprob=-0.1)})
            done = sampling.max_tokens <= 4 and i == 3
            yield SimpleNamespace(finished=done, outputs=[SimpleNamespace(
                text=text, token_ids=list(ids), logprobs=list(steps) if sampling.logprobs is not None else None,
                finish_reason="stop" if done else None)])
            if done:
                return
            i += 1

    def shutdown(self):
        self.shut = True


@pytest.fixture
def fake_vllm(monkeypatch):
    """A `vllm` package made of the few names the backend imports."""
    kwargs_class = type("Kwargs", (), {"__init__": lambda self, **kw: self.__dict__.update(kw)})
    names = {"vllm": {"SamplingParams": kwargs_class, "AsyncEngineArgs": kwargs_class},
             "vllm.lora": {}, "vllm.lora.request": {"LoRARequest": lambda *a: a},
             "vllm.sampling_params": {"StructuredOutputsParams": kwargs_class},
             "vllm.v1": {}, "vllm.v1.engine": {}, "vllm.v1.engine.async_llm": {"AsyncLLM": _FakeAsyncLLM}}
    for name, attrs in names.items():
        monkeypatch.setitem(sys.modules, name, SimpleNamespace(__name__=name, __path__=[], **attrs))


def test_vllm_engine_streams_the_differences(fake_vllm, tiny_model_dir, tmp_path):
    from tunelab.infer.backends.vllm import VLLMEngine

    (tmp_path / "adapter_config.json").write_text('{"r": 24}')
    engine = VLLMEngine(str(tiny_model_dir), adapters={"math": str(tmp_path)}, max_model_len=512)
    try:
        args = engine.engine.args
        assert args.enable_lora and args.max_loras == 1 and args.max_lora_rank == 32 and engine.adapters() == ["math"]
        request = Request("hi", DecodingConfig(max_new_tokens=4, logprobs=True, top_logprobs=1),
                          adapter="math", constraint=Constraint.choice(["a", "b"]))
        deltas = list(stream(engine, request))
        assert [d.text for d in deltas] == ["Hel", "lo", " wor", "ld"] and deltas[-1].finish_reason == "stop"
        assert [t for d in deltas for t in d.token_ids] == [100, 101, 102, 103]
        assert deltas[0].logprobs[0].logprob == -0.5 and deltas[0].logprobs[0].top == [(7, -0.1)]
        prompt, sampling, _, lora = engine.engine.calls[0]
        assert prompt["prompt_token_ids"] == engine.prompt_ids(request) and lora == ("math", 1, str(tmp_path))
        assert sampling.structured_outputs.choice == ["a", "b"] and sampling.stop_token_ids
        handle = engine.submit(Request("hi", DecodingConfig(max_new_tokens=100)))
        deltas = []
        for d in handle.deltas():
            deltas.append(d)
            handle.cancel()
        assert deltas[-1].finish_reason == "cancelled" and len(deltas) < 100
        with pytest.raises(ConfigError, match="not loaded"):
            engine.submit(Request("hi", adapter="other"))
    finally:
        engine.close()
    assert engine.engine.shut


# --- llama.cpp ---


def test_llamacpp_engine_without_llama_cpp_says_how_to_install(monkeypatch):
    from tunelab.infer.backends.llamacpp import LlamaCppEngine

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(ModelError, match="pip install llama-cpp-python==0.3.36"):
        LlamaCppEngine("smollm2-135m-instruct")


def _gguf():
    from tunelab.infer.backends.llamacpp import find_gguf

    try:
        return find_gguf("smollm2-135m-instruct")
    except ModelError as e:
        pytest.skip(f"the default model's GGUF is missing: {e}")


def test_find_gguf_takes_an_alias_or_a_gguf_path(tmp_path):
    from tunelab.infer.backends.llamacpp import find_gguf

    path = _gguf()
    assert path.suffix == ".gguf" and find_gguf(str(path)) == path
    with pytest.raises(ModelError, match="not found"):
        find_gguf(tmp_path / "missing.gguf")
    with pytest.raises(ModelError, match=".gguf file"):
        find_gguf(tmp_path)


@pytest.fixture(scope="module")
def llama():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed")
    from tunelab.infer.backends.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(_gguf(), n_ctx=1024)
    yield engine
    engine.close()


def ask(engine, prompt="What is the capital of France?", constraint=None, **options):
    return engine.submit(Request(prompt, DecodingConfig(**options), constraint=constraint)).result()


@pytest.mark.slow
def test_llamacpp_greedy_is_deterministic(llama):
    a, b = ask(llama, max_new_tokens=24), ask(llama, max_new_tokens=24)
    assert a.text and a.text == b.text and a.token_ids == b.token_ids
    assert a.finish_reason in ("stop", "length")
    assert a.prompt_tokens == len(llama.prompt_ids(Request("What is the capital of France?")))
    s1, s2 = (ask(llama, max_new_tokens=16, temperature=1.0, seed=5) for _ in range(2))
    assert s1.text == s2.text  # a seeded sample repeats


@pytest.mark.slow
def test_llamacpp_stream_concatenates_to_the_result(llama):
    request = Request("Write one sentence about cats.", DecodingConfig(max_new_tokens=30))
    deltas = list(stream(llama, request))
    whole = ask(llama, "Write one sentence about cats.", max_new_tokens=30)
    assert len(deltas) > 1 and all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].finish_reason == whole.finish_reason
    assert "".join(d.text for d in deltas) == whole.text
    assert [t for d in deltas for t in d.token_ids] == whole.token_ids


@pytest.mark.slow
def test_llamacpp_stop_strings_cut_and_max_tokens_give_length(llama):
    full = ask(llama, max_new_tokens=40).text
    stop = full.split()[1]
    cut = ask(llama, max_new_tokens=40, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full[:full.index(stop)]
    short = ask(llama, max_new_tokens=3, ignore_eos=True)
    assert short.finish_reason == "length" and len(short.token_ids) == 3


@pytest.mark.slow
def test_llamacpp_json_schema_output_parses(llama):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    for seed in range(10):
        c = ask(llama, "Describe a person as JSON.", Constraint.json_schema(schema), max_new_tokens=120,
                temperature=1.0, seed=seed)
        data = json.loads(c.text)
        assert c.finish_reason == "stop" and {"name", "age"} <= set(data) and isinstance(data["age"], int)


@pytest.mark.slow
def test_llamacpp_choice_constraint(llama):
    options = ["yes", "no", "not sure"]
    for seed in range(3):
        c = ask(llama, "Is the sky blue?", Constraint.choice(options), max_new_tokens=10, temperature=1.0, seed=seed)
        assert c.text in options and c.finish_reason == "stop"


@pytest.mark.slow
def test_llamacpp_rejects_what_it_cannot_do(llama):
    assert llama.adapters() == []
    with pytest.raises(ConfigError, match="adapter"):
        llama.submit(Request("hi", adapter="math"))
    with pytest.raises(ConfigError, match="not a regex"):
        llama.submit(Request("hi", constraint=Constraint.regex(r"\d+")))
    with pytest.raises(ConfigError, match="beam"):
        llama.submit(Request("hi", DecodingConfig(num_beams=2)))
    with pytest.raises(ConfigError, match="grammar"):
        llama.submit(Request("hi", constraint=Constraint("grammar", "root ::= undefined-rule")))


@pytest.mark.slow
def test_llamacpp_logprobs(llama):
    c = ask(llama, max_new_tokens=5, logprobs=True, top_logprobs=3, ignore_eos=True)
    assert len(c.logprobs) == len(c.token_ids) == 5
    for token, lp in zip(c.token_ids, c.logprobs):
        assert lp.token_id == token and lp.logprob <= 0 and len(lp.top) == 3
        assert lp.top[0][0] == token  # greedy picks the most likely token
        assert [p for _, p in lp.top] == sorted((p for _, p in lp.top), reverse=True)


@pytest.mark.slow
def test_llamacpp_cancel_and_errors_keep_the_worker_alive(llama, monkeypatch):
    handle = llama.submit(Request("Count to one thousand.", DecodingConfig(max_new_tokens=500, ignore_eos=True)))
    deltas = []
    for d in handle.deltas():
        deltas.append(d)
        handle.cancel()
    assert deltas[-1].finish_reason == "cancelled"
    assert sum(len(d.token_ids) for d in deltas) < 500

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(llama.llm, "generate", broken)
    with pytest.raises(RuntimeError, match="boom"):
        ask(llama, max_new_tokens=4)
    monkeypatch.undo()
    assert ask(llama, max_new_tokens=4).text


@pytest.mark.slow
def test_llamacpp_prompt_tokens_match_transformers(llama, default_model_dir):
    from tunelab.infer import prompt_text
    from tunelab.models import load_tokenizer

    tok = load_tokenizer(default_model_dir)
    turns = [{"role": "user", "content": "Hi! Name a colour, é 日本."}, {"role": "assistant", "content": "Blue."},
             {"role": "user", "content": "And  another\none?"}]
    for system in ("Answer in one word.", None):
        expected = tok(prompt_text(tok, turns, system), add_special_tokens=False)["input_ids"]
        assert llama.prompt_ids(Request(turns, system=system)) == expected
    assert llama.prompt_ids(Request("plain text <|im_end|>", chat=False)) == tok("plain text <|im_end|>")["input_ids"]
