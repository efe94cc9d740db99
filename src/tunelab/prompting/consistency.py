"""Self-consistency (Wang et al. 2022): sample several reasoning paths, answer by majority vote.

One greedy chain of thought can take a wrong turn; sampled chains that reach the same
answer by different routes are more often right. Every sample of every prompt goes to the
engine in one `generate` call, so the engine batches them all; each sample has its own seed,
so the paths differ and a rerun gives the same votes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tunelab.errors import ConfigError
from tunelab.eval.metrics import normalize_answer
from tunelab.infer.decoding import DecodingConfig
from tunelab.prompting.cot import extract_answer


@dataclass
class Vote:
    """One prompt's self-consistency outcome."""

    answer: str | None  # the majority answer; None when no sample gave one
    votes: dict[str, int]  # answer -> how many samples gave it, in the order first seen
    samples: list[str]  # every sampled output
    answers: list[str | None]  # the answer read from each sample
    finish_reasons: list[str]


def _key(answer: str) -> str:
    """Answers that differ only in case, punctuation or articles are one vote."""
    return normalize_answer(answer) or answer.strip().lower()


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, dict[str, int]]:
    """(winner, counts): the most frequent answer, ties going to the one seen first; None answers do not vote.

    Answers equal after SQuAD normalisation count together, under the spelling seen first.
    """
    counts: dict[str, int] = {}
    spelling: dict[str, str] = {}
    for answer in answers:
        if answer is None:
            continue
        key = _key(answer)
        spelling.setdefault(key, answer)
        counts[key] = counts.get(key, 0) + 1
    if not counts:
        return None, {}
    winner = max(counts, key=counts.__getitem__)  # max keeps the first of equal counts: the first seen
    return spelling[winner], {spelling[k]: c for k, c in counts.items()}


def complete(target, prompts: Sequence[str | list[dict]], params: Sequence[DecodingConfig], chat: bool = True,
             system: str | None = None, constraint=None, batch_size: int = 16):
    """Completions of prompt i under params[i], in order; `target` is an engine or (model, tokenizer)."""
    from tunelab.infer.engine import Request, generate

    requests = [Request(p, c, chat=chat, system=system, constraint=constraint) for p, c in zip(prompts, params)]
    if hasattr(target, "submit"):
        return generate(target, requests)
    if not (isinstance(target, tuple) and len(target) == 2):
        raise TypeError("expected an inference engine or a (model, tokenizer) pair")
    from tunelab.infer.backends.transformers import TransformersEngine

    model, tokenizer = target
    was_training = model.training
    model.eval()
    engine = TransformersEngine(model, tokenizer, max_batch_size=batch_size)
    try:
        return generate(engine, requests)
    finally:
        engine.close()
        model.train(was_training)


def sample_params(decoding: DecodingConfig, prompts: int, n: int, temperature: float,
                  seed: int) -> list[DecodingConfig]:
    """n sampling configs per prompt, prompt-major; sample j of prompt i has seed + i*n + j.

    The seed is decoding.seed when set, else `seed`; one sample per prompt keeps `decoding` as it is.
    """
    if n < 1:
        raise ConfigError(f"samples: self-consistency needs at least 1 sample per prompt, got {n}")
    if n > 1 and temperature <= 0:
        raise ConfigError(f"temperature: self-consistency samples, so it needs a temperature above 0 (got {temperature}"
                          "); 0.7 is the usual choice")
    if n > 1 and decoding.num_beams > 1:
        raise ConfigError("num_beams: self-consistency samples its paths; use num_beams 1")
    if n == 1 and decoding.seed is None:  # one sample as asked: greedy, or unseeded sampling
        return [decoding] * prompts
    base = decoding.seed if decoding.seed is not None else seed
    sampled = decoding.model_copy(update={"temperature": temperature}) if n > 1 else decoding
    return [sampled.model_copy(update={"seed": base + r}) for r in range(prompts * n)]


def self_consistency(target, prompts: Sequence[str | list[dict]], n: int = 5, temperature: float = 0.7,
                     kind: str = "number", choices: Sequence[str] | None = None,
                     decoding: DecodingConfig | None = None, seed: int = 0, chat: bool = True,
                     system: str | None = None, constraint=None, batch_size: int = 16,
                     extract: Callable[[str], str | None] | None = None) -> list[Vote]:
    """Answer each prompt by majority vote over n sampled outputs.

    Args:
        target: an inference engine, or a (model, tokenizer) pair.
        prompts: user texts or message lists (already holding any few-shot examples and CoT request).
        kind, choices: how each sample's answer is read (see `extract_answer`), unless `extract` is given.
        decoding: everything but temperature and seed (max_new_tokens, top_p, stop, ...).
    Returns:
        one Vote per prompt: the answer, the vote counts, the samples.
    """
    decoding = decoding or DecodingConfig()
    read = extract or (lambda text: extract_answer(text, kind, choices))
    params = sample_params(decoding, len(prompts), n, temperature, seed)
    expanded = [p for p in prompts for _ in range(n)]
    completions = complete(target, expanded, params, chat=chat, system=system, constraint=constraint,
                           batch_size=batch_size)
    out = []
    for i in range(len(prompts)):
        group = completions[i * n:(i + 1) * n]
        samples = [c.text.strip() for c in group]
        answers = [read(s) for s in samples]
        winner, votes = majority_vote(answers)
        out.append(Vote(winner, votes, samples, answers, [c.finish_reason for c in group]))
    return out
