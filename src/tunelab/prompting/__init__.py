"""The prompting route: a specialist with no parameter changed.

Zero-shot templates, few-shot examples (random or most similar to the question),
chain-of-thought with answer extraction, and self-consistency voting. `build_prompts` makes
the prompts, `answer` runs them; `tunelab generate` and `tunelab eval` use the same two.

    from tunelab.prompting import PromptingConfig, answer, build_prompts
    cfg = PromptingConfig(template="math", fewshot_file="train.jsonl", output_field="answer", k=4,
                          select="similar", cot=True, samples=5)
    results = answer(load_engine(), build_prompts(cfg, records), cfg, DecodingConfig(max_new_tokens=256))
"""

from tunelab.prompting.consistency import Vote, majority_vote, self_consistency
from tunelab.prompting.cot import cot_instruction, extract_answer
from tunelab.prompting.fewshot import Example, FewShotSelector, read_pool
from tunelab.prompting.pipeline import PromptingConfig, Result, answer, build_prompts
from tunelab.prompting.templates import BUILTIN, PromptTemplate, load_template

__all__ = ["BUILTIN", "Example", "FewShotSelector", "PromptTemplate", "PromptingConfig", "Result", "Vote", "answer",
           "build_prompts", "cot_instruction", "extract_answer", "load_template", "majority_vote", "read_pool",
           "self_consistency"]
