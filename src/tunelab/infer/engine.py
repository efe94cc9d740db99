"""The inference engine protocol: requests in, streamed deltas and completions out.

Every backend (transformers, llama.cpp, vLLM) implements `submit`; `generate` and
`stream` are built on it once here. A submitted request is a `Handle`: its deltas arrive
through a sink (a queue by default; the server passes a thread-safe callback), so the
same engine serves a batch job, a terminal chat and many concurrent HTTP clients.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from tunelab.infer.decoding import DecodingConfig, TokenLogprob

_ids = itertools.count()
BASE_ADAPTER = "__base__"  # Request.adapter naming the base model itself, with every loaded adapter off


@dataclass
class Request:
    """One prompt to answer.

    Args:
        prompt: user text, a list of chat messages, or (with chat=False) raw text to continue.
        adapter: the name of a loaded adapter to answer with; None is the base model.
        constraint: structured output (see `tunelab.infer.structured.Constraint`), or None.
    """

    prompt: str | list[dict]
    params: DecodingConfig = field(default_factory=DecodingConfig)
    chat: bool = True
    system: str | None = None
    adapter: str | None = None
    constraint: object | None = None
    id: int = field(default_factory=lambda: next(_ids))


@dataclass
class Delta:
    """New text of one request since the last delta; `finish_reason` is set on the last one."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    logprobs: list[TokenLogprob] | None = None


class Handle:
    """A submitted request: deltas flow to `sink`; `cancel()` frees its batch slot at the next step."""

    def __init__(self, request: Request, prompt_ids: list[int], sink: Callable[[Delta], None] | None = None,
                 drive: Callable[[], None] | None = None):
        self.request = request
        self.drive = drive  # runs one engine step; set when the waiting consumer must run the engine itself
        self.ids = prompt_ids
        self.prompt_tokens = len(prompt_ids)
        self.matcher = None  # the grammar matcher of a constrained request
        self.finished = False
        self.cancelled = threading.Event()
        self._queue: queue.Queue[Delta] | None = None if sink else queue.Queue()
        self._sink = sink or self._queue.put

    def emit(self, delta: Delta) -> None:
        if self.finished:
            return
        self.finished = bool(delta.finish_reason)
        self._sink(delta)

    def cancel(self) -> None:
        self.cancelled.set()

    def deltas(self) -> Iterator[Delta]:
        """Deltas until the last one (only for handles without a custom sink)."""
        while True:
            if self.drive is not None:
                while self._queue.empty():
                    if not self.drive() and self._queue.empty():
                        raise RuntimeError("the engine has no work left but this request never finished")
            delta = self._queue.get()
            yield delta
            if delta.finish_reason:
                return

    def result(self) -> Completion:
        text, ids, logprobs, reason = [], [], [], "stop"
        for d in self.deltas():
            text.append(d.text)
            ids += d.token_ids
            logprobs += d.logprobs or []
            if d.finish_reason == "error":
                raise RuntimeError(d.error)
            reason = d.finish_reason or reason
        return Completion("".join(text), ids, reason, self.prompt_tokens,
                          logprobs if self.request.params.logprobs else None)


class Engine(Protocol):
    """What every backend provides."""

    name: str

    def submit(self, request: Request, sink: Callable[[Delta], None] | None = None) -> Handle:
        """Queue `request`; returns at once. Thread-safe."""

    def prompt_ids(self, request: Request) -> list[int]:
        """The token ids the prompt becomes (for limits and usage counts)."""

    def adapters(self) -> list[str]:
        """Names of loaded adapters a request may pick."""

    def close(self) -> None:
        """Stop background work; requests in flight end with finish_reason 'cancelled'."""


def generate(engine: Engine, requests: list[Request]) -> list[Completion]:
    """Answer many requests; the engine batches them. Results are in request order."""
    handles = [engine.submit(r) for r in requests]
    return [h.result() for h in handles]


def stream(engine: Engine, request: Request) -> Iterator[Delta]:
    """Deltas of one request as they are decoded; stopping the iteration cancels the request."""
    handle = engine.submit(request)
    try:
        yield from handle.deltas()
    finally:
        handle.cancel()
