"""Structured output: a JSON schema, a regular expression or a list of choices constrains decoding.

At every step the grammar's matcher (xgrammar) says which tokens keep the output on a path
the grammar accepts; every other token's logit becomes -inf before sampling. Once the
grammar is complete only the stop tokens remain, so a finished answer always parses.
Tokens that would leave the answer's bytes invalid UTF-8 are forbidden too (`utf8.py`),
and in JSON so are raw control characters.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache

import torch

from tunelab.errors import ConfigError
from tunelab.infer.utf8 import ACCEPT, Utf8Guard

KINDS = ("json_schema", "json", "regex", "choice", "grammar")


@dataclass(frozen=True)
class Constraint:
    """What the output must match. `spec` is the schema as JSON text, the regex, a JSON list
    of choices, or an EBNF grammar; build one with the class methods."""

    kind: str
    spec: str = ""

    @classmethod
    def json_schema(cls, schema: dict | str) -> Constraint:
        return cls("json_schema", schema if isinstance(schema, str) else json.dumps(schema))

    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object (OpenAI's response_format {"type": "json_object"})."""
        return cls("json")

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        return cls("regex", pattern)

    @classmethod
    def choice(cls, options: list[str]) -> Constraint:
        if not options or not all(isinstance(o, str) and o for o in options):
            raise ConfigError("choice: give a non-empty list of non-empty strings")
        return cls("choice", json.dumps(list(options)))


class Grammars:
    """Compiles constraints for one tokenizer and hands out a fresh matcher per answer.

    Compiled grammars are cached (by the compiler and here by spec), so a server that sees
    the same schema many times compiles it once.
    """

    def __init__(self, tokenizer, vocab_size: int, stop_ids: list[int]):
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self.vocab_size = vocab_size
        # xgrammar's JSON strings admit raw control characters, which strict JSON parsers refuse; compact
        # JSON never needs one (escapes are spelled with a backslash), so JSON answers never get such tokens
        control = torch.zeros(vocab_size, dtype=torch.bool)
        for i, piece in enumerate(info.decoded_vocab[:vocab_size]):
            control[i] = any(b < 0x20 for b in piece) and i not in stop_ids
        self.control_tokens = control.nonzero().flatten()
        self.utf8 = Utf8Guard(info.decoded_vocab, vocab_size)
        self.compiler = xgr.GrammarCompiler(info, max_threads=2)
        self._compile = lru_cache(maxsize=128)(self._compile_uncached)
        self._lock = threading.Lock()

    def matcher(self, constraint: Constraint) -> Matcher:
        """A matcher for one answer. Raises ConfigError when the constraint does not compile."""
        with self._lock:
            compiled = self._compile(constraint)
        forbidden = self.control_tokens if constraint.kind in ("json_schema", "json") else None
        return Matcher(self._xgr, compiled, self.vocab_size, self.utf8, forbidden)

    def _compile_uncached(self, c: Constraint):
        try:
            if c.kind == "json_schema":
                # any_whitespace=False: compact JSON, so a model cannot pad an answer with endless spaces
                return self.compiler.compile_json_schema(c.spec, any_whitespace=False)
            if c.kind == "json":
                return self.compiler.compile_builtin_json_grammar()
            if c.kind == "regex":
                return self.compiler.compile_regex(c.spec)
            if c.kind == "choice":
                options = json.loads(c.spec)
                return self.compiler.compile_grammar("root ::= " + " | ".join(_ebnf_literal(o) for o in options))
            if c.kind == "grammar":
                return self.compiler.compile_grammar(c.spec)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ConfigError(f"{c.kind} constraint does not compile: {str(e).splitlines()[0][:300]}") from None
        raise ConfigError(f"unknown constraint kind {c.kind!r}; expected one of {', '.join(KINDS)}")


class Matcher:
    """One answer's position in its grammar."""

    def __init__(self, xgr, compiled, vocab_size: int, utf8: Utf8Guard, forbidden: torch.Tensor | None = None):
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.forbidden = forbidden
        self.utf8, self.utf8_state = utf8, ACCEPT

    def constrain(self, scores: torch.Tensor) -> None:
        """Set the logits [1, V] of tokens the grammar forbids here to -inf, in place."""
        self.matcher.fill_next_token_bitmask(self.bitmask)
        self._xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        if self.forbidden is not None and len(self.forbidden):
            scores[:, self.forbidden.to(scores.device)] = float("-inf")
        invalid = self.utf8.forbidden(self.utf8_state)
        if len(invalid):
            scores[:, invalid.to(scores.device)] = float("-inf")

    def accept(self, token_id: int) -> None:
        if not self.matcher.accept_token(token_id):
            raise RuntimeError(f"token {token_id} was picked but the grammar does not accept it")
        self.utf8_state = self.utf8.after(self.utf8_state, token_id)

    @property
    def done(self) -> bool:
        """The grammar is complete and its stop token was accepted."""
        return self.matcher.is_terminated()


def _ebnf_literal(text: str) -> str:
    """A string literal for xgrammar's EBNF (JSON escapes are a subset it reads)."""
    return json.dumps(text, ensure_ascii=False)
