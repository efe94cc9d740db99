"""`tunelab serve` driven by the official openai client (chat, streaming, completions, embeddings,
adapters by name, JSON-schema responses) and by plain HTTP for every refusal."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.jsonl import write_jsonl
from tunelab.config import load_config
from tunelab.infer import DecodingConfig, generate
from tunelab.infer.load import load_engine
from tunelab.models import load_run
from tunelab.objectives import run
from tunelab.serve import ServerConfig, create_app, load_embedder

openai = pytest.importorskip("openai")
KEY = "sk-test-key"
SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                 "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"], "additionalProperties": False},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}, "maxItems": 3},
}, "required": ["name", "age", "address", "tags"], "additionalProperties": False}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    words = ["cat", "dog", "sun", "red", "box", "cup", "pen", "map"]
    data = {"a": [{"instruction": f"Repeat {w}", "output": w} for w in words],
            "b": [{"instruction": f"Spell {w}", "output": " ".join(w.upper())} for w in words]}
    for name, rows in data.items():
        run(load_config(None, [f"model.name={tiny_model_dir}", f"data.train={write_jsonl(root / f'{name}.jsonl', rows)}",
                               "data.val_split=0", "method=lora", f"train.output_dir={root}", f"train.run_name={name}",
                               "train.precision=fp32", "train.batch_size=4", "train.max_steps=4", "train.lr=5e-2"]))
    return {name: root / name for name in data}


class Server:
    """uvicorn in a thread, as `tunelab serve` runs it."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(tiny_model_dir, runs):
    engine = load_engine(str(tiny_model_dir), adapters={"a": str(runs["a"]), "b": str(runs["b"])}, dtype="fp32",
                         max_batch_size=8)
    cfg = ServerConfig(served_name="tiny", api_key=KEY, max_prompt_tokens=300, max_tokens=256, max_body_bytes=20_000,
                       max_concurrent=6, timeout_s=30)
    srv = Server(create_app(engine, cfg, load_embedder("all-minilm-l6-v2"), "all-minilm-l6-v2"))
    srv.engine = engine
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def post(server, path: str, body, key: str | None = KEY, raw: bytes | None = None, method: str = "POST"):
    """(status, parsed JSON) of a plain HTTP request."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.request(method, path, body=raw if raw is not None else json.dumps(body).encode(), headers=headers)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, json.loads(payload) if payload else None


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Repeat cat"}], "max_tokens": 8, "temperature": 0}


# ---------------------------------------------------------------- the openai client


def test_models_lists_base_adapters_and_embedder(client):
    assert {m.id for m in client.models.list().data} == {"tiny", "a", "b", "all-minilm-l6-v2"}


def test_chat_is_deterministic_when_greedy_and_counts_usage(client):
    first = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Repeat cat"}],
                                           max_tokens=8, temperature=0)
    again = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Repeat cat"}],
                                           max_tokens=8, temperature=0)
    choice = first.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == again.choices[0].message.content
    assert choice.finish_reason in ("stop", "length")
    assert first.usage.prompt_tokens > 0 and 0 < first.usage.completion_tokens <= 8
    assert first.usage.total_tokens == first.usage.prompt_tokens + first.usage.completion_tokens


def test_streaming_chat_adds_up_to_the_plain_answer(client):
    kwargs = dict(model="tiny", messages=[{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Spell dog"}], max_tokens=12, temperature=0)
    plain = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.finish_reason
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_completions_with_several_prompts_and_logprobs(client):
    out = client.completions.create(model="tiny", prompt=["abc", "hello there"], max_tokens=5, temperature=0,
                                    logprobs=2)
    assert [c.index for c in out.choices] == [0, 1]
    for c in out.choices:
        assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) > 0
        assert all(lp <= 0 for lp in c.logprobs.token_logprobs)
        assert all(len(top) <= 2 for top in c.logprobs.top_logprobs)
    streamed = client.completions.create(model="tiny", prompt="abc", max_tokens=5, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == out.choices[0].text


def test_embeddings_match_sentence_transformers(client):
    texts = ["the cat sat", "a dog barked", "tunelab serves models"]
    out = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    vectors = np.array([d.embedding for d in out.data])
    expected = load_embedder("all-minilm-l6-v2").encode(texts)
    assert vectors.shape == (3, 384) and np.allclose(vectors, expected, atol=1e-5)
    assert out.usage.prompt_tokens > 0
    packed = client.embeddings.create(model="all-minilm-l6-v2", input="the cat sat", encoding_format="base64")
    raw = packed.data[0].embedding
    decoded = np.frombuffer(base64.b64decode(raw), dtype=np.float32) if isinstance(raw, str) else np.array(raw)
    assert np.allclose(decoded, expected[0], atol=1e-5)


def test_adapter_by_name_answers_as_that_adapter_alone(client, runs, tiny_model_dir):
    prompts = ["Spell cat", "Repeat dog", "Spell box"]
    asks = [("b", prompts[0]), ("a", prompts[1]), ("tiny", prompts[2]), ("b", prompts[2])]
    with ThreadPoolExecutor(4) as pool:  # concurrent: rows with different adapters share one batch
        answers = list(pool.map(lambda ask: client.chat.completions.create(
            model=ask[0], messages=[{"role": "user", "content": ask[1]}], max_tokens=10,
            temperature=0).choices[0].message.content, asks))
    for (name, prompt), answer in zip(asks, answers):
        if name == "tiny":
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model, tok = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), AutoTokenizer.from_pretrained(
                str(tiny_model_dir))
        else:
            model, tok = load_run(runs[name])
        assert generate(model, tok, [prompt], DecodingConfig(max_new_tokens=10))[0] == answer.strip(), name


def test_json_schema_response_always_validates(client):
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}

    def ask(seed):
        return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "A person"}],
                                              max_tokens=256, temperature=1.0, seed=seed, response_format=fmt)

    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(ask, range(12)))
    for out in outs:
        assert out.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)


def test_guided_choice_extension(client):
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Pick"}], max_tokens=8,
                                         temperature=1.0, extra_body={"guided_choice": ["alpha", "beta"]})
    assert out.choices[0].message.content in ("alpha", "beta")


# ---------------------------------------------------------------- refusals over plain HTTP


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_missing_or_wrong_key_is_401(server, key):
    status, body = post(server, "/v1/chat/completions", CHAT, key=key)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert post(server, "/v1/models", None, key=key, raw=b"", method="GET")[0] == 401


@pytest.mark.parametrize("raw,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({**CHAT, "temperature": "hot"}).encode(), 400, "temperature"),
    (json.dumps({**CHAT, "messages": []}).encode(), 400, "messages"),
    (json.dumps({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "role"),
    (json.dumps({k: v for k, v in CHAT.items() if k != "model"}).encode(), 400, "model"),
    (json.dumps({**CHAT, "model": "gpt-9"}).encode(), 404, "gpt-9"),
    (json.dumps({**CHAT, "max_tokens": 10_000}).encode(), 400, "max_tokens"),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 400, "prompt"),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 30_000}]}).encode(), 413, "bytes"),
    (json.dumps({**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "nonsense-type"}}}}).encode(), 400, "json_schema"),
    (json.dumps({**CHAT, "seed": 2**64}).encode(), 400, "seed"),
    (json.dumps({**CHAT, "guided_choice": ["", "a"]}).encode(), 400, "choice"),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}).encode(), 400,
     "string"),
    (json.dumps({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(), 400,
     "image_url"),
    (json.dumps({**CHAT, "n": 50}).encode(), 400, "n"),
])
def test_bad_requests_get_openai_errors_and_the_server_lives_on(server, raw, status, needle):
    got, body = post(server, "/v1/chat/completions", None, raw=raw)
    assert got == status, body
    assert set(body["error"]) >= {"message", "type", "param", "code"} and needle in json.dumps(body), body
    assert post(server, "/health", None, method="GET", raw=b"")[0] == 200
    assert post(server, "/v1/chat/completions", CHAT)[0] == 200


def test_completion_refusals_and_an_empty_prompt(server):
    status, body = post(server, "/v1/completions", {"model": "tiny", "prompt": []})
    assert status == 400 and "at least 1 item" in body["error"]["message"] and body["error"]["param"] == "prompt"
    status, body = post(server, "/v1/completions", {"model": "tiny", "prompt": ["x"] * 20, "n": 4, "max_tokens": 2})
    assert status == 400 and "at most" in body["error"]["message"]
    status, body = post(server, "/v1/completions", {"model": "tiny", "prompt": "", "max_tokens": 3})
    assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length")


def test_a_stop_string_cannot_cut_a_structured_answer(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    out = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "A person"}],
                                         max_tokens=256, temperature=1.0, seed=3, response_format=fmt, stop=["}", ","])
    assert json.loads(out.choices[0].message.content)["address"]


def test_unknown_route_and_method_are_json_errors(server):
    assert post(server, "/v1/nothing", CHAT)[0] == 404
    status, body = post(server, "/v1/chat/completions", None, raw=b"", method="GET")
    assert status == 405 and "error" in body


def test_unknown_embedding_model_is_404(server):
    status, body = post(server, "/v1/embeddings", {"model": "tiny", "input": "x"})
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_concurrency_limit_is_429(server):
    conns = []
    body = json.dumps({**CHAT, "max_tokens": 64, "stream": True, "stop": ["@@never@@"]}).encode()
    try:
        for _ in range(6):  # fill every slot with a stream left unread
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("POST", "/v1/chat/completions", body=body,
                         headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            conn.getresponse()
            conns.append(conn)
        status, err = post(server, "/v1/chat/completions", CHAT)
        assert status == 429 and err["error"]["type"] == "rate_limit_error"
    finally:
        for conn in conns:
            conn.close()
    deadline = time.time() + 30
    while post(server, "/v1/chat/completions", CHAT)[0] != 200 and time.time() < deadline:
        time.sleep(0.2)  # slots free as the server notices the closed connections
    assert post(server, "/v1/chat/completions", CHAT)[0] == 200


def test_timeout_is_408_and_frees_the_slot(tiny_model_dir):
    engine = load_engine(str(tiny_model_dir), dtype="fp32")
    srv = Server(create_app(engine, ServerConfig(served_name="tiny", timeout_s=0.05, max_tokens=4000,
                                                 max_prompt_tokens=300)))
    try:
        status, body = post(srv, "/v1/chat/completions", {**CHAT, "max_tokens": 4000, "stop": ["@@never@@"]},
                            key=None)
        assert status == 408 and body["error"]["code"] == "timeout"
        deadline = time.time() + 10
        while engine.load != (0, 0) and time.time() < deadline:
            time.sleep(0.05)
        assert engine.load == (0, 0)  # the abandoned answer left the batch
    finally:
        srv.stop()


def test_metrics_count_requests_and_tokens(server, client):
    client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    assert 'tunelab_requests_total{endpoint="chat",status="200"}' in text
    assert "tunelab_generated_tokens_total" in text and "tunelab_batch_rows" in text


# ---------------------------------------------------------------- the command and its shutdown


def test_sigterm_lets_the_stream_in_flight_finish(tiny_model_dir):
    port = free_port()
    env = {**os.environ, "TUNELAB_API_KEY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", "--model", str(tiny_model_dir), "--dtype",
                             "fp32", "--port", str(port), "--embedding-model", "none", "--served-name", "tiny"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "server did not start"
            time.sleep(0.3)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                     body=json.dumps({**CHAT, "stream": True, "max_tokens": 200, "stop": ["@@never@@"]}))
        response = conn.getresponse()
        first = response.readline()
        assert first.startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        rest = response.read().decode()
        events = [line[6:] for line in rest.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] == "length"  # all 200 tokens arrived
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_llamacpp_backend_behind_the_same_server():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is an optional extra (see README)")
    engine = load_engine("smollm2-135m-instruct", backend="llamacpp")
    srv = Server(create_app(engine, ServerConfig(served_name="smollm2-135m-instruct")))
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        out = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=12, temperature=0,
                                             messages=[{"role": "user", "content": "What is the capital of France?"}],
                                             logprobs=True, top_logprobs=2)
        assert out.choices[0].message.content and out.choices[0].logprobs.content[0].logprob <= 0
        streamed = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=12, temperature=0,
                                                  messages=[{"role": "user", "content": "What is the capital of France?"}],
                                                  stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == out.choices[0].message.content
        schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
        answer = client.chat.completions.create(model="smollm2-135m-instruct", max_tokens=40, response_format=fmt,
                                                messages=[{"role": "user", "content": "Name a city."}])
        assert "city" in json.loads(answer.choices[0].message.content)
    finally:
        srv.stop()
