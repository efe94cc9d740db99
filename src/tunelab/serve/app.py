"""The OpenAI-compatible HTTP server: FastAPI routes over one engine.

Every request is checked in one place (`_admit`: key, body size, JSON, types, concurrency)
and every refusal is OpenAI's error body with a 4xx status, so a bad client never takes
the server down. Generation runs in the engine's worker; the event loop only waits on
its deltas, so concurrent requests batch together there.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import threading
import time
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from tunelab.config import DEFAULT_MODEL
from tunelab.config.options import Options, opt
from tunelab.errors import ConfigError, TunelabError
from tunelab.infer.engine import BASE_ADAPTER as BASE
from tunelab.serve import openai as oa
from tunelab.serve.metrics import Metrics
from tunelab.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)

log = logging.getLogger(__name__)


class ServerConfig(Options):
    """Address, names and limits. Every limit is refused with a 4xx OpenAI-style error, never a crash."""

    host: str = opt("127.0.0.1", "the address to listen on; 127.0.0.1 is this machine only")
    port: int = opt(8000, "the port to listen on", ge=1, le=65535)
    served_name: str | None = opt(None, "the base model's name in requests; default the model's name")
    api_key: str | None = opt(None, "require 'Authorization: Bearer KEY' on /v1 (or set TUNELAB_API_KEY)")
    embedding_model: str = opt("all-minilm-l6-v2", "sentence-transformers model for /v1/embeddings, or none")
    max_prompt_tokens: int = opt(4096, "the longest prompt a request may send", ge=1)
    max_tokens: int = opt(1024, "the most new tokens a request may ask for (and the default)", ge=1)
    max_body_bytes: int = opt(1_000_000, "the largest request body", ge=1)
    max_concurrent: int = opt(64, "requests answered at once; more get 429", ge=1)
    timeout_s: float = opt(300.0, "seconds before a request is cancelled (408)", gt=0, flag="--timeout")
    max_embedding_inputs: int = opt(256, "the most texts one /v1/embeddings request may send", ge=1)


def create_app(engine, cfg: ServerConfig | None = None, embedder=None, embedding_name: str | None = None,
               start_engine: bool = True) -> FastAPI:
    """The FastAPI app serving `engine` (and `embedder`, a SentenceTransformer, for /v1/embeddings).

    start_engine: run the engine's loop in a background thread at startup (`serve` runs it on
    the main thread instead).
    """
    cfg = cfg or ServerConfig()
    cfg = cfg.model_copy(update={"served_name": cfg.served_name or DEFAULT_MODEL})
    metrics = Metrics(engine)
    state = {"in_flight": 0}
    embed_lock = threading.Lock()
    adapters = list(engine.adapters())
    tokenizer = getattr(engine, "tokenizer", None)

    @asynccontextmanager
    async def lifespan(app):
        if start_engine and hasattr(engine, "start"):
            engine.start()
        yield
        await asyncio.to_thread(engine.close)  # uvicorn has let the streams in flight finish by now

    app = FastAPI(title="tunelab", lifespan=lifespan)

    @app.exception_handler(oa.BadRequest)
    async def _bad(request, e: oa.BadRequest):
        metrics.requests.labels(request.url.path, str(e.status)).inc()
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(TunelabError)
    async def _user_error(request, e: TunelabError):  # a bad option caught below the HTTP layer
        return await _bad(request, oa.BadRequest(400, str(e)))

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        return await _bad(request, oa.BadRequest(e.status_code, str(e.detail), code=str(e.status_code)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e):
        return await _bad(request, oa.BadRequest(400, str(e)))

    @app.exception_handler(Exception)
    async def _crash(request, e: Exception):
        log.exception("request failed")
        return await _bad(request, oa.BadRequest(500, f"internal error: {type(e).__name__}", type="server_error"))

    def model_adapter(name: str) -> str | None:
        if name == cfg.served_name:
            return BASE if adapters else None
        if name in adapters:
            return name
        known = [cfg.served_name, *adapters]
        raise oa.BadRequest(404, f"the model '{name}' does not exist; this server has: {', '.join(known)}",
                            param="model", code="model_not_found")

    def _check_key(request: Request) -> None:
        if cfg.api_key:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                raise oa.BadRequest(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                                    type="authentication_error", code="invalid_api_key")

    async def _admit(request: Request, schema):
        _check_key(request)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            raise oa.BadRequest(413, f"request body over {cfg.max_body_bytes} bytes", code="body_too_large")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > cfg.max_body_bytes:
                raise oa.BadRequest(413, f"request body over {cfg.max_body_bytes} bytes", code="body_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise oa.BadRequest(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise oa.BadRequest(400, "the body must be a JSON object")
        try:
            body = schema.model_validate(data)
        except ValidationError as e:
            errors = e.errors()[:3]  # a union field (text or list) reports one error per form it may take
            where = str(errors[0]["loc"][0]) if errors[0]["loc"] else ""
            message = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors)
            raise oa.BadRequest(400, message, param=where or None) from None
        if state["in_flight"] >= cfg.max_concurrent:
            raise oa.BadRequest(429, f"the server is answering {cfg.max_concurrent} requests, its limit; retry shortly",
                                type="rate_limit_error", code="too_many_requests")
        return body, _Slot(state, metrics)  # the slot is taken now, before any await, so a burst cannot overrun

    async def _submit(requests) -> tuple[list, asyncio.Queue]:
        """Check limits, then hand every request to the engine; deltas arrive on one queue as (index, delta)."""
        for r in requests:
            if r.params.max_new_tokens > cfg.max_tokens:
                raise oa.BadRequest(400, f"max_tokens {r.params.max_new_tokens} is over this server's limit of "
                                    f"{cfg.max_tokens}", param="max_tokens")
            if r.params.logprobs and tokenizer is None:
                raise oa.BadRequest(400, "this backend does not return logprobs", param="logprobs")
        ids = await asyncio.to_thread(lambda: [engine.prompt_ids(r) for r in requests])
        longest = max(len(i) for i in ids)
        if longest > cfg.max_prompt_tokens:
            raise oa.BadRequest(400, f"the prompt is {longest} tokens; this server takes at most "
                                f"{cfg.max_prompt_tokens}", param="messages", code="context_length_exceeded")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        handles = []
        try:
            for i, r in enumerate(requests):
                sink = (lambda d, i=i: loop.call_soon_threadsafe(queue.put_nowait, (i, d)))
                handles.append(await asyncio.to_thread(engine.submit, r, sink))
        except ConfigError as e:
            for h in handles:
                h.cancel()
            raise oa.BadRequest(400, str(e)) from None
        metrics.prompt_tokens.inc(sum(h.prompt_tokens for h in handles))
        return handles, queue

    async def _generate(endpoint: str, model: str, n: int, requests, stream: bool, build, chunk, include_usage: bool,
                        slot: _Slot):
        """Run `requests` (n answers per prompt); `build` makes the JSON body, `chunk` the stream chunks."""
        started = time.perf_counter()
        handles, queue = await _submit(requests)
        rid = oa.new_id("chatcmpl" if endpoint == "chat" else "cmpl")
        prompt_tokens = sum(h.prompt_tokens for h in handles) // n  # each prompt counts once, as OpenAI counts

        def done():
            if slot.released:
                return
            for h in handles:
                h.cancel()  # no-op for finished ones; frees the batch row of an abandoned one
            slot.release()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

        if not stream:
            try:
                results = await asyncio.wait_for(_collect(queue, len(handles)), cfg.timeout_s)
            except (TimeoutError, asyncio.TimeoutError):
                raise oa.BadRequest(408, f"the request ran past the server's timeout of {cfg.timeout_s:g} s",
                                    type="timeout_error", code="timeout") from None
            finally:
                done()
            completion = sum(len(r["ids"]) for r in results)
            metrics.generated_tokens.inc(completion)
            metrics.requests.labels(endpoint, "200").inc()
            return JSONResponse(build(rid, results, oa.usage(prompt_tokens, completion)))

        async def events():
            deadline = asyncio.get_running_loop().time() + cfg.timeout_s
            finished, completion, first, status = 0, 0, True, "200"
            try:
                for opening in chunk(rid, None, None, start=True):
                    yield _sse(opening)
                while finished < len(handles):
                    try:
                        i, delta = await asyncio.wait_for(queue.get(), deadline - asyncio.get_running_loop().time())
                    except (TimeoutError, asyncio.TimeoutError):
                        status = "408"
                        yield _sse(oa.BadRequest(408, f"the request ran past the server's timeout of "
                                                 f"{cfg.timeout_s:g} s", type="timeout_error", code="timeout").body())
                        break
                    if delta.finish_reason == "error":
                        status = "500"
                        yield _sse(oa.BadRequest(500, delta.error or "generation failed", type="server_error").body())
                        break
                    if first and delta.text:
                        metrics.first_token.observe(time.perf_counter() - started)
                        first = False
                    completion += len(delta.token_ids)
                    finished += bool(delta.finish_reason)
                    if delta.text or delta.finish_reason or delta.logprobs:
                        yield _sse(chunk(rid, i, delta))
                if include_usage:
                    yield _sse({"id": rid, "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
                                "created": int(time.time()), "model": model, "choices": [],
                                "usage": oa.usage(prompt_tokens, completion)})
                yield "data: [DONE]\n\n"
                metrics.requests.labels(endpoint, status).inc()
            finally:
                metrics.generated_tokens.inc(completion)
                done()

        # `background` also runs when the client left before the first byte, when events() never starts
        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                                 background=BackgroundTask(done))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request):
        _check_key(request)
        now = int(time.time())
        items = [{"id": cfg.served_name, "object": "model", "created": now, "owned_by": "tunelab", "root": cfg.served_name,
                  "parent": None}]
        items += [{"id": a, "object": "model", "created": now, "owned_by": "tunelab", "root": cfg.served_name,
                   "parent": cfg.served_name} for a in adapters]
        if embedder is not None:
            items.append({"id": embedding_name, "object": "model", "created": now, "owned_by": "tunelab",
                          "root": embedding_name, "parent": None})
        return {"object": "list", "data": items}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body, slot = await _admit(request, ChatCompletionRequest)
        with slot.on_error():
            adapter = model_adapter(body.model)
            requests = oa.chat_requests(_defaults(body, cfg), adapter)

        def build(rid, results, use):
            return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": body.model,
                    "choices": [{"index": i, "message": {"role": "assistant", "content": r["text"]},
                                 "logprobs": oa.chat_logprobs(tokenizer, r["logprobs"]) if body.logprobs else None,
                                 "finish_reason": oa.finish_reason(r["finish_reason"])} for i, r in enumerate(results)],
                    "usage": use}

        def chunk(rid, i, delta, start=False):
            if start:
                return [oa.chat_chunk(rid, body.model, j, {"role": "assistant", "content": ""}) for j in range(body.n)]
            return oa.chat_chunk(rid, body.model, i, {"content": delta.text} if delta.text else {},
                                 oa.finish_reason(delta.finish_reason) if delta.finish_reason else None,
                                 oa.chat_logprobs(tokenizer, delta.logprobs) if body.logprobs else None)

        usage = bool(body.stream_options and body.stream_options.include_usage)
        with slot.on_error():
            return await _generate("chat", body.model, body.n, requests, body.stream, build, chunk, usage, slot)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body, slot = await _admit(request, CompletionRequest)
        with slot.on_error():
            adapter = model_adapter(body.model)
            requests = oa.completion_requests(_defaults(body, cfg, completion=True), adapter)
        want_logprobs = body.logprobs is not None

        def build(rid, results, use):
            return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": body.model,
                    "choices": [{"index": i, "text": r["text"],
                                 "logprobs": oa.completion_logprobs(tokenizer, r["logprobs"]) if want_logprobs else None,
                                 "finish_reason": oa.finish_reason(r["finish_reason"])} for i, r in enumerate(results)],
                    "usage": use}

        def chunk(rid, i, delta, start=False):
            if start:
                return []
            return oa.completion_chunk(rid, body.model, i, delta.text,
                                       oa.finish_reason(delta.finish_reason) if delta.finish_reason else None,
                                       oa.completion_logprobs(tokenizer, delta.logprobs) if want_logprobs else None)

        usage = bool(body.stream_options and body.stream_options.include_usage)
        with slot.on_error():
            return await _generate("completions", body.model, body.n, requests, body.stream, build, chunk, usage,
                                   slot)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body, slot = await _admit(request, EmbeddingRequest)
        try:
            return await _embed(body)
        finally:
            slot.release()

    async def _embed(body: EmbeddingRequest):
        if embedder is None or body.model != embedding_name:
            known = f"'{embedding_name}'" if embedder is not None else "none (start the server with --embedding-model)"
            raise oa.BadRequest(404, f"the embedding model '{body.model}' does not exist; this server has {known}",
                                param="model", code="model_not_found")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if len(texts) > cfg.max_embedding_inputs:
            raise oa.BadRequest(400, f"{len(texts)} inputs; this server embeds at most {cfg.max_embedding_inputs} "
                                "per request", param="input")

        def encode():
            with embed_lock:
                vectors = embedder.encode(texts, batch_size=32, convert_to_numpy=True)
                tokens = sum(len(ids) for ids in embedder.tokenizer(texts)["input_ids"])
            return vectors, tokens

        try:
            vectors, tokens = await asyncio.wait_for(asyncio.to_thread(encode), cfg.timeout_s)
        except (TimeoutError, asyncio.TimeoutError):
            raise oa.BadRequest(408, f"the request ran past the server's timeout of {cfg.timeout_s:g} s",
                                type="timeout_error", code="timeout") from None
        data = []
        for i, v in enumerate(vectors):
            value = (base64.b64encode(v.astype("float32").tobytes()).decode() if body.encoding_format == "base64"
                     else v.astype(float).tolist())
            data.append({"object": "embedding", "embedding": value, "index": i})
        metrics.requests.labels("embeddings", "200").inc()
        return {"object": "list", "data": data, "model": body.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app


class _Slot:
    """One admitted request's place under max_concurrent; released exactly once."""

    def __init__(self, state: dict, metrics: Metrics):
        self.state, self.metrics, self.released = state, metrics, False
        state["in_flight"] += 1
        metrics.in_flight.inc()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.state["in_flight"] -= 1
            self.metrics.in_flight.dec()

    @contextmanager
    def on_error(self):
        """Release if the block raises (a refused request); a response in hand keeps the slot."""
        try:
            yield
        except BaseException:
            self.release()
            raise


def _defaults(body, cfg: ServerConfig, completion: bool = False):
    """Fill max_tokens with the server's default when the client gave none."""
    if completion:
        if body.max_tokens is None:
            body.max_tokens = 16  # OpenAI's default for completions
    elif body.max_tokens is None and getattr(body, "max_completion_tokens", None) is None:
        body.max_tokens = cfg.max_tokens
    return body


async def _collect(queue: asyncio.Queue, n: int) -> list[dict]:
    results = [{"text": [], "ids": [], "logprobs": [], "finish_reason": None} for _ in range(n)]
    finished = 0
    while finished < n:
        i, delta = await queue.get()
        if delta.finish_reason == "error":
            raise oa.BadRequest(500, delta.error or "generation failed", type="server_error")
        r = results[i]
        r["text"].append(delta.text)
        r["ids"] += delta.token_ids
        r["logprobs"] += delta.logprobs or []
        if delta.finish_reason:
            r["finish_reason"] = delta.finish_reason
            finished += 1
    for r in results:
        r["text"] = "".join(r["text"])
    return results


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
