"""Batched generation over many prompts, chat prompts, and `model.generate` options.

`generate` is the short way to answer a list of prompts with a loaded model; it runs the
transformers engine (continuous batching) under the hood.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import model_validator

from tunelab.config.options import opt
from tunelab.data.templates import ensure_chat_template, eos_ids_for_generation
from tunelab.infer.chat import ChatConfig
from tunelab.infer.decoding import DecodingConfig


class GenerateConfig(ChatConfig):
    """What `tunelab generate` reads and writes, and what every answer must look like."""

    input: str = opt(help="JSONL with a 'prompt' field (or 'messages'), one question per line")
    output: str = opt(help="where the answers go (JSONL: each record with its output)")
    json_schema: str | None = opt(None, "a JSON schema file every answer must match", aka=("response_format",))
    regex: str | None = opt(None, "a regular expression every answer must match", aka=("guided_regex",))
    choice: list[str] = opt([], "an allowed answer (repeat the flag for several)", aka=("guided_choice",))

    @model_validator(mode="after")
    def _one_constraint(self) -> GenerateConfig:
        if sum(map(bool, (self.json_schema, self.regex, self.choice))) > 1:
            raise ValueError("give one of json_schema, regex or choice: an answer follows one constraint")
        return self

    def constraint(self):
        """The structured-output constraint asked for, or None."""
        import json
        from pathlib import Path

        from tunelab.errors import ConfigError
        from tunelab.infer.structured import Constraint

        if self.json_schema:
            path = Path(self.json_schema)
            try:
                return Constraint.json_schema(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError) as e:
                raise ConfigError(f"--json-schema {path}: cannot read a JSON schema from it ({e})") from None
        if self.regex:
            return Constraint.regex(self.regex)
        if self.choice:
            return Constraint.choice(self.choice)
        return None


def prompt_text(tokenizer, prompt: str | list[dict], system: str | None = None) -> str:
    """Render a user prompt (or a message list) with the chat template, ready for the answer."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, request) -> list[int]:
    """The token ids of an engine request's prompt: chat-templated, or raw text as the tokenizer encodes it."""
    if request.chat:
        return tokenizer(prompt_text(tokenizer, request.prompt, request.system), add_special_tokens=False)["input_ids"]
    return tokenizer(request.prompt)["input_ids"]


def generation_kwargs(model, tokenizer, cfg: DecodingConfig) -> dict:
    """transformers generate() kwargs for `cfg`, stopping on EOS and the template's answer end."""
    sample = cfg.temperature > 0
    kwargs = dict(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=sample,
        num_beams=cfg.num_beams,
        repetition_penalty=cfg.repetition_penalty,
        eos_token_id=eos_ids_for_generation(tokenizer, model.generation_config.eos_token_id),
        pad_token_id=tokenizer.pad_token_id,
    )
    if sample:
        kwargs.update(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p, min_p=cfg.min_p or None)
    else:  # greedy: clear sampling defaults a model's generation_config may carry
        kwargs.update(temperature=None, top_k=None, top_p=None)
    if cfg.stop:
        kwargs.update(stop_strings=cfg.stop, tokenizer=tokenizer)
    return kwargs


def cut_at_stop(text: str, stops: Iterable[str]) -> str:
    """Drop everything from the first stop string on."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def generate(model, tokenizer, prompts: list[str | list[dict]], cfg: DecodingConfig | None = None,
             batch_size: int = 16, system: str | None = None, chat: bool = True, constraint=None) -> list[str]:
    """Generate one answer per prompt, batched (continuous batching with left padding).

    Args:
        prompts: user strings or message lists; with chat=False, raw text continued as is.
        system: system prompt added to prompts that have none.
        constraint: a `tunelab.infer.structured.Constraint` every answer must match.
    Returns:
        the answers as text, without the prompt and stop strings, stripped. With a seed,
        prompt i samples with seed + i, so repeated prompts still differ and reruns agree.
    """

    from tunelab.infer.backends.transformers import TransformersEngine
    from tunelab.infer.engine import Request
    from tunelab.infer.engine import generate as run_all

    cfg = cfg or DecodingConfig()
    was_training = model.training
    model.eval()
    engine = TransformersEngine(model, tokenizer, max_batch_size=batch_size)
    try:
        requests = [Request(p, cfg.model_copy(update={"seed": None if cfg.seed is None else cfg.seed + i}), chat=chat,
                            system=system, constraint=constraint) for i, p in enumerate(prompts)]
        return [c.text.strip() for c in run_all(engine, requests)]
    finally:
        engine.close()
        model.train(was_training)
