"""LLM-as-judge: compare two systems' answers pairwise, or grade one system's answers 1-10.

The prompts follow MT-Bench (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and
Chatbot Arena"): the judge explains briefly, then ends with "[[A]]", "[[B]]" or "[[C]]" (tie)
for a pair, or "Rating: [[N]]" for a single answer.

Judges prefer whichever answer they see first (or second) far more often than chance; the
paper calls this position bias. So `pairwise` asks about every question twice, once in each
order, and counts a win or a loss only when both orders agree; any disagreement is a tie.
`position_consistency` reports how often the two orders agreed, a measure of how far the
judge itself can be trusted.

A judge is a local model (`LocalJudge`) or any OpenAI-compatible endpoint (`EndpointJudge`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from pydantic import model_validator

from tunelab.config.options import Options, fail, opt
from tunelab.errors import ModelError
from tunelab.eval.preference import wilson_interval

DEFAULT_RUBRIC = ("Consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
                  "and level of detail of the answer.")

PAIR_INSTRUCTION = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants "
    "to the user question displayed below. You should choose the assistant that follows the user's instructions "
    "and answers the user's question better. {rubric} Begin your evaluation by comparing the two responses and "
    "provide a short explanation. Avoid any position biases and ensure that the order in which the responses were "
    "presented does not influence your decision. Do not allow the length of the responses to influence your "
    "evaluation. Do not favor certain names of the assistants. Be as objective as possible. After providing your "
    'explanation, output your final verdict by strictly following this format: "[[A]]" if assistant A is better, '
    '"[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)

SINGLE_INSTRUCTION = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
    "user question displayed below. {rubric} Begin your evaluation by providing a short explanation. Be as "
    "objective as possible. After providing your explanation, you must rate the response on a scale of 1 to 10 by "
    'strictly following this format: "[[rating]]", for example: "Rating: [[5]]".'
)


class Judge(Protocol):
    """Anything that answers chat conversations greedily, one reply per conversation."""

    def complete(self, conversations: list[list[dict]]) -> list[str]: ...


class LocalJudge:
    """A judge that runs a model tunelab loaded, with greedy decoding."""

    def __init__(self, model, tokenizer, max_new_tokens: int = 256, batch_size: int = 8):
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        from tunelab.infer import DecodingConfig, generate

        cfg = DecodingConfig(max_new_tokens=self.max_new_tokens, temperature=0.0)
        return generate(self.model, self.tokenizer, conversations, cfg, batch_size=self.batch_size)


class EndpointJudge:
    """A judge behind an OpenAI-compatible chat completions endpoint (vLLM, llama.cpp, OpenAI, ...)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, max_tokens: int = 256,
                 concurrency: int = 4, timeout: float = 60, api_key_env: str = "OPENAI_API_KEY",
                 max_retries: int = 2):
        import openai

        self.base_url, self.model, self.max_tokens = base_url, model, max_tokens
        self.concurrency, self.timeout, self.api_key_env = max(1, concurrency), timeout, api_key_env
        # Local servers often need no key, but the client refuses to start without one.
        self._key = api_key or os.environ.get(api_key_env) or "none"
        self.client = openai.OpenAI(base_url=base_url, api_key=self._key, timeout=timeout, max_retries=max_retries)

    def _error(self, exc: Exception) -> ModelError:
        import openai

        where = f"judge endpoint {self.base_url} (model {self.model!r})"
        if isinstance(exc, openai.APITimeoutError):
            msg = f"{where}: no reply within {self.timeout}s; is the server overloaded? raise the timeout"
        elif isinstance(exc, openai.APIConnectionError):
            reason = exc.__cause__ or exc  # the transport's error says why ("connection refused")
            msg = f"{where}: cannot connect ({reason}); is the server running? set judge.base_url"
        elif isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            msg = (f"{where}: the API key was refused ({exc.status_code}); put a valid key in the environment "
                   f"variable {self.api_key_env} (judge.api_key_env)")
        elif isinstance(exc, openai.NotFoundError):
            msg = (f"{where}: not found (404); check judge.endpoint_model against the server's /models list "
                   "and that judge.base_url ends in /v1")
        elif isinstance(exc, openai.APIStatusError):
            msg = f"{where}: the server answered {exc.status_code}: {exc.message}"
        else:
            msg = f"{where}: {exc}"
        # Servers sometimes echo request headers in errors; never let the key reach a log.
        if self._key != "none":
            msg = msg.replace(self._key, "***")
        return ModelError(msg)

    def _one(self, messages: list[dict]) -> str:
        import openai

        try:
            reply = self.client.chat.completions.create(model=self.model, messages=messages, temperature=0,
                                                        max_tokens=self.max_tokens)
        except openai.OpenAIError as exc:
            raise self._error(exc) from None  # the message says all a user needs; the client's chain adds noise
        return reply.choices[0].message.content or ""

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = [pool.submit(self._one, c) for c in conversations]
            return [f.result() for f in futures]  # in submission order, whatever order they finish in
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after a failure, send no more requests


class JudgeConfig(Options):
    """Which judge to use. The endpoint's API key is read from `api_key_env`, never stored here."""

    model: str | None = opt(None, "a local judge model (alias, folder, .gguf)", flag="--judge")
    adapter: str | None = opt(None, "a run folder whose adapter the local judge uses")
    base_url: str | None = opt(None, "an OpenAI-compatible endpoint's base URL", flag="--judge-url")
    api_key_env: str = opt("OPENAI_API_KEY", "the environment variable holding the endpoint's key")
    endpoint_model: str | None = opt(None, "the model name to ask the endpoint for", flag="--judge-model")
    max_new_tokens: int = opt(256, "the longest verdict", ge=1)
    rubric: str | None = opt(None, "what the judge looks for (single grades)")

    @model_validator(mode="after")
    def _someone_judges(self) -> JudgeConfig:
        if self.base_url and not (self.endpoint_model or self.model):
            fail("endpoint_model", "a judge endpoint needs the model name to ask it for (CLI: --judge-model NAME)")
        if not (self.base_url or self.model or self.adapter):
            raise ValueError("set judge.model (a local model name or folder) or judge.base_url (an OpenAI-compatible "
                             "endpoint)")
        return self


def make_judge(cfg: JudgeConfig) -> Judge:
    """An EndpointJudge when `base_url` is set, else a LocalJudge on `model` (and `adapter`)."""
    if cfg.base_url:
        return EndpointJudge(cfg.base_url, cfg.endpoint_model or cfg.model, api_key=os.environ.get(cfg.api_key_env),
                             max_tokens=cfg.max_new_tokens, api_key_env=cfg.api_key_env)
    from tunelab.models import load_model, load_run
    from tunelab.hardware import compute_dtype

    dtype = compute_dtype("auto")
    if cfg.adapter:
        model, tokenizer = load_run(cfg.adapter, base=cfg.model, dtype=dtype)
    else:
        model, tokenizer = load_model(cfg.model, dtype=dtype)
    return LocalJudge(model, tokenizer, max_new_tokens=cfg.max_new_tokens)


def _reference_block(reference: str | None) -> str:
    if not reference:
        return ""
    return f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"


def pair_prompt(question: str, answer_a: str, answer_b: str, rubric: str | None = None,
                reference: str | None = None) -> list[dict]:
    """The conversation asking which of two answers is better."""
    # One user turn, no system turn: some chat templates (Gemma) reject a system role.
    text = (f"{PAIR_INSTRUCTION.format(rubric=rubric or DEFAULT_RUBRIC)}\n\n[User Question]\n{question}\n\n"
            f"{_reference_block(reference)}"
            f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
            f"[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]")
    return [{"role": "user", "content": text}]


def single_prompt(question: str, answer: str, rubric: str | None = None, reference: str | None = None) -> list[dict]:
    """The conversation asking for a 1-10 rating of one answer."""
    text = (f"{SINGLE_INSTRUCTION.format(rubric=rubric or DEFAULT_RUBRIC)}\n\n[Question]\n{question}\n\n"
            f"{_reference_block(reference)}"
            f"[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")
    return [{"role": "user", "content": text}]


_VERDICT = re.compile(r"\[\[\s*([abc])\s*\]\]", re.IGNORECASE)
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "C" (tie) from the last [[X]] in `text`; None when there is none."""
    found = _VERDICT.findall(text or "")
    return found[-1].upper() if found else None


def parse_rating(text: str) -> int | None:
    """The whole number 1..10 in the last [[N]] of `text`; None when missing or out of range."""
    found = _RATING.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    return int(value) if value.is_integer() and 1 <= value <= 10 else None


_UNSWAP = {"A": "B", "B": "A", "C": "C", None: None}


def _check_lengths(questions: Sequence, *others: Sequence | None) -> None:
    for other in others:
        if other is not None and len(other) != len(questions):
            raise ValueError(f"got {len(questions)} questions but {len(other)} answers/references")


def pairwise(judge: Judge, questions: Sequence[str], answers_a: Sequence[str], answers_b: Sequence[str],
             rubric: str | None = None, references: Sequence[str | None] | None = None) -> dict:
    """Compare system A with system B on each question, judging both presentation orders.

    Returns counts, win/loss rates with Wilson 95% intervals, score (win + tie/2)/n,
    position_consistency, invalid (unparsable verdicts) and per-question items.
    """
    _check_lengths(questions, answers_a, answers_b, references)
    n = len(questions)
    refs = references or [None] * n
    convs = [pair_prompt(q, a, b, rubric, r) for q, a, b, r in zip(questions, answers_a, answers_b, refs)]
    convs += [pair_prompt(q, b, a, rubric, r) for q, a, b, r in zip(questions, answers_a, answers_b, refs)]
    verdicts = [parse_verdict(t) for t in judge.complete(convs)]  # one call, so the judge can batch it all
    items, counts, consistent = [], {"win": 0, "tie": 0, "loss": 0}, 0
    for first, swapped in zip(verdicts[:n], verdicts[n:]):
        second = _UNSWAP[swapped]
        outcome = "win" if first == second == "A" else "loss" if first == second == "B" else "tie"
        counts[outcome] += 1
        consistent += first is not None and first == second
        items.append({"first": first, "second": second, "outcome": outcome})
    win_lo, win_hi = wilson_interval(counts["win"], n)
    loss_lo, loss_hi = wilson_interval(counts["loss"], n)
    denom = max(n, 1)
    return {
        "n": n, **counts,
        "win_rate": round(counts["win"] / denom, 5), "win_rate_lo95": round(win_lo, 5),
        "win_rate_hi95": round(win_hi, 5),
        "loss_rate": round(counts["loss"] / denom, 5), "loss_rate_lo95": round(loss_lo, 5),
        "loss_rate_hi95": round(loss_hi, 5),
        "score": round((counts["win"] + counts["tie"] / 2) / denom, 5),
        "position_consistency": round(consistent / denom, 5),
        "invalid": sum(v is None for v in verdicts),
        "items": items,
    }


def grade(judge: Judge, questions: Sequence[str], answers: Sequence[str], rubric: str | None = None,
          references: Sequence[str | None] | None = None) -> dict:
    """Rate each answer 1-10; the mean over valid ratings with a normal 95% interval.

    mean, lo95 and hi95 are None when no rating parsed; the interval collapses to the
    mean when fewer than two did.
    """
    _check_lengths(questions, answers, references)
    refs = references or [None] * len(questions)
    convs = [single_prompt(q, a, rubric, r) for q, a, r in zip(questions, answers, refs)]
    ratings = [parse_rating(t) for t in judge.complete(convs)]
    valid = [r for r in ratings if r is not None]
    k = len(valid)
    mean = lo = hi = None
    if k:
        mean = lo = hi = sum(valid) / k
        if k >= 2:
            sd = math.sqrt(sum((r - mean) ** 2 for r in valid) / (k - 1))
            half = 1.96 * sd / math.sqrt(k)
            lo, hi = mean - half, mean + half
    rnd = (lambda x: None if x is None else round(x, 5))
    return {"n": len(ratings), "mean": rnd(mean), "lo95": rnd(lo), "hi95": rnd(hi),
            "invalid": len(ratings) - k, "ratings": ratings}
