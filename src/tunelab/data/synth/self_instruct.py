"""Self-Instruct (Wang et al. 2022, arXiv:2212.10560): a teacher writes new tasks from examples, then answers them.

Each round shows the teacher a few tasks from the pool (mostly seeds, some it wrote before) and asks
for one new task; candidates are filtered as in the paper (length, words naming what a text model
cannot do, a start that is not a word, ROUGE-L against every task so far at or above 0.7) and for
talk about a task instead of a task ("Here's a new task:"), then answered; an answer that is empty,
cut off at the token limit, or repeats the task drops the record. Kept records
carry their provenance: teacher, prompt version, seed and round.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from tunelab.config.groups import DecodingConfig
from tunelab.config.options import Options, opt

PROMPT_VERSION = "self-instruct-v1"
SEEDS = Path(__file__).with_name("seed_tasks.jsonl")
BLOCKED = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
           "plot", "go to", "video", "audio", "music", "flowchart", "diagram")  # the paper's list


class SelfInstructConfig(Options):
    """How many tasks Self-Instruct makes and how candidates are filtered."""

    count: int = opt(200, "kept records to reach", ge=1)
    seeds: str | None = opt(None, "seed tasks (instruction, input, output records); default the shipped set of 30")
    examples: int = opt(8, "tasks shown in each request", ge=1)
    from_generated: int = opt(2, "of them, how many come from tasks already generated", ge=0)
    max_similarity: float = opt(0.7, "drop a task whose ROUGE-L with any task so far is at least this", gt=0, le=1)
    min_words: int = opt(3, "fewest words in a task", ge=1)
    max_words: int = opt(150, "most words in a task", ge=1)
    temperature: float = opt(0.9, "sampling temperature of new tasks (answers are greedy)", ge=0)
    max_new_tokens: int = opt(256, "the longest answer; one cut off here is dropped", ge=16)
    batch: int = opt(16, "requests per round", ge=1)
    max_rounds: int = opt(200, "rounds before giving up on reaching count", ge=1)
    seed: int = opt(0, "seed of example sampling and decoding", ge=0)


def read_seeds(path: str | Path | None) -> list[dict]:
    from tunelab.data.readers import read_records
    from tunelab.errors import DataError

    seeds = []
    for r in read_records(path or SEEDS):
        if not isinstance(r.data.get("instruction"), str) or not r.data["instruction"].strip():
            raise DataError(f"{r.where}: a seed task needs an 'instruction' (and optionally 'input', 'output')")
        seeds.append({"instruction": r.data["instruction"], "input": r.data.get("input") or "",
                      "output": r.data.get("output") or ""})
    return seeds


def task_prompt(examples: list[dict]) -> list[dict]:
    lines = "\n".join(f"{i}. {e['instruction']}" for i, e in enumerate(examples, 1))
    return [{"role": "user", "content": f"Here are some tasks an assistant can be asked to do:\n{lines}\n\n"
                                        "Write one new task, different from all of these, that a text-only "
                                        "assistant can do. Reply with the task only, in one or two sentences."}]


def clean_task(text: str) -> str:
    text = text.strip().split("\n")[0].strip()
    text = re.sub(r"^(\d+[.)]\s*|task\s*\d*\s*:\s*|new task\s*:\s*)", "", text, flags=re.IGNORECASE)
    return text.strip().strip('"').strip()


def task_rule(task: str, cfg: SelfInstructConfig) -> str | None:
    """The filter a candidate task fails, or None."""
    words = task.split()
    if len(words) < cfg.min_words:
        return "too_short"
    if len(words) > cfg.max_words:
        return "too_long"
    lowered = f" {task.lower()} "
    if any(re.search(rf"\b{re.escape(b)}\b", lowered) for b in BLOCKED):
        return "blocked_word"
    if not task[0].isalnum():
        return "starts_with_punctuation"
    if task.endswith(":") or re.match(r"(here('s| is)|sure|i'm|i am|okay|ok)\b", task.lower()):
        return "preamble"  # talk about a task ("Here's a new task:"), not a task
    return None


class Similarity:
    """ROUGE-L of a new task against every task so far (the paper's novelty filter)."""

    def __init__(self, tasks: list[str]):
        from rouge_score import rouge_scorer

        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        self.tasks = list(tasks)

    def highest(self, task: str) -> float:
        return max((self.scorer.score(t, task)["rougeL"].fmeasure for t in self.tasks), default=0.0)

    def add(self, task: str) -> None:
        self.tasks.append(task)


def self_instruct(teacher, out, cfg: SelfInstructConfig, teacher_name: str) -> dict:
    """Grow `out` (a `synth.output.Output`) to `cfg.count` kept records; returns its summary."""
    seeds = read_seeds(cfg.seeds)
    similar = Similarity([s["instruction"] for s in seeds] + [r["instruction"] for r in out.records])
    for round_ in range(out.round, cfg.max_rounds):
        if len(out.records) >= cfg.count:
            break
        rng = random.Random(f"{cfg.seed}-{round_}")  # the same round draws the same examples after a resume
        prompts = []
        for _ in range(cfg.batch):
            generated = rng.sample(out.records, min(cfg.from_generated, len(out.records)))
            shown = rng.sample(seeds, min(cfg.examples - len(generated), len(seeds))) + generated
            rng.shuffle(shown)
            prompts.append(task_prompt(shown))
        sampling = DecodingConfig(temperature=cfg.temperature, top_p=0.95, max_new_tokens=96,
                                  seed=cfg.seed * 100_003 + round_ * cfg.batch)
        tasks = []
        for text, _ in teacher.complete(prompts, sampling):
            task = clean_task(text)
            rule = task_rule(task, cfg) if task else "empty"
            if rule is None and similar.highest(task) >= cfg.max_similarity:
                rule = "similar"
            if rule is not None:
                out.drop(rule)
                continue
            similar.add(task)
            tasks.append(task)
        answers = teacher.complete([[{"role": "user", "content": t}] for t in tasks],
                                   DecodingConfig(max_new_tokens=cfg.max_new_tokens)) if tasks else []
        for task, (answer, cut) in zip(tasks, answers):
            rule = "empty_answer" if not answer.strip() else "unfinished_answer" if cut else \
                "echo" if similar.scorer.score(task, answer)["rougeL"].fmeasure >= 0.9 else None
            if rule is not None:
                out.drop(rule)
            elif len(out.records) < cfg.count:
                out.keep({"instruction": task, "input": "", "output": answer,
                          "provenance": {"method": "self-instruct", "teacher": teacher_name,
                                         "prompt_version": PROMPT_VERSION, "seed": cfg.seed, "round": round_}})
        out.checkpoint(round_ + 1)
    return out.summary()
