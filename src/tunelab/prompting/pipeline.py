"""The prompting route from config to answers: template, few-shot examples, chain-of-thought, votes.

`build_prompts` turns questions (records, texts or conversations) into the prompts the model
sees; `answer` runs them through an engine and reads the final answers. `tunelab generate`,
`tunelab eval` and Python callers share these two functions, so the three agree.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import model_validator

from tunelab.config.groups import DecodingConfig, FewShotConfig
from tunelab.config.options import fail, opt
from tunelab.data.readers import Record
from tunelab.errors import ConfigError, DataError
from tunelab.prompting.cot import cot_instruction, extract_answer, with_final_line
from tunelab.prompting.fewshot import Example, FewShotSelector, as_messages, as_text, read_pool
from tunelab.prompting.templates import PromptTemplate, load_template


class PromptingConfig(FewShotConfig):
    """How questions are put to the model. Every part is optional: the default is the question as given.

    The few-shot, chain-of-thought and self-consistency options are the shared `FewShotConfig`
    (the names eval tasks use too); self-consistency samples at the decoding temperature,
    0.7 when that is 0 (greedy).
    """

    template: str | None = opt(None, "qa, classify, extract, math, a .yaml/.json template file, or a format string "
                               "over the record's fields such as '{question}\\nAnswer:'")
    labels: list[str] = opt([], "classify: the label set (also the choices of answer_kind choice)", sep=",")
    keys: list[str] = opt([], "extract: the fields to extract", sep=",")
    prompt_field: str = opt("prompt", "the question's field when no template is given (a text, or 'messages')",
                            flags=("--field",), aka=("input_field",))
    answer_field: str = opt("completion", "the field holding a few-shot example's answer", aka=("output_field",))
    chat: bool = opt(True, "chat prompts (examples as turns); false: one text block for a base model to continue",
                     off_flags=("--raw",))
    cot_style: Literal["auto", "answer_is", "gsm8k"] = opt(
        "auto", "answer_is (\"The answer is X\") or gsm8k (\"#### X\"); auto: gsm8k if the examples use it")
    choices: list[str] = opt([], "answer_kind choice: the answers; default the labels", cli=False)
    seed: int = opt(0, "seed of random example choice and of sampling", ge=0, cli=False)

    @model_validator(mode="after")
    def _usable(self) -> PromptingConfig:
        if self.fewshot_file and "num_fewshot" not in self.model_fields_set:
            self.num_fewshot = 4  # a file of examples given: show some
        load_template(self.template, self.labels, self.keys)
        kind, choices = self.answer_spec()
        if kind == "choice" and not choices:
            fail("choices", "answer_kind choice needs the list of choices (or labels; CLI --labels a,b)")
        return self

    def answer_spec(self) -> tuple[str, list[str]]:
        """(answer kind, choices) after defaults."""
        template = load_template(self.template, self.labels, self.keys)
        kind = self.answer_kind or (template.answer_kind if template else "text")
        return kind, list(self.choices or self.labels or (template.labels if template else None) or [])

    @property
    def in_use(self) -> bool:
        """Whether any of it is asked for (else questions go to the model as they are)."""
        return bool(self.template or self.fewshot_file or self.num_fewshot or self.cot or self.self_consistency > 1)

    @property
    def reads_answers(self) -> bool:
        """Whether outputs are reduced to a final answer (chain-of-thought or voting)."""
        return self.cot or self.self_consistency > 1


@dataclass
class Result:
    """One question's answer."""

    text: str  # the (first) output
    answer: str | None  # the final answer (voted, extracted); the output itself when neither is on
    votes: dict[str, int] | None  # self-consistency vote counts; None with one sample
    samples: list[str]  # every output
    finish_reason: str


def _query(item: Any, cfg: PromptingConfig, template: PromptTemplate | None, index: int) -> str | list[dict]:
    """A question as text (or a conversation): a template over a record, a record's field, or the item itself."""
    where, value = f"question #{index}", item
    if not isinstance(item, (str, list)):
        record = item if isinstance(item, Record) else Record(dict(item), where)
        if template is not None:
            return template.render(record.data, record.where)
        where, value = record.where, record.data.get(cfg.prompt_field, record.data.get("messages"))
        if not isinstance(value, (str, list)):
            raise DataError(f"{where}: needs a '{cfg.prompt_field}' text field (or a 'messages' list); fields here: "
                            f"{', '.join(sorted(record.data)) or 'none'}; set prompt_field (CLI --field) or a template")
    if isinstance(value, list) and not cfg.chat:
        raise DataError(f"{where}: a conversation needs chat prompts; give text questions when chat is off (--raw)")
    return value


def _text(query: str | list[dict]) -> str:
    """What a question is compared by: its text, or a conversation's last user turn."""
    if isinstance(query, str):
        return query
    return next((str(m.get("content", "")) for m in reversed(query) if m.get("role") == "user"), "")


def _style(cfg: PromptingConfig, pool: Sequence[Example]) -> str:
    if cfg.cot_style != "auto":
        return cfg.cot_style
    return "gsm8k" if pool and sum("####" in e.output for e in pool) * 2 >= len(pool) else "answer_is"


def build_prompts(cfg: PromptingConfig, items: Sequence[Any], pool: Sequence[Example] | None = None,
                  embedder: Any = None) -> list[str | list[dict]]:
    """The prompts for `items` (records / dicts, question texts or conversations).

    Args:
        pool: few-shot examples to use instead of reading `cfg.fewshot_file`.
        embedder: for fewshot_select similar, any object with `embed(texts)` (default: `cfg.fewshot_embedder`).
    Returns:
        per item a text, or (chat with examples) a list of user/assistant turns ending in the question.
    """
    cfg.check()
    template = load_template(cfg.template, cfg.labels, cfg.keys)
    queries = [_query(item, cfg, template, i) for i, item in enumerate(items)]
    header = cfg.description if cfg.description is not None else (template.header() if template else "")
    shots: list[list[Example]] = [[] for _ in queries]
    if cfg.num_fewshot:
        if pool is None:
            if not cfg.fewshot_file:
                raise ConfigError(f"fewshot_file: num_fewshot={cfg.num_fewshot} examples need a file to take them "
                                  "from (CLI --fewshot FILE)")
            pool = read_pool(cfg.fewshot_file, cfg.prompt_field, cfg.answer_field, template)
        style = _style(cfg, pool)
        if cfg.cot:
            pool = [dataclasses.replace(e, output=with_final_line(e.output, style)) for e in pool]
        selector = FewShotSelector(pool, cfg.num_fewshot, cfg.fewshot_select, cfg.seed,
                                   embedder or cfg.fewshot_embedder,
                                   source=cfg.fewshot_file or "the few-shot pool")
        shots = selector.select([_text(q) for q in queries])
    else:
        style = _style(cfg, [])
    suffix = cot_instruction(style) if cfg.cot else ""
    if not cfg.chat:
        gap = cfg.target_delimiter if cfg.target_delimiter is not None else \
            (" " if template is not None and template.answer_prefix else "\n")
        return [as_text(s, q, "\n\n".join(p for p in (header, suffix) if p), cfg.fewshot_delimiter, gap)
                for s, q in zip(shots, queries)]
    out = []
    for s, q in zip(shots, queries):
        if not s and isinstance(q, str):  # zero-shot stays one user text
            out.append("\n\n".join(p for p in (header, q, suffix) if p))
        else:
            out.append(as_messages(s, q, header, suffix))
    return out


def stop_strings(cfg: PromptingConfig) -> list[str]:
    """Where a text-block answer ends: at the start of the next example a base model goes on to write."""
    if cfg.chat or not cfg.num_fewshot:
        return []
    template = load_template(cfg.template, cfg.labels, cfg.keys)
    cue = next(iter(string.Formatter().parse(template.input)))[0].strip() if template else ""
    if cue:
        return [cfg.fewshot_delimiter + cue]
    return [] if cfg.cot else [cfg.fewshot_delimiter]  # reasoning may hold blank lines; a direct answer does not


def answer(target, prompts: Sequence[str | list[dict]], cfg: PromptingConfig | None = None,
           decoding: DecodingConfig | None = None, *, system: str | None = None, constraint=None,
           batch_size: int = 16) -> list[Result]:
    """Answer prompts from `build_prompts`: the outputs, the final answers and (self-consistency) the votes.

    Args:
        target: an inference engine (`tunelab.load_engine`) or a (model, tokenizer) pair.
        decoding: length, stop strings, top_p...; self-consistency samples at its temperature (0.7 when 0).
    """
    from tunelab.prompting.consistency import complete, sample_params, self_consistency

    cfg = (cfg or PromptingConfig()).check()
    decoding = decoding or DecodingConfig()
    decoding = decoding.model_copy(update={"stop": list(decoding.stop) + [s for s in stop_strings(cfg)
                                                                            if s not in decoding.stop]})
    temperature = decoding.temperature or 0.7
    kind, choices = cfg.answer_spec()

    def read(text: str) -> str | None:
        found = extract_answer(text, kind, choices or None)
        return found if found is not None or cfg.cot or kind != "text" else (text.strip() or None)

    if cfg.self_consistency > 1:
        votes = self_consistency(target, prompts, cfg.self_consistency, temperature, decoding=decoding, seed=cfg.seed,
                                 chat=cfg.chat, system=system, constraint=constraint, batch_size=batch_size,
                                 extract=read)
        return [Result(v.samples[0], v.answer, v.votes, v.samples, v.finish_reasons[0]) for v in votes]
    params = sample_params(decoding, len(prompts), 1, temperature, cfg.seed)
    done = complete(target, prompts, params, chat=cfg.chat, system=system, constraint=constraint,
                    batch_size=batch_size)
    results = []
    for c in done:
        text = c.text.strip()
        results.append(Result(text, read(text) if cfg.cot else text, None, [text], c.finish_reason))
    return results
