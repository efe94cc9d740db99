"""From a task's data file to what each kind scores: documents, questions, prompts, pairs.

Every problem with a record is a DataError naming `file:line`, the field, and the fix.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.data.readers import FORMATS, Record, read_records
from tunelab.errors import DataError
from tunelab.eval.choice import Question
from tunelab.eval.config import TaskConfig


def read_task_records(task: TaskConfig, path: str | None = None) -> list[Record]:
    """The task file's records, fields renamed by `columns`, cut to `limit`."""
    path = path or task.file
    out = []
    for record in read_records(path):
        if task.columns:
            record = Record({task.columns.get(k, k): v for k, v in record.data.items()}, record.where)
        out.append(record)
        if task.limit and len(out) >= task.limit:
            break
    return out


def render(template: str | None, record: Record, default_field: str, task: TaskConfig) -> str:
    """`template` filled from the record's fields, or the record's `default_field`."""
    if template is None:
        value = record.data.get(default_field)
        if not isinstance(value, str):
            raise DataError(f"{record.where}: task '{task.name}' needs a '{default_field}' text field "
                            f"(or set `template`, e.g. template: \"{{question}}\"); fields here: {_fields(record)}")
        return value
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and not name.isidentifier():
            raise DataError(f"task '{task.name}': template {template!r}: {{{name}}} is not a field name; write "
                            "fields as {name} and literal braces as {{ }}")
    try:
        return template.format_map(record.data)
    except KeyError as e:
        raise DataError(f"{record.where}: task '{task.name}': the template uses {{{e.args[0]}}} but the record has "
                        f"no field '{e.args[0]}'; fields here: {_fields(record)}") from None
    except (IndexError, ValueError) as e:
        raise DataError(f"task '{task.name}': template {template!r} is not a valid format string ({e}); "
                        "write fields as {name} and literal braces as {{ }}") from None


def _fields(record: Record) -> str:
    return ", ".join(sorted(record.data)) or "none"


# ---------------------------------------------------------------- perplexity


def perplexity_documents(task: TaskConfig) -> list[str]:
    """Each .txt file whole, or each record's `text_field`; a folder is read file by file."""
    p = Path(task.file)
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in FORMATS) if p.is_dir() else [p]
    if not files:
        raise DataError(f"{p}: no data files in this folder (looked for {', '.join(sorted(FORMATS))})")
    docs = []
    for f in files:
        for record in read_task_records(task, str(f)):
            text = record.data.get(task.text_field if f.suffix.lower() != ".txt" else "text")
            if not isinstance(text, str):
                raise DataError(f"{record.where}: perplexity task '{task.name}' needs a '{task.text_field}' text "
                                f"field (set text_field); fields here: {_fields(record)}")
            docs.append(text)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{task.file}: task '{task.name}' has no non-empty text to score")
    return docs


# ---------------------------------------------------------------- multiple choice


def _choices(task: TaskConfig, record: Record) -> list[str]:
    choices = task.choices if task.choices is not None else record.data.get(task.choices_field)
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{record.where}: choice task '{task.name}' needs a '{task.choices_field}' list of at least "
                        f"two non-empty strings (or `choices:` in the task for endings shared by every record); "
                        f"got {choices!r}")
    return choices


def _gold(task: TaskConfig, record: Record, choices: list[str]) -> int:
    gold = record.data.get(task.gold_field)
    if gold is None:
        raise DataError(f"{record.where}: choice task '{task.name}' needs a '{task.gold_field}' field with the "
                        f"index of the right ending (0..{len(choices) - 1}) or its text; set gold_field to rename it")
    if isinstance(gold, str) and not gold.lstrip("-").isdigit():
        if gold not in choices:
            raise DataError(f"{record.where}: gold answer {gold!r} is not one of the choices {choices}")
        return choices.index(gold)
    if isinstance(gold, float) and gold.is_integer():
        gold = int(gold)
    if isinstance(gold, bool) or not isinstance(gold, (int, str)):
        raise DataError(f"{record.where}: '{task.gold_field}' must be an index or a choice's text, got {gold!r}")
    index = int(gold)
    if not 0 <= index < len(choices):
        raise DataError(f"{record.where}: gold index {index} is out of range: this record has {len(choices)} "
                        f"choices (valid indices 0..{len(choices) - 1})")
    return index


def choice_questions(task: TaskConfig) -> list[Question]:
    """The task's questions: context (few-shot examples first), endings and the gold index."""
    records = read_task_records(task)
    parsed = []
    for r in records:
        choices = _choices(task, r)
        parsed.append((render(task.template, r, "context", task), choices, _gold(task, r, choices), r.where))
    shots = parsed
    if task.num_fewshot and (task.fewshot_file or task.limit):  # examples come from the whole file
        shots = []
        unlimited = task.model_copy(update={"limit": None})
        for r in read_task_records(unlimited, task.fewshot_file or task.file):
            c = _choices(task, r)
            shots.append((render(task.template, r, "context", task), c, _gold(task, r, c), r.where))
    if task.num_fewshot and task.num_fewshot >= len(shots):
        raise DataError(f"task '{task.name}': num_fewshot={task.num_fewshot} but only {len(shots)} examples to "
                        "draw from; lower num_fewshot or give a larger fewshot_file")
    rng = random.Random(task.seed)
    gap = " " if task.target_delimiter is None else task.target_delimiter  # lm-evaluation-harness's default
    questions = []
    for text, choices, gold, where in parsed:
        context = task.description or ""
        if task.num_fewshot:
            pool = [s for s in rng.sample(shots, task.num_fewshot + 1) if s[3] != where][:task.num_fewshot]
            context += "".join(f"{t}{gap}{c[g]}{task.fewshot_delimiter}" for t, c, g, _ in pool)
        context += text
        questions.append(Question(context, [gap + c for c in choices], choices, gold))
    return questions


# ---------------------------------------------------------------- generation and judge


@dataclass
class Prompted:
    prompts: list[str | list[dict]]  # a user turn, or a message list
    golds: list[Any]
    references: list[str | None]
    wheres: list[str]  # "file:line" of each record


def prompted(task: TaskConfig, need_gold: bool) -> Prompted:
    """Prompts (a template, a prompt field or a `messages` list) and their gold answers."""
    out = Prompted([], [], [], [])
    for r in read_task_records(task):
        if task.template is None and "messages" in r.data:
            messages = _messages(r, task)
            # a conversation ending in an answer: that answer is the gold (unless one is given), never the prompt
            prompt, gold = messages, r.data.get(task.answer_field)
            if messages[-1]["role"] == "assistant":
                prompt, gold = messages[:-1], gold if gold is not None else messages[-1]["content"]
            if not prompt:
                raise DataError(f"{r.where}: task '{task.name}': the conversation has no turn before the answer")
        else:
            prompt, gold = render(task.template, r, task.prompt_field, task), r.data.get(task.answer_field)
        if need_gold and gold is None:
            raise DataError(f"{r.where}: task '{task.name}' needs a gold answer in '{task.answer_field}' "
                            f"(set answer_field to rename it); fields here: {_fields(r)}")
        if isinstance(gold, str) and "json" in task.metrics:
            gold = _maybe_json(gold)
            if not isinstance(gold, dict):
                raise DataError(f"{r.where}: task '{task.name}': metric json needs a JSON object as the gold "
                                f"answer in '{task.answer_field}'; got {str(gold)[:80]!r}")
        reference = r.data.get(task.reference_field) if task.reference_field else None
        out.prompts.append(prompt)
        out.golds.append(gold)
        out.references.append(reference if isinstance(reference, str) else None)
        out.wheres.append(r.where)
    return out


def uses_prompting(task: TaskConfig) -> bool:
    """Whether a generate task goes through the prompting route (few-shot, chain-of-thought, voting)."""
    return task.kind == "generate" and bool(task.num_fewshot or task.cot or task.self_consistency > 1)


def prompting_config(task: TaskConfig):
    """The task's prompting options as a `tunelab.prompting.PromptingConfig`."""
    from tunelab.prompting import PromptingConfig

    shared = task.shared()  # the FewShotConfig group, the same fields in both
    shared["fewshot_file"] = task.fewshot_file or task.file
    shared["answer_kind"] = task.answer_kind or ("number" if "numeric" in task.metrics else "text")
    return PromptingConfig(**shared, prompt_field=task.prompt_field, answer_field=task.answer_field, chat=task.chat,
                           choices=list(task.choices or task.labels), seed=task.seed)


def with_prompting(task: TaskConfig, data: Prompted, embedder=None) -> Prompted:
    """The prompts with few-shot examples (from `fewshot_file`, else the task's whole file, never the
    question itself) and the chain-of-thought request. Examples are read as the questions are."""
    from tunelab.prompting import PromptTemplate, build_prompts
    from tunelab.prompting.fewshot import example_of

    pool = None
    if task.num_fewshot:
        template = PromptTemplate(task.name, input=task.template) if task.template is not None else None
        unlimited = task.model_copy(update={"limit": None})
        pool = [example_of(r, task.prompt_field, task.answer_field, template)
                for r in read_task_records(unlimited, task.fewshot_file or task.file)]
    data.prompts = build_prompts(prompting_config(task), data.prompts, pool=pool, embedder=embedder)
    return data


def _messages(record: Record, task: TaskConfig) -> list[dict]:
    messages = record.data["messages"]
    if not task.chat:
        raise DataError(f"{record.where}: task '{task.name}' has chat: false, but this record is a 'messages' "
                        "conversation; set chat: true, or give a text prompt")
    if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages)):
        raise DataError(f"{record.where}: 'messages' must be a non-empty list of {{role, content}} turns")
    return messages


def _maybe_json(text: str) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, dict) else text


# ---------------------------------------------------------------- bias probe


def bias_pairs(task: TaskConfig) -> tuple[list[str], list[str], list[str]]:
    """(stereotyped sentences, their counterparts, categories)."""
    more, less, cats = [], [], []
    for r in read_task_records(task):
        a, b = r.data.get(task.stereotyped_field), r.data.get(task.other_field)
        if not (isinstance(a, str) and a.strip() and isinstance(b, str) and b.strip()):
            raise DataError(f"{r.where}: bias task '{task.name}' needs two non-empty sentences, "
                            f"'{task.stereotyped_field}' and '{task.other_field}' (rename with stereotyped_field / "
                            f"other_field); fields here: {_fields(r)}")
        more.append(a)
        less.append(b)
        cats.append(str(r.data.get(task.category_field, "all")))
    return more, less, cats
