"""What one epoch of a run feeds the model: the token length of every sequence it processes.

Read from the user's own data with the objective's own data builder, so the lengths are the
ones training will see (truncation and packing included; `tunelab data` prints the same
statistics). A preference pair is two sequences; GRPO and PPO add the answers they generate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.config import RunConfig

PAIRWISE = ("rm", "dpo", "orpo", "simpo")


@dataclass
class Workload:
    """The sequences of one epoch, as the model sees them."""

    lengths: list[int]  # tokens of each training sequence (a pair's two sequences both counted)
    examples: int  # training examples (a pair is one example)
    per_example: int = 1  # sequences per example: 2 for pairs
    generated: int = 0  # tokens generated per example (GRPO, PPO)
    parts: list[tuple[int, int]] = field(default_factory=list)  # pairs: (prompt, completion) tokens of each sequence
    stats: dict = field(default_factory=dict)  # the data builder's own statistics

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    @property
    def max_length(self) -> int:
        return max(self.lengths, default=0)


def workload(cfg: RunConfig, tokenizer) -> Workload:
    """The training sequences `cfg` will run on, from its data file."""
    objective = cfg.objective_name
    if objective in ("sft", "distill"):
        from tunelab.data import build_sft

        data = build_sft(cfg.data, tokenizer, cfg.train.seed)
        return Workload([len(e["input_ids"]) for e in data.train], len(data.train), stats=data.stats)
    if objective == "pt":
        from tunelab.data.pretrain import build_pretrain

        data = build_pretrain(cfg.data, tokenizer, cfg.data.max_length)
        return Workload([len(e["input_ids"]) for e in data.train], len(data.train), stats=data.stats)
    if objective == "classify":
        from tunelab.data.classify import build_classification

        data = build_classification(cfg.data, tokenizer, cfg.train.seed)
        texts = len(data.train) + len(data.validation)  # a probe embeds both
        return Workload([len(e["input_ids"]) for e in data.train], len(data.train),
                        stats={**data.stats, "texts": texts})
    if objective in PAIRWISE or objective == "kto":
        from tunelab.data.preference import build_pairs, build_unpaired

        data = (build_unpaired if objective == "kto" else build_pairs)(cfg.data, cfg.train.seed, objective)
        keys = ("completion",) if objective == "kto" else ("chosen", "rejected")
        parts = [(_tokens(tokenizer, r.get("prompt", "")), _tokens(tokenizer, r.get(k, ""))) for r in data.train
                 for k in keys]
        lengths = [min(cfg.data.max_length, p + c) for p, c in parts]
        return Workload(lengths, len(data.train), per_example=len(keys), stats=data.stats, parts=parts)
    # grpo, ppo: a prompt, then the answers sampled for it
    from tunelab.objectives.grpo import read_prompts

    prompts = read_prompts(cfg)
    o = cfg.objective
    answers = getattr(o, "num_generations", 1)
    new = getattr(o, "max_completion_length", None) or getattr(o, "max_new_tokens", 0)
    lengths = [min(cfg.data.max_length, _tokens(tokenizer, r.get("prompt", ""))) + new
               for r in prompts for _ in range(answers)]
    return Workload(lengths, len(prompts), per_example=answers, generated=new * answers,
                    stats={"prompts": len(prompts)})


def _tokens(tokenizer, value) -> int:
    """Tokens of a text, or of a conversation rendered with the chat template."""
    if isinstance(value, list):
        return len(tokenizer.apply_chat_template(value, tokenize=True))
    return len(tokenizer(str(value), add_special_tokens=False)["input_ids"])
