"""OpenAI wire format <-> engine: request bodies become engine Requests, completions become
response bodies and stream chunks."""

from __future__ import annotations

import secrets
import time

from tunelab.infer.decoding import DecodingConfig, TokenLogprob
from tunelab.infer.engine import Request
from tunelab.infer.structured import Constraint
from tunelab.serve.schemas import ChatCompletionRequest, CompletionRequest, Sampling


class BadRequest(Exception):
    """A request the server refuses: HTTP status, OpenAI error type, message, and the offending parameter."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def decoding(body: Sampling, max_tokens: int | None, logprobs: bool = False, top_logprobs: int = 0) -> DecodingConfig:
    return DecodingConfig(max_new_tokens=max_tokens or 256, temperature=body.temperature, top_k=body.top_k,
                          top_p=body.top_p, min_p=body.min_p, repetition_penalty=body.repetition_penalty,
                          presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                          stop=body.stop or [], seed=body.seed, logprobs=logprobs, top_logprobs=top_logprobs,
                          ignore_eos=body.ignore_eos)


def constraint(body: Sampling) -> Constraint | None:
    fmt = getattr(body, "response_format", None)
    if fmt is not None and fmt.type == "json_schema":
        if fmt.json_schema is None or not fmt.json_schema.schema_:
            raise BadRequest(400, "response_format json_schema needs json_schema.schema", param="response_format")
        return Constraint.json_schema(fmt.json_schema.schema_)
    if fmt is not None and fmt.type == "json_object":
        return Constraint.json_object()
    if body.guided_regex:
        return Constraint.regex(body.guided_regex)
    if body.guided_choice:
        return Constraint.choice(body.guided_choice)
    return None


def chat_requests(body: ChatCompletionRequest, adapter: str | None) -> list[Request]:
    try:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    except ValueError as e:
        raise BadRequest(400, str(e), param="messages") from None
    if messages[-1]["role"] == "assistant":
        raise BadRequest(400, "the last message is the assistant's; end with a user message", param="messages")
    params = decoding(body, body.max_completion_tokens or body.max_tokens, body.logprobs, body.top_logprobs or 0)
    return _n_requests(body, messages, params, True, adapter)


MAX_ANSWERS = 64  # prompts x n in one request: more would crowd out every other client


def completion_requests(body: CompletionRequest, adapter: str | None) -> list[Request]:
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) * body.n > MAX_ANSWERS:
        raise BadRequest(400, f"{len(prompts)} prompts x n={body.n} answers; at most {MAX_ANSWERS} per request",
                         param="prompt")
    if body.echo:
        raise BadRequest(400, "echo is not supported", param="echo")
    params = decoding(body, body.max_tokens or 16, body.logprobs is not None, body.logprobs or 0)
    return [r for p in prompts for r in _n_requests(body, p, params, False, adapter)]


def _n_requests(body: Sampling, prompt, params: DecodingConfig, chat: bool, adapter: str | None) -> list[Request]:

    grammar = constraint(body)
    return [Request(prompt, params.model_copy(update={"seed": None if params.seed is None else params.seed + i}),
                    chat=chat, adapter=adapter, constraint=grammar) for i in range(body.n)]


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(tokenizer, logprobs: list[TokenLogprob] | None) -> dict | None:
    if logprobs is None:
        return None

    def item(token_id, logprob):
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**item(lp.token_id, lp.logprob), "top_logprobs": [item(t, v) for t, v in lp.top]}
                        for lp in logprobs]}


def completion_logprobs(tokenizer, logprobs: list[TokenLogprob] | None) -> dict | None:
    if logprobs is None:
        return None
    tokens = [tokenizer.decode([lp.token_id]) for lp in logprobs]
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{tokenizer.decode([t]): v for t, v in lp.top} for lp in logprobs], "text_offset": offsets}


def chat_chunk(id: str, model: str, index: int, delta: dict, finish_reason=None, logprobs=None) -> dict:
    return {"id": id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def completion_chunk(id: str, model: str, index: int, text: str, finish_reason=None, logprobs=None) -> dict:
    return {"id": id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}


def finish_reason(reason: str) -> str:
    """Engine reasons to OpenAI's ("cancelled" only reaches a client when the server shuts down)."""
    return {"cancelled": "abort"}.get(reason, reason)
