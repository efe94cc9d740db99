"""The prompting route from config to answers: template, few-shot examples, chain-of-thought, votes.

`build_prompts` turns questions (records, texts or conversations) into the prompts the model
sees; `answer` runs them through an engine and reads the final answers. `tunelab generate`,
`tunelab eval` and Python callers share these two functions, so the three agree.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tunelab.data.readers import Record
from tunelab.errors import ConfigError, DataError
from tunelab.infer.decoding import DecodingConfig
from tunelab.prompting.cot import STYLES, cot_instruction, extract_answer, with_final_line
from tunelab.prompting.fewshot import SELECT, Example, FewShotSelector, as_messages, as_text, read_pool
from tunelab.prompting.templates import ANSWER_KINDS, PromptTemplate, load_template


@dataclass
class PromptingConfig:
    """How questions are put to the model. Every part is optional: the default is the question as given."""

    template: str | None = None  # a built-in (qa, classify, extract, math), a .yaml/.json file or "{field} ..." text
    instruction: str | None = None  # replaces the template's instruction
    labels: list[str] = field(default_factory=list)  # classify: the label set
    keys: list[str] = field(default_factory=list)  # extract: the fields to extract
    input_field: str = "prompt"  # the question's field when no template is given
    output_field: str = "completion"  # a few-shot example's answer
    fewshot_file: str | None = None  # examples: .jsonl/.json/.csv/.parquet records
    k: int = 0  # examples per question; 0 is zero-shot
    select: str = "random"  # random (seeded) | similar (embedding similarity to the question)
    embedder: str = "all-minilm-l6-v2"  # sentence-transformers model for select: similar
    chat: bool = True  # examples as chat turns; false: one text block for a base model to continue
    cot: bool = False  # ask for step-by-step reasoning ending in a final-answer line
    cot_style: str = "auto"  # answer_is ("The answer is X") | gsm8k ("#### X") | auto (gsm8k if the examples use it)
    answer_kind: str | None = None  # text | number | choice; default: the template's, else text
    choices: list[str] = field(default_factory=list)  # answer_kind choice; default: the labels
    samples: int = 1  # self-consistency: outputs sampled per question and voted on; 1 is off
    temperature: float = 0.7  # sampling temperature of self-consistency
    seed: int = 0  # random example choice and sampling seeds
    delimiter: str = "\n\n"  # text blocks: between examples
    target_delimiter: str | None = None  # text blocks: between input and answer (default " " after a cue, else "\n")

    def check(self) -> PromptingConfig:
        """Raise ConfigError naming the key when a value cannot work; return self."""
        load_template(self.template, self.labels, self.keys)
        rules = [
            ("k", self.k >= 0, "0 (zero-shot) or more"),
            ("select", self.select in SELECT, " or ".join(SELECT)),
            ("cot_style", self.cot_style in ("auto", *STYLES), "auto, " + " or ".join(STYLES)),
            ("answer_kind", self.answer_kind in (None, *ANSWER_KINDS), " or ".join(ANSWER_KINDS)),
            ("samples", self.samples >= 1, "at least 1 (1 turns self-consistency off)"),
            ("temperature", self.samples == 1 or self.temperature > 0, "above 0 to sample (0.7 is usual)"),
            ("seed", self.seed >= 0, "0 or more"),
        ]
        for key, ok, expected in rules:
            if not ok:
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not allowed; expected {expected}")
        kind, choices = self.answer_spec()
        if kind == "choice" and not choices:
            raise ConfigError("choices: answer_kind choice needs the list of choices (or labels; CLI --labels a,b)")
        return self

    def answer_spec(self) -> tuple[str, list[str]]:
        """(answer kind, choices) after defaults."""
        template = load_template(self.template, self.labels, self.keys)
        kind = self.answer_kind or (template.answer_kind if template else "text")
        return kind, list(self.choices or self.labels or (template.labels if template else None) or [])

    @property
    def reads_answers(self) -> bool:
        """Whether outputs are reduced to a final answer (chain-of-thought or voting)."""
        return self.cot or self.samples > 1


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
        where, value = record.where, record.data.get(cfg.input_field, record.data.get("messages"))
        if not isinstance(value, (str, list)):
            raise DataError(f"{where}: needs a '{cfg.input_field}' text field (or a 'messages' list); fields here: "
                            f"{', '.join(sorted(record.data)) or 'none'}; set input_field (CLI --field) or a template")
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
        embedder: for select: similar, any object with `embed(texts)` (default: `cfg.embedder` by name).
    Returns:
        per item a text, or (chat with examples) a list of user/assistant turns ending in the question.
    """
    cfg.check()
    template = load_template(cfg.template, cfg.labels, cfg.keys)
    queries = [_query(item, cfg, template, i) for i, item in enumerate(items)]
    header = cfg.instruction if cfg.instruction is not None else (template.header() if template else "")
    shots: list[list[Example]] = [[] for _ in queries]
    if cfg.k:
        if pool is None:
            if not cfg.fewshot_file:
                raise ConfigError(f"fewshot_file: k={cfg.k} examples need a file to take them from (CLI --fewshot "
                                  "FILE)")
            pool = read_pool(cfg.fewshot_file, cfg.input_field, cfg.output_field, template)
        style = _style(cfg, pool)
        if cfg.cot:
            pool = [replace(e, output=with_final_line(e.output, style)) for e in pool]
        selector = FewShotSelector(pool, cfg.k, cfg.select, cfg.seed, embedder or cfg.embedder,
                                   source=cfg.fewshot_file or "the few-shot pool")
        shots = selector.select([_text(q) for q in queries])
    else:
        style = _style(cfg, [])
    suffix = cot_instruction(style) if cfg.cot else ""
    if not cfg.chat:
        gap = cfg.target_delimiter if cfg.target_delimiter is not None else \
            (" " if template is not None and template.answer_prefix else "\n")
        return [as_text(s, q, "\n\n".join(p for p in (header, suffix) if p), cfg.delimiter, gap)
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
    if cfg.chat or not cfg.k:
        return []
    template = load_template(cfg.template, cfg.labels, cfg.keys)
    cue = next(iter(string.Formatter().parse(template.input)))[0].strip() if template else ""
    if cue:
        return [cfg.delimiter + cue]
    return [] if cfg.cot else [cfg.delimiter]  # reasoning may hold blank lines; a direct answer does not


def answer(target, prompts: Sequence[str | list[dict]], cfg: PromptingConfig | None = None,
           decoding: DecodingConfig | None = None, *, system: str | None = None, constraint=None,
           batch_size: int = 16) -> list[Result]:
    """Answer prompts from `build_prompts`: the outputs, the final answers and (self-consistency) the votes.

    Args:
        target: an inference engine (`tunelab.load_engine`) or a (model, tokenizer) pair.
        decoding: length, stop strings, top_p...; with cfg.samples > 1 its temperature is cfg.temperature.
    """
    from tunelab.prompting.consistency import complete, sample_params, self_consistency

    cfg = (cfg or PromptingConfig()).check()
    decoding = decoding or DecodingConfig()
    decoding = replace(decoding, stop=list(decoding.stop) + [s for s in stop_strings(cfg) if s not in decoding.stop])
    kind, choices = cfg.answer_spec()

    def read(text: str) -> str | None:
        found = extract_answer(text, kind, choices or None)
        return found if found is not None or cfg.cot or kind != "text" else (text.strip() or None)

    if cfg.samples > 1:
        votes = self_consistency(target, prompts, cfg.samples, cfg.temperature, decoding=decoding, seed=cfg.seed,
                                 chat=cfg.chat, system=system, constraint=constraint, batch_size=batch_size,
                                 extract=read)
        return [Result(v.samples[0], v.answer, v.votes, v.samples, v.finish_reasons[0]) for v in votes]
    params = sample_params(decoding, len(prompts), 1, cfg.temperature, cfg.seed)
    done = complete(target, prompts, params, chat=cfg.chat, system=system, constraint=constraint,
                    batch_size=batch_size)
    results = []
    for c in done:
        text = c.text.strip()
        results.append(Result(text, read(text) if cfg.cot else text, None, [text], c.finish_reason))
    return results
