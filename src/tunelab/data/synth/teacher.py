"""The teacher: a model tunelab loads (batched by its engine) or an OpenAI-compatible endpoint.

An endpoint's transient errors are retried by the client (`max_retries`, exponential backoff);
one it still refuses, or that times out, ends the run with a message naming its URL (never the
key), and the records already written stay: the run resumes from them.
"""

from __future__ import annotations

import os

from tunelab.config.groups import DecodingConfig
from tunelab.config.options import Options, opt
from tunelab.eval.judge import EndpointJudge


class TeacherConfig(Options):
    """Which model writes the data."""

    teacher: str | None = opt(None, "a model tunelab loads (alias, folder, .gguf); default the default model")
    teacher_url: str | None = opt(None, "an OpenAI-compatible endpoint's base URL (…/v1) instead of a local model")
    teacher_model: str | None = opt(None, "the model name to ask the endpoint for")
    api_key_env: str = opt("OPENAI_API_KEY", "the environment variable holding the endpoint's key (never printed)")
    timeout: float = opt(120.0, "seconds an endpoint may take for one reply", gt=0)
    max_retries: int = opt(3, "retries of an endpoint's transient errors (rate limits, 5xx, dropped connections)",
                           ge=0)
    concurrency: int = opt(8, "requests in flight at once (endpoint) or answers decoded together (local)", ge=1)

    @property
    def name(self) -> str:
        return f"{self.teacher_model}@{self.teacher_url}" if self.teacher_url else (self.teacher or "default model")


class LocalTeacher:
    """A model tunelab loads; requests are decoded together by its engine."""

    def __init__(self, cfg: TeacherConfig):
        from tunelab.infer.load import load_engine

        self.engine = load_engine(cfg.teacher, max_batch_size=cfg.concurrency)

    def complete(self, conversations: list[list[dict]], decoding: DecodingConfig) -> list[tuple[str, bool]]:
        """(reply, cut off at the token limit) for each conversation, in order."""
        from tunelab.infer.engine import Request, generate

        seeded = lambda i: decoding.model_copy(update={"seed": None if decoding.seed is None else decoding.seed + i})
        requests = [Request(c, seeded(i)) for i, c in enumerate(conversations)]
        return [(c.text.strip(), c.finish_reason == "length") for c in generate(self.engine, requests)]

    def close(self) -> None:
        self.engine.close()


class EndpointTeacher(EndpointJudge):
    """An OpenAI-compatible endpoint; errors are the judge's (URL named, key masked)."""

    def __init__(self, cfg: TeacherConfig):
        super().__init__(cfg.teacher_url, cfg.teacher_model or cfg.teacher, api_key=os.environ.get(cfg.api_key_env),
                         concurrency=cfg.concurrency, timeout=cfg.timeout, api_key_env=cfg.api_key_env,
                         max_retries=cfg.max_retries)
        self.decoding = DecodingConfig()

    def _one(self, messages: list[dict]) -> tuple[str, bool]:
        import openai

        d = self.decoding
        try:
            reply = self.client.chat.completions.create(model=self.model, messages=messages, temperature=d.temperature,
                                                        top_p=d.top_p, max_tokens=d.max_new_tokens, seed=d.seed)
        except openai.OpenAIError as exc:
            raise self._error(exc) from None
        choice = reply.choices[0]
        return (choice.message.content or "").strip(), choice.finish_reason == "length"

    def complete(self, conversations: list[list[dict]], decoding: DecodingConfig) -> list[tuple[str, bool]]:
        self.decoding = decoding
        return super().complete(conversations)

    def close(self) -> None:
        self.client.close()


def make_teacher(cfg: TeacherConfig):
    if cfg.teacher_url:
        from tunelab.errors import ConfigError

        if not (cfg.teacher_model or cfg.teacher):
            raise ConfigError("--teacher-model: an endpoint needs the model name to ask it for")
        return EndpointTeacher(cfg)
    return LocalTeacher(cfg)
