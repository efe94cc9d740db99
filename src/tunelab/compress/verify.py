"""Does the exported model behave like the run? The same prompts through both, compared.

The run (its base with the adapter on top, as trained, in float32) is the reference. For
each prompt, each side renders its own chat template and answers greedily with its own
stop tokens, as a user of that file would see it. Then:

- template: do both templates give the same prompt tokens (the run's default system prompt
  included)? A lost or different template changes every answer.
- stop tokens: does the export stop at every token the run stops at? A lost EOS makes a
  GGUF ramble past the end of its answer.
- token agreement: teacher-forced on the run's own answers, the fraction of positions where
  both pick the same next token (a quantized export is judged here, free of the cascade
  that one early flip causes in free-running answers);
- KL: the mean per-token KL(run || export) over those positions (nats);
- answers: the fraction of identical greedy answers, and where the first one differs.

Tolerances (`tolerances`): a float export (f32/bf16/f16) and an 8-bit one must agree on at least
95% of tokens; 4 to 6 bits on at least 80%; the template and stop tokens must always agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tunelab.compress.source import Source, load_trained, run_records
from tunelab.errors import TunelabError

BUILTIN_PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis in one sentence.",
    "List three prime numbers.", "How do I reverse a list in Python?", "Give me a synonym for happy.",
    "What is 12 times 7?", "Summarize the plot of Romeo and Juliet in two sentences.",
    "Translate 'good morning' into Spanish.", "Name a planet with rings.", "What does a CPU do?",
    "Suggest a name for a cat.", "Why is the sky blue?", "Write one sentence about autumn.",
    "What is the boiling point of water in Celsius?", "Describe a bicycle in ten words.",
]


class VerifyError(TunelabError):
    """The export does not behave like the run beyond the stated tolerance."""


@dataclass
class Verification:
    """The comparison of an export with its run (every figure over the same prompts)."""

    export: str
    prompts: int
    token_agreement: float
    mean_kl: float
    answer_match: float
    template_agrees: bool
    stops_agree: bool
    min_agreement: float
    max_kl: float
    first_differences: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        head = (f"verify {self.export}: token agreement {self.token_agreement:.3f} (>= {self.min_agreement}), "
                f"KL {self.mean_kl:.4f} nats/token (<= {self.max_kl}), identical answers {self.answer_match:.2f}, "
                f"template {'agrees' if self.template_agrees else 'DIFFERS'}, "
                f"stop tokens {'agree' if self.stops_agree else 'DIFFER'} over {self.prompts} prompts")
        return head + "".join(f"\n  - {p}" for p in self.problems)


def tolerances(bits: float) -> tuple[float, float]:
    """(minimum token agreement, maximum mean KL) for an export whose weights have `bits` bits."""
    return (0.95, 0.05) if bits >= 8 else (0.80, 0.5)


def verify(source: Source, candidate, *, bits: float = 32, prompts: list | None = None, n_prompts: int = 16,
           max_new_tokens: int = 48, reference=None, system: str | None = None) -> Verification:
    """Compare `candidate` (a `Side`: `HFSide` or `GGUFSide`) with the run `source`.

    Each prompt reaches the candidate without the run's system prompt, which the export's template
    must supply itself; the run is asked with it, as `tunelab chat --adapter RUN` asks it.

    Args:
        bits: the export's weight precision, which sets the tolerances.
        system: the default system prompt the export was written with; None: the run's own, "": none.
        prompts: conversations (lists of messages) or strings; default: the run's own prompts.
        reference: a `Side` for the run, when one is already loaded.
    Returns the `Verification`; `problems` lists each tolerance it breaks.
    """
    prompts = [p if isinstance(p, list) else [{"role": "user", "content": p}]
               for p in (prompts or run_prompts(source, n_prompts))]
    reference = reference or HFSide.from_source(source)
    own = source.system_prompt
    system = own if system is None else system or None
    agree, total, kl_sum, same_answers, same_templates = 0, 0, 0.0, 0, 0
    firsts = []
    for i, messages in enumerate(prompts):
        bare = messages[1:] if own and messages[0] == {"role": "system", "content": own} else messages
        asked = [{"role": "system", "content": system}] + bare if system and bare[0]["role"] != "system" else bare
        ref_ids = reference.render(asked, add_system=False)
        cand_ids = candidate.render(bare)  # an export carries the default system prompt in its template
        same_templates += ref_ids == cand_ids
        ref_answer = reference.greedy(ref_ids, max_new_tokens)
        cand_answer = candidate.greedy(cand_ids, max_new_tokens)
        if ref_answer == cand_answer:
            same_answers += 1
        else:
            at = next((k for k, (a, b) in enumerate(zip(ref_answer, cand_answer)) if a != b),
                      min(len(ref_answer), len(cand_answer)))
            firsts.append({"prompt": i, "position": at, "run": reference.text(ref_answer[at:at + 8]),
                           "export": candidate.text(cand_answer[at:at + 8])})
        sequence = ref_ids + ref_answer
        ref_lp = reference.logprobs(sequence)[len(ref_ids) - 1:len(sequence) - 1]  # [answer, vocab]
        cand_lp = candidate.logprobs(sequence)[len(ref_ids) - 1:len(sequence) - 1]
        vocab = min(ref_lp.shape[-1], cand_lp.shape[-1])  # padded embedding rows are never tokens
        ref_lp, cand_lp = ref_lp[:, :vocab], cand_lp[:, :vocab]
        agree += int((ref_lp.argmax(-1) == cand_lp.argmax(-1)).sum())
        total += ref_lp.shape[0]
        kl_sum += float((ref_lp.exp() * (ref_lp - cand_lp)).sum())
    min_agreement, max_kl = tolerances(bits)
    missing = sorted(reference.stops - candidate.stops)
    result = Verification(
        export=candidate.name, prompts=len(prompts), token_agreement=agree / max(total, 1),
        mean_kl=max(0.0, kl_sum / max(total, 1)), answer_match=same_answers / len(prompts),
        template_agrees=same_templates == len(prompts), stops_agree=not missing, min_agreement=min_agreement,
        max_kl=max_kl, first_differences=firsts[:5])
    if not result.template_agrees:
        result.problems.append(f"the chat template gives other prompt tokens for {len(prompts) - same_templates} "
                               f"of {len(prompts)} prompts (a lost or changed template, or a lost system prompt)")
    if missing:
        result.problems.append("the export does not stop at " + ", ".join(repr(reference.text([t])) for t in missing)
                               + ", where the run stops: its answers will run on past their end (a lost EOS)")
    if result.token_agreement < min_agreement:
        result.problems.append(f"token agreement {result.token_agreement:.3f} is below {min_agreement}")
    if not math.isfinite(result.mean_kl) or result.mean_kl > max_kl:
        result.problems.append(f"mean KL {result.mean_kl:.4f} nats/token is above {max_kl}")
    return result


def verify_classifier(source: Source, name: str, candidate, *, bits: float = 32, n_texts: int = 32) -> Verification:
    """A classifier export (`candidate`, a loaded model named `name`) against its run: the label each picks for
    the run's own texts, and the KL between their label distributions (a classifier does not generate, so
    there is no template or stop token to compare)."""
    texts = [m[-1]["content"] for m in run_prompts(source, n_texts)]
    (ref, tokenizer), cand = load_trained(source), candidate
    agree, kl = 0, 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")
            p, q = (torch.log_softmax(m(**ids).logits[0].float(), -1) for m in (ref.eval(), cand.eval()))
            agree += int(p.argmax() == q.argmax())
            kl += float((p.exp() * (p - q)).sum())
    min_agreement, max_kl = tolerances(bits)
    result = Verification(name, len(texts), agree / len(texts), max(0.0, kl / len(texts)), agree / len(texts),
                          True, True, min_agreement, max_kl)
    if result.token_agreement < min_agreement:
        result.problems.append(f"the export picks another label for {len(texts) - agree} of {len(texts)} texts")
    if result.mean_kl > max_kl:
        result.problems.append(f"mean KL of the label distributions {result.mean_kl:.4f} is above {max_kl}")
    return result


def run_prompts(source: Source, n: int) -> list[list[dict]]:
    """Up to `n` prompts of the run's own data (held-out records first), as conversations; built-in prompts
    for a plain model or a run trained on text without prompts."""
    try:
        records = run_records(source)[1]
    except (TunelabError, KeyError, TypeError):  # records this reader does not take as chat
        records = []
    found = [m[:-1] for r in records if len(m := r.get("messages") or []) > 1 and m[-1]["role"] == "assistant"][:n]
    return found or [[{"role": "user", "content": p}] for p in (BUILTIN_PROMPTS * (n // 16 + 1))[:n]]


class HFSide:
    """A transformers model (the run, or an exported or quantized folder) seen through its own tokenizer,
    chat template and generation config."""

    def __init__(self, name: str, model, tokenizer, stops: set[int], system: str | None = None):
        self.name, self.model, self.tokenizer, self.stops = name, model.eval(), tokenizer, stops
        self.system = system  # added to a conversation without one, as tunelab's engine does for a run

    @classmethod
    def from_source(cls, source: Source) -> HFSide:
        model, tokenizer = load_trained(source, torch.float32)
        return cls(source.name, model, tokenizer, _stop_ids(source.result, model, tokenizer), source.system_prompt)

    @classmethod
    def from_folder(cls, folder: str | Path) -> HFSide:
        from tunelab.compress.quantize import load_any

        model, tokenizer = load_any(folder)
        return cls(str(folder), model, tokenizer, _stop_ids(Path(folder), model, tokenizer))

    def render(self, messages: list[dict], add_system: bool = True) -> list[int]:
        if add_system and self.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}] + messages
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    @torch.no_grad()
    def greedy(self, ids: list[int], max_new: int) -> list[int]:
        out, past, step = [], None, torch.tensor([ids])
        for _ in range(max_new):
            result = self.model(input_ids=step, past_key_values=past, use_cache=True)
            past, token = result.past_key_values, int(result.logits[0, -1].argmax())
            out.append(token)
            if token in self.stops:
                break
            step = torch.tensor([[token]])
        return out

    @torch.no_grad()
    def logprobs(self, ids: list[int]) -> torch.Tensor:
        return torch.log_softmax(self.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def close(self) -> None:
        pass


class GGUFSide:
    """A GGUF file (with an optional GGUF LoRA adapter) seen through llama.cpp: its embedded chat template,
    its end-of-generation tokens and its own kernels."""

    def __init__(self, path: str | Path, lora: str | Path | None = None, n_ctx: int = 2048, system: str | None = None):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.name, self.system = str(lora or path), system  # system: what a caller must add (a LoRA has no template)
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=True, verbose=False,
                                   **({"lora_path": str(lora)} if lora else {}))
        vocab = self.llm._model.vocab
        self.stops = {i for i in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)}
        piece = self._piece
        template = self.llm.metadata.get("tokenizer.chat_template")
        self.format = Jinja2ChatFormatter(template, eos_token=piece(self.llm.token_eos()),
                                          bos_token=piece(self.llm.token_bos())) if template else None

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    def render(self, messages: list[dict], add_system: bool = True) -> list[int]:
        if self.format is None:
            return []  # no template in the file: every prompt differs, and verify says so
        if add_system and self.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system}] + messages
        text = self.format(messages=messages).prompt
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def greedy(self, ids: list[int], max_new: int) -> list[int]:
        self.llm.reset()
        out = []
        for token in self.llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            out.append(int(token))
            if token in self.stops or len(out) >= max_new:
                break
        return out

    def logprobs(self, ids: list[int]) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(ids)
        scores = torch.from_numpy(self.llm.scores[:len(ids)].copy())
        return torch.log_softmax(scores.float(), -1)

    def text(self, ids: list[int]) -> str:
        return self.llm.detokenize(ids, special=True).decode("utf-8", "replace")

    def close(self) -> None:
        self.llm.close()


def _stop_ids(folder: Path, model, tokenizer) -> set[int]:
    """The token ids generation stops at: generation_config.json's eos_token_id (one or a list)."""
    path = folder / "generation_config.json"
    eos = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else \
        getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos if isinstance(eos, list) else [eos]) - {None}


def write_report(verification: Verification, path: Path) -> None:
    from tunelab.config.files import write_text_atomic

    write_text_atomic(path, json.dumps(verification.to_dict(), indent=2, ensure_ascii=False) + "\n")
