"""Option groups shared by several commands, each defined once and reused by composition.

- `Precision`: the number format training and evaluation compute in.
- `DecodingConfig`: how tokens are picked (generate, chat, serve, eval tasks, RAG answers).
- `FewShotConfig`: in-context examples, chain-of-thought and self-consistency (the prompting
  route in `tunelab generate` and in eval tasks). Names follow lm-evaluation-harness.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from tunelab.config.options import Options, fail, opt

Precision = Literal["auto", "bf16", "fp32"]  # auto: bf16 where the hardware computes it natively, else fp32
Dtype = Literal["auto", "bf16", "fp16", "fp32"]  # inference weights may also be fp16 (GPUs)
AnswerKind = Literal["text", "number", "choice"]


class DecodingConfig(Options):
    """How to pick tokens. temperature 0 means greedy; num_beams > 1 means beam search."""

    max_new_tokens: int = opt(256, "the most tokens an answer may have", ge=1,
                              aka=("max_tokens", "max_gen_toks", "max_length"))
    temperature: float = opt(0.0, "sampling temperature; 0 is greedy", ge=0, le=100,
                             flags=("--sc-temperature",))
    top_k: int = opt(0, "sample among the k most likely tokens; 0 is off", ge=0)
    top_p: float = opt(1.0, "sample among the most likely tokens holding this much probability", gt=0, le=1)
    min_p: float = opt(0.0, "drop tokens below this share of the top token's probability; 0 is off", ge=0, le=1)
    repetition_penalty: float = opt(1.0, "above 1 discourages any token already in prompt or answer (CTRL)", gt=0)
    presence_penalty: float = opt(0.0, "OpenAI: subtracted once from each token already generated", ge=-2, le=2)
    frequency_penalty: float = opt(0.0, "OpenAI: subtracted per occurrence in the answer", ge=-2, le=2)
    num_beams: int = opt(1, "beam search when above 1 (greedy)", ge=1)
    stop: list[str] = opt([], "stop strings (repeat the flag for several)", aka=("stop_sequences", "until"))
    seed: int | None = opt(None, "sampling seed; unset: a fresh random one", ge=0, lt=2**63)
    logprobs: bool = opt(False, "record each chosen token's log-probability")
    top_logprobs: int = opt(0, "and this many most likely alternatives", ge=0, le=20)
    ignore_eos: bool = opt(False, "keep generating past the end token (benchmarks)")

    @model_validator(mode="after")
    def _beams(self) -> DecodingConfig:
        if self.num_beams > 1 and self.temperature > 0:
            fail("num_beams", "above 1 is beam search, which is greedy: set temperature 0 (or num_beams 1)")
        if self.num_beams > 1 and (self.presence_penalty or self.frequency_penalty or self.logprobs or self.ignore_eos):
            fail("num_beams", "beam search takes repetition_penalty but not presence/frequency penalties, logprobs "
                 "or ignore_eos; use num_beams 1 for those")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def plain_argmax(self) -> bool:
        """Nothing changes the logits before argmax: a row can be picked in one batched argmax."""
        return (self.greedy and self.repetition_penalty == 1 and not self.presence_penalty
                and not self.frequency_penalty and not self.logprobs)


class FewShotConfig(Options):
    """Solved examples before each question, step-by-step reasoning, and voting over samples."""

    num_fewshot: int = opt(0, "solved examples shown before each question; 0 is zero-shot", ge=0,
                           flags=("--k",), aka=("k", "shots", "n_shot"))
    fewshot_file: str | None = opt(None, "where the examples come from (records); eval: default the task's own file",
                                   flags=("--fewshot",))
    fewshot_select: Literal["random", "similar"] = opt(
        "random", "examples at random (seeded per question) or the most similar to the question",
        flags=("--select",), aka=("select",))
    fewshot_embedder: str = opt("all-minilm-l6-v2", "sentence-transformers model for fewshot_select: similar",
                                flags=("--embedder",), aka=("embedder",))
    fewshot_delimiter: str = opt("\n\n", "text prompts: between examples", aka=("delimiter",))
    target_delimiter: str | None = opt(None, "text prompts: between a question and its answer; unset: ' ' "
                                       "(choice tasks, or after an answer cue), else a new line")
    description: str | None = opt(None, "text before the examples (replaces a template's instruction)",
                                  aka=("instruction",))
    cot: bool = opt(False, "ask for step-by-step reasoning and read the final answer from it",
                    aka=("chain_of_thought",))
    self_consistency: int = opt(1, "sample this many answers (at temperature, 0.7 when it is 0) and keep the "
                                "majority; 1 is off", ge=1, aka=("samples", "num_samples"))
    answer_kind: AnswerKind | None = opt(None, "how the final answer is read; default the template's, else text")

    def shared(self) -> dict:
        """This group's values, to pass on to another options class that composes it."""
        return {name: getattr(self, name) for name in FewShotConfig.model_fields}
