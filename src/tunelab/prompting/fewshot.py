"""Few-shot in-context learning (Brown et al. 2020): k solved examples shown before the question.

Examples come from a pool of input/output records, chosen either at random (seeded per
question, so a question gets the same examples whatever else is asked with it) or by
embedding similarity to the question (Liu et al. 2022, "What Makes Good In-Context Examples
for GPT-3?"), the most similar placed last, nearest the question. A pool item whose input is
the question itself is never shown: that would hand the model its answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunelab.data.readers import Record, read_records
from tunelab.errors import ConfigError, DataError
from tunelab.prompting.templates import PromptTemplate

SELECT = ("random", "similar")


@dataclass
class Example:
    """One solved example: the rendered input, its answer, and the file:line it came from."""

    input: str
    output: str
    where: str = ""


def answer_text(value: Any) -> str | None:
    """A record's answer as text: a string, a number, the first of several acceptable answers, a JSON record."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) else None


def example_of(record: Record, input_field: str, output_field: str, template: PromptTemplate | None = None) -> Example:
    """An Example from one record; a `messages` conversation gives its last user turn and the answer to it."""
    data = record.data
    if input_field not in data and template is None and isinstance(data.get("messages"), list) and data["messages"]:
        turns = data["messages"]
        if turns[-1].get("role") == "assistant" and len(turns) > 1 and turns[-2].get("role") == "user":
            return Example(str(turns[-2].get("content", "")), str(turns[-1].get("content", "")), record.where)
    if template is not None:
        text = template.render(data, record.where)
    else:
        text = data.get(input_field)
        if not isinstance(text, str):
            raise DataError(f"{record.where}: a few-shot example needs a '{input_field}' text field (fields here: "
                            f"{', '.join(sorted(data)) or 'none'}); set input_field (CLI --field) or a template")
    output = answer_text(data.get(output_field))
    if output is None:
        raise DataError(f"{record.where}: a few-shot example needs its answer in a '{output_field}' field (fields "
                        f"here: {', '.join(sorted(data)) or 'none'}); set output_field (CLI --answer-field)")
    return Example(text, output, record.where)


def read_pool(path: str, input_field: str = "prompt", output_field: str = "completion",
              template: PromptTemplate | None = None) -> list[Example]:
    """Every record of a .jsonl/.json/.csv/.parquet file as an Example (DataError names the bad record)."""
    return [example_of(r, input_field, output_field, template) for r in read_records(path)]


def _unit(vectors: Any) -> np.ndarray:
    """float32 rows scaled to length 1, so a dot product is the cosine whatever the embedder returns."""
    v = np.asarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


class FewShotSelector:
    """Chooses k examples from a pool for each question.

    Args:
        pool: the candidate examples.
        k: examples per question.
        select: "random" (seeded) or "similar" (top-k cosine similarity of input embeddings).
        embedder: for "similar": any object with `embed(texts) -> (n, dim) array`, or the name of a
            sentence-transformers model (default all-minilm-l6-v2, packaged), loaded on first use.
        source: what the pool is called in error messages (a file name).
    """

    def __init__(self, pool: Sequence[Example], k: int, select: str = "random", seed: int = 0,
                 embedder: Any = None, source: str = "the few-shot pool"):
        if select not in SELECT:
            raise ConfigError(f"select: '{select}' is not known; choose {' or '.join(SELECT)}")
        if k < 1:
            raise ConfigError(f"k: a few-shot prompt needs at least 1 example, got {k}")
        self.pool, self.k, self.select_by, self.seed, self.source = list(pool), k, select, seed, source
        self._embedder = embedder
        self._vectors: np.ndarray | None = None
        self._same: dict[str, list[int]] = {}
        for i, example in enumerate(self.pool):
            self._same.setdefault(example.input.strip(), []).append(i)

    def _allowed(self, query: str) -> list[int]:
        """Pool indices equal to the question, after checking enough remain."""
        same = self._same.get(query.strip(), [])
        if len(self.pool) - len(same) < self.k:
            raise DataError(f"{self.source}: k={self.k} examples asked for but only {len(self.pool) - len(same)} "
                            "differ from the question; lower k or give a larger few-shot file")
        return same

    def embedder(self):
        if self._embedder is None or isinstance(self._embedder, str):
            from tunelab.rag.embed import DEFAULT_EMBEDDER, Embedder

            self._embedder = Embedder(self._embedder or DEFAULT_EMBEDDER)
        return self._embedder

    def select(self, queries: Sequence[str]) -> list[list[Example]]:
        """k examples for each question, in the order they are shown."""
        if self.select_by == "random":
            return [self._random(q) for q in queries]
        return self._similar(list(queries))

    def _random(self, query: str) -> list[Example]:
        same = self._allowed(query)
        # seeded by the question: its examples do not depend on what else is asked, or in which order
        rng = random.Random(f"{self.seed}\x00{query}")
        picked = [i for i in rng.sample(range(len(self.pool)), self.k + len(same)) if i not in same]
        return [self.pool[i] for i in picked[:self.k]]

    def _similar(self, queries: list[str], chunk: int = 256) -> list[list[Example]]:
        if self._vectors is None:
            self._vectors = _unit(self.embedder().embed([e.input for e in self.pool]))  # [N, dim]
        out = []
        for start in range(0, len(queries), chunk):  # [chunk, N] scores at a time bounds memory on large pools
            batch = queries[start:start + chunk]
            scores = _unit(self.embedder().embed(batch)) @ self._vectors.T
            for query, row in zip(batch, scores):
                row[self._allowed(query)] = -np.inf
                top = np.argpartition(-row, self.k - 1)[:self.k] if len(row) > self.k else np.arange(len(row))
                top = top[np.lexsort((top, -row[top]))]  # most similar first, ties by pool order
                out.append([self.pool[i] for i in top[::-1]])  # shown most similar last
        return out


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def as_messages(examples: Sequence[Example], query: str | list[dict], header: str = "",
                suffix: str = "") -> list[dict]:
    """Chat turns: the examples as user/assistant pairs, then the question.

    `header` (an instruction) opens the first user turn; `suffix` ends the question's turn. A
    conversation as the question keeps its own turns, examples placed after its system message.
    """
    turns = [{"role": "user", "content": query}] if isinstance(query, str) else [dict(m) for m in query]
    system = turns[:1] if turns and turns[0]["role"] == "system" else []
    turns = turns[len(system):]
    shots = [m for e in examples for m in ({"role": "user", "content": e.input},
                                            {"role": "assistant", "content": e.output})]
    messages = shots + turns
    if suffix:
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last]["content"] = _join(messages[last]["content"], suffix)
    if header:
        messages[0]["content"] = _join(header, messages[0]["content"])
    return system + messages


def as_text(examples: Sequence[Example], query: str, header: str = "", delimiter: str = "\n\n",
            target_delimiter: str = " ") -> str:
    """One text block for a base model to continue: header, each `input<target_delimiter>output`, the question."""
    shots = "".join(f"{e.input}{target_delimiter}{e.output}{delimiter}" for e in examples)
    return (header + delimiter if header else "") + shots + query
