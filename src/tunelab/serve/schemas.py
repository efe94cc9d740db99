"""OpenAI request bodies as pydantic models (responses are built as plain dicts in `openai.py`).

Unknown fields are ignored, as OpenAI-compatible servers do, so clients that send `user`
or newer options still work. `top_k`, `min_p`, `repetition_penalty`, `guided_regex` and
`guided_choice` are the usual extensions (vLLM spells them the same way).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Texts = str | Annotated[list[str], Field(min_length=1)]  # one text, or a non-empty list of them


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StreamOptions(_Body):
    include_usage: bool = False


class Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=8)
    stream: bool = False
    stream_options: StreamOptions | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    ignore_eos: bool = False  # keep going past the end-of-answer token (benchmarks)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        return stops


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if isinstance(self.content, list):
            kinds = {p.get("type") for p in self.content}
            if kinds - {"text"}:
                raise ValueError(f"content parts of type {sorted(kinds - {'text'})} are not supported; send text")
            texts = [p.get("text", "") for p in self.content]
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("a text content part's 'text' must be a string")
            return "".join(texts)
        return self.content or ""


class JsonSchemaFormat(_Body):
    name: str = "response"
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None


class CompletionRequest(Sampling):
    prompt: Texts
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class EmbeddingRequest(_Body):
    model: str
    input: Texts
    encoding_format: Literal["float", "base64"] = "float"
