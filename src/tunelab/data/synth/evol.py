"""Evol-Instruct (Xu et al. 2023, WizardLM, arXiv:2304.12244): instructions rewritten to be deeper or broader.

Each instruction gets one evolution, picked at random: in depth (add a constraint, deepen the
question, make it concrete, ask for reasoning steps) or in breadth (a new, rarer task in the same
domain). The paper's elimination rules drop an evolution that gains nothing (ROUGE-L with the
original at or above 0.9 here, where the paper asked a model), whose answer apologises and is
short, whose answer is only punctuation and stop words, or that copies words of the evolving prompt.
"""

from __future__ import annotations

import random
import re

from tunelab.config.groups import DecodingConfig
from tunelab.config.options import Options, opt
from tunelab.data.synth.self_instruct import Similarity

PROMPT_VERSION = "evol-instruct-v1"
DEPTH = ("I want you to act as a Prompt Rewriter. Rewrite the given prompt into a more complex version that a "
         "well-known AI system would find harder, but that a person can still understand and answer. {how} The "
         "rewritten prompt may add at most 10 to 20 words. Do not mention 'given prompt' or 'rewritten prompt'.\n"
         "#Given Prompt#:\n{instruction}\n#Rewritten Prompt#:")
HOW = {"constraints": "Add one more constraint or requirement to it.",
       "deepen": "If it asks about a topic, make the question deeper and broader.",
       "concretize": "Replace general concepts with more specific ones.",
       "reasoning": "If it can be solved with a few simple steps, rewrite it to explicitly ask for multi-step "
                    "reasoning."}
BREADTH = ("I want you to act as a Prompt Creator. Draw inspiration from the given prompt to create a brand new "
           "prompt in the same domain but rarer. It should be about as long and as hard, and a person must be "
           "able to understand and answer it. Do not mention 'given prompt' or 'created prompt'.\n"
           "#Given Prompt#:\n{instruction}\n#Created Prompt#:")
LEAKS = ("given prompt", "rewritten prompt", "created prompt", "#given", "#rewritten", "#created")
STOP = {"the", "a", "an", "and", "or", "of", "to", "in", "is", "it", "i", "you"}


class EvolConfig(Options):
    """How Evol-Instruct rewrites instructions and which evolutions it eliminates."""

    rounds: int = opt(1, "evolutions in a row (each round evolves the last round's survivors)", ge=1)
    max_similarity: float = opt(0.9, "an evolution this close to its original (ROUGE-L) gained nothing", gt=0, le=1)
    temperature: float = opt(0.7, "sampling temperature of the rewriting (answers are greedy)", ge=0)
    max_new_tokens: int = opt(256, "the longest answer; one cut off here is dropped", ge=16)
    seed: int = opt(0, "seed of the evolution picked and of decoding", ge=0)


def rewritten(text: str) -> str:
    """The new instruction: an echoed '#Rewritten Prompt#:' header dropped, anything after a next '#' header cut."""
    text = re.sub(r"^\s*#?\s*(rewritten|created) prompt\s*#?\s*:?", "", text, flags=re.IGNORECASE).strip()
    return text.split("\n#")[0].strip()


def eliminated(original: str, evolved: str, answer: str, cut: bool, similar: Similarity,
               max_similarity: float) -> str | None:
    """The elimination rule an evolution breaks, or None."""
    lowered = evolved.lower()
    if not evolved.strip():
        return "empty"
    if any(leak in lowered for leak in LEAKS):
        return "copied_prompt"
    if similar.scorer.score(original, evolved)["rougeL"].fmeasure >= max_similarity:
        return "no_gain"
    if "sorry" in answer.lower() and len(answer.split()) < 80:
        return "refused"
    words = [w.strip(".,;:!?'\"()").lower() for w in answer.split()]
    if not [w for w in words if w and w not in STOP]:
        return "empty_answer"
    if cut:
        return "unfinished_answer"
    return None


def evolve(teacher, instructions: list[dict], out, cfg: EvolConfig, teacher_name: str) -> dict:
    """Evolve each instruction record (resumable: records already in `out` are not evolved again)."""
    similar = Similarity([])
    current = instructions
    for round_ in range(cfg.rounds):
        done = {r["provenance"]["source"] for r in out.records if r["provenance"].get("round") == round_}
        todo = [r for r in current if r["instruction"] not in done]
        rng = random.Random(f"{cfg.seed}-{round_}")
        kinds = [rng.choice([*HOW, "breadth"]) for _ in todo]
        prompts = [[{"role": "user", "content": BREADTH.format(instruction=r["instruction"]) if k == "breadth"
                     else DEPTH.format(how=HOW[k], instruction=r["instruction"])}] for r, k in zip(todo, kinds)]
        rewrites = teacher.complete(prompts, DecodingConfig(temperature=cfg.temperature, top_p=0.95,
                                                            max_new_tokens=160, seed=cfg.seed + round_))
        evolved = [rewritten(text) for text, _ in rewrites]
        answers = teacher.complete([[{"role": "user", "content": e or "."}] for e in evolved],
                                   DecodingConfig(max_new_tokens=cfg.max_new_tokens))
        for record, kind, new, (answer, cut) in zip(todo, kinds, evolved, answers):
            rule = eliminated(record["instruction"], new, answer, cut, similar, cfg.max_similarity)
            if rule is not None:
                out.drop(rule)
                continue
            kept = {"instruction": new, "input": "", "output": answer,
                    "provenance": {"method": "evol-instruct", "evolution": kind, "source": record["instruction"],
                                   "teacher": teacher_name, "prompt_version": PROMPT_VERSION, "seed": cfg.seed,
                                   "round": round_}}
            out.keep(kept)
        out.checkpoint(round_ + 1)
        current = [r for r in out.records if r["provenance"].get("round") == round_]  # the next round evolves these
    return out.summary()
