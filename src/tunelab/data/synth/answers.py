"""Answers for instructions a user already has (distillation data), and preference pairs ranked by a judge
or a reward model (data for `dpo`, `kto` and `rm`)."""

from __future__ import annotations

from tunelab.config.groups import DecodingConfig
from tunelab.config.options import Options, opt

PROMPT_VERSION = "answers-v1"


class AnswersConfig(Options):
    """How the teacher answers instructions (greedy)."""

    max_new_tokens: int = opt(256, "the longest answer; one cut off here is dropped", ge=16)
    batch: int = opt(32, "instructions sent together", ge=1)


class PairsConfig(Options):
    """How preference pairs are made: two sampled answers, ranked."""

    temperature: float = opt(0.8, "sampling temperature of the two answers", gt=0)
    max_new_tokens: int = opt(256, "the longest answer", ge=16)
    reward_model: str | None = opt(None, "an rm run (or sequence-classification folder) scoring answers; else the "
                                   "judge")
    judge: str | None = opt(None, "a local judge model comparing the two answers in both orders; default the teacher")
    seed: int = opt(0, "seed of sampling", ge=0)


def prompt_of(record: dict) -> str:
    """The question a record asks: instruction (+ input), prompt, question, or its last user turn."""
    if isinstance(record.get("instruction"), str):
        return record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
    for key in ("prompt", "question", "text"):
        if isinstance(record.get(key), str):
            return record[key]
    turns = [m for m in record.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    if turns:
        return str(turns[-1].get("content", ""))
    from tunelab.errors import DataError

    raise DataError(f"a record has no instruction, prompt, question or user turn: {list(record)}")


def answer(teacher, records: list[dict], out, teacher_name: str, cfg: AnswersConfig | None = None) -> dict:
    """The teacher's greedy answer to each record (records already answered in `out` are skipped)."""
    cfg = cfg or AnswersConfig()
    batch = cfg.batch
    done = {r["instruction"] for r in out.records}
    todo = [p for p in (prompt_of(r) for r in records) if p not in done]
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        for question, (text, cut) in zip(chunk, teacher.complete([[{"role": "user", "content": q}] for q in chunk],
                                                                 DecodingConfig(max_new_tokens=cfg.max_new_tokens))):
            if not text.strip() or cut:
                out.drop("empty_answer" if not text.strip() else "unfinished_answer")
                continue
            out.keep({"instruction": question, "input": "", "output": text,
                      "provenance": {"method": "answers", "teacher": teacher_name, "prompt_version": PROMPT_VERSION}})
        out.checkpoint(start // batch + 1)
    return out.summary()


def pairs(teacher, records: list[dict], out, cfg: PairsConfig, teacher_name: str, batch: int = 16) -> dict:
    """Two sampled answers per prompt, ranked by the reward model or the judge; ties and copies are dropped."""
    done = {r["prompt"] for r in out.records}
    todo = [p for p in (prompt_of(r) for r in records) if p not in done]
    rank = _reward_ranker(cfg.reward_model) if cfg.reward_model else _judge_ranker(cfg.judge, teacher)
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        convs = [[{"role": "user", "content": q}] for q in chunk]
        sample = lambda k: DecodingConfig(temperature=cfg.temperature, top_p=0.95, max_new_tokens=cfg.max_new_tokens,
                                          seed=cfg.seed * 1_000_003 + start * 2 + k)
        first = [t for t, _ in teacher.complete(convs, sample(0))]
        second = [t for t, _ in teacher.complete(convs, sample(1))]
        verdicts = rank(chunk, first, second)
        for question, a, b, verdict in zip(chunk, first, second, verdicts):
            if not a.strip() or not b.strip() or a.strip() == b.strip():
                out.drop("same_or_empty")
            elif verdict == 0:
                out.drop("tie")
            else:
                chosen, rejected = (a, b) if verdict > 0 else (b, a)
                out.keep({"prompt": question, "chosen": chosen, "rejected": rejected,
                          "provenance": {"method": "pairs", "teacher": teacher_name, "ranked_by":
                                         f"reward model {cfg.reward_model}" if cfg.reward_model else "judge",
                                         "prompt_version": PROMPT_VERSION, "seed": cfg.seed}})
        out.checkpoint(start // batch + 1)
    return out.summary()


def _reward_ranker(path: str):
    """+1 when the reward model scores the first answer higher, -1 when lower, 0 when equal."""
    import torch

    from tunelab.eval.preference import reward_scores
    from tunelab.objectives.ppo import load_reward_model

    model, tokenizer = load_reward_model(path, torch.float32, torch.device("cpu"))

    def rank(questions, first, second):
        a = reward_scores(model, tokenizer, [q + x for q, x in zip(questions, first)])
        b = reward_scores(model, tokenizer, [q + x for q, x in zip(questions, second)])
        return [int(torch.sign(x - y).item()) for x, y in zip(a, b)]

    return rank


def _judge_ranker(judge_model: str | None, teacher):
    """+1 / -1 only when the judge prefers the same answer in both presentation orders, else 0."""
    from tunelab.eval.judge import pairwise

    class AsJudge:  # the teacher (or another local model) answering judge prompts greedily
        def __init__(self, model):
            self.model = model

        def complete(self, conversations):
            return [t for t, _ in self.model.complete(conversations, DecodingConfig(max_new_tokens=256))]

    if judge_model:
        from tunelab.data.synth.teacher import LocalTeacher, TeacherConfig

        judge = AsJudge(LocalTeacher(TeacherConfig(teacher=judge_model)))
    else:
        judge = AsJudge(teacher)

    def rank(questions, first, second):
        items = pairwise(judge, questions, first, second)["items"]
        return [1 if i["outcome"] == "win" else -1 if i["outcome"] == "loss" else 0 for i in items]

    return rank
