"""Batched generation with the transformers backend: chat prompts, decoding options, stop strings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from tunelab.data.templates import ensure_chat_template, eos_ids_for_generation


@dataclass
class DecodingConfig:
    """How to pick tokens. temperature 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


def prompt_text(tokenizer, prompt: str | list[dict], system: str | None = None) -> str:
    """Render a user prompt (or a message list) with the chat template, ready for the answer."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}] + messages
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generation_kwargs(model, tokenizer, cfg: DecodingConfig) -> dict:
    """transformers generate() kwargs for `cfg`, stopping on EOS and the template's answer end."""
    sample = cfg.temperature > 0
    kwargs = dict(
        max_new_tokens=cfg.max_new_tokens,
        do_sample=sample,
        repetition_penalty=cfg.repetition_penalty,
        eos_token_id=eos_ids_for_generation(tokenizer, model.generation_config.eos_token_id),
        pad_token_id=tokenizer.pad_token_id,
    )
    if sample:
        kwargs.update(temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p)
    else:  # greedy: clear sampling defaults a model's generation_config may carry
        kwargs.update(temperature=None, top_k=None, top_p=None)
    if cfg.stop:
        kwargs.update(stop_strings=cfg.stop, tokenizer=tokenizer)
    return kwargs


def cut_at_stop(text: str, stops: Iterable[str]) -> str:
    """Drop everything from the first stop string on (generation may overshoot by a token)."""
    cut = min((i for s in stops if (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str | list[dict]], cfg: DecodingConfig | None = None,
             batch_size: int = 16, system: str | None = None, chat: bool = True) -> list[str]:
    """Generate one answer per prompt, batched with left padding.

    Args:
        prompts: user strings or message lists; with chat=False, raw text continued as is.
        system: system prompt added to prompts that have none.
    Returns:
        the answers as text, without the prompt and stop strings.
    """
    cfg = cfg or DecodingConfig()
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    texts = [prompt_text(tokenizer, p, system) if chat else p for p in prompts]
    kwargs = generation_kwargs(model, tokenizer, cfg)
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    answers: list[str] = [""] * len(texts)
    try:
        # Longest first, so batches hold similar lengths and little padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(model.device)
            out = model.generate(**enc, **kwargs)
            # a decoder's output repeats its prompt; an encoder-decoder's is the answer alone
            start_of_answer = 0 if model.config.is_encoder_decoder else enc["input_ids"].shape[1]
            for row, i in enumerate(idx):
                text = tokenizer.decode(out[row, start_of_answer:], skip_special_tokens=True)
                answers[i] = cut_at_stop(text, cfg.stop).strip() if cfg.stop else text.strip()
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return answers
