"""The llama.cpp backend: GGUF models on CPU through llama-cpp-python.

A `Llama` object is not thread-safe and decodes one sequence at a time, so one worker
thread owns it and answers queued requests in turn. Tokens come from `Llama.generate`
rather than `create_completion`: it yields token ids (for Delta.token_ids and usage
counts), log-probs can be read from the last logits without `logits_all` (which would
keep a row of logits per context position), and stop strings and half-decoded UTF-8
are held back by the same `TextStream` the transformers backend uses.

Options map to llama.cpp's sampler chain: penalties, grammar, then greedy or top-k (0 is
off there too), top-p, min-p, temperature and a seeded draw. Unlike transformers,
llama.cpp applies temperature after the top-k/top-p/min-p filters, and its repetition
penalty counts generated tokens only (not the prompt).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
from collections.abc import Callable
from pathlib import Path

from tunelab.errors import ConfigError, ModelError
from tunelab.infer.decoding import TokenLogprob
from tunelab.infer.backends import refuse, register
from tunelab.infer.engine import Delta, Handle, Request
from tunelab.infer.text import TextStream

log = logging.getLogger(__name__)
INSTALL = ('CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
           "pip install llama-cpp-python==0.3.36")


def find_gguf(name: str | Path) -> Path:
    """The GGUF file for a built-in alias (e.g. smollm2-135m-instruct) or a path to a .gguf file."""
    from tunelab.models.hub import ALIASES, alias_file

    if str(name) in ALIASES:
        file = alias_file(ALIASES[str(name)])
        if file.suffix != ".gguf":
            raise ModelError(f"model '{name}' is not a GGUF model; the llama.cpp backend needs a .gguf file")
        return file
    path = Path(name).expanduser()
    if path.suffix != ".gguf":
        raise ModelError(f"{path}: the llama.cpp backend needs a .gguf file or an alias ({', '.join(ALIASES)})")
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file not found")
    return path


class _Detokenizer:
    """The one method `TextStream` needs, over llama.cpp's detokenizer."""

    def __init__(self, llm):
        self.llm = llm

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.llm.detokenize(ids, special=not skip_special_tokens).decode("utf-8", errors="replace")


class LlamaCppEngine:
    """An `Engine` over one GGUF file. Chat prompts use the file's own chat template
    (`tokenizer.chat_template`), rendered here with llama-cpp-python's Jinja formatter rather
    than through `create_chat_completion` (which hides the token ids); for the default model
    this gives exactly the tokens of the transformers tokenizer's template.

    Args:
        chat_format: a Jinja chat template to use instead of the file's (ChatML when it has none).
    """

    name = "llama.cpp"

    def __init__(self, path: str | Path, *, n_ctx: int = 4096, n_threads: int | None = None,
                 chat_format: str | None = None, verbose: bool = False):
        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError:
            raise ModelError(f"the llama.cpp backend needs llama-cpp-python; install it with: {INSTALL} "
                             "(it compiles llama.cpp, about 10 minutes)") from None
        self._lib = llama_cpp
        self.path = find_gguf(path)
        # n_threads: llama-cpp-python's default is half the logical CPUs, one thread on a 2-core machine,
        # where two decode 1.24x faster (measured on the default model). last_n_tokens_size: presence,
        # frequency and repetition penalties see the whole answer, not its last 64 tokens.
        from tunelab.hardware import threads

        try:
            self.llm = llama_cpp.Llama(str(self.path), n_ctx=n_ctx, n_threads=n_threads or threads(),
                                       verbose=verbose, last_n_tokens_size=n_ctx)
        except ValueError as e:  # llama.cpp could not read the file
            raise ModelError(f"{self.path}: llama.cpp cannot load it ({e})") from None
        self.n_ctx = n_ctx
        self.tokenizer = _Detokenizer(self.llm)  # the server spells log-prob tokens with it
        vocab = self.llm._model.vocab
        self.eog = {i for i in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)}
        bos, eos = (self._piece(self.llm.token_bos()), self._piece(self.llm.token_eos()))
        self._format = Jinja2ChatFormatter(chat_format or self.llm.metadata.get("tokenizer.chat_template")
                                           or self._chatml(eos), eos_token=eos, bos_token=bos)
        self._grammars: dict = {}
        self._queue: queue.Queue = queue.Queue()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._loop, name="tunelab-llamacpp", daemon=True)
        self._worker.start()

    # --- the Engine protocol ---

    def prompt_ids(self, request: Request) -> list[int]:
        if not request.chat:
            return self.llm.tokenize(request.prompt.encode(), add_bos=self.llm._model.add_bos_token(), special=True)
        messages = [{"role": "user", "content": request.prompt}] if isinstance(request.prompt, str) else list(request.prompt)
        if request.system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": request.system}] + messages
        text = self._format(messages=messages).prompt  # the template writes any BOS itself
        return self.llm.tokenize(text.encode(), add_bos=False, special=True)

    def adapters(self) -> list[str]:
        return []

    def submit(self, request: Request, sink: Callable[[Delta], None] | None = None) -> Handle:
        params = request.params.check()
        if request.adapter:
            raise ConfigError(f"adapter {request.adapter!r} is not loaded: the llama.cpp backend serves the GGUF "
                              "model alone (merge the adapter and convert the result to GGUF)")
        if params.num_beams > 1:
            raise ConfigError("num_beams > 1: llama-cpp-python has no beam search; use the transformers backend")
        grammar = self._grammar(request.constraint) if request.constraint is not None else None
        handle = Handle(request, self.prompt_ids(request), sink)
        if handle.prompt_tokens >= self.n_ctx:
            raise ConfigError(f"the prompt has {handle.prompt_tokens} tokens; the context holds {self.n_ctx}")
        with self._lock:
            if self._closing.is_set():
                raise RuntimeError("the engine is closed")
            self._queue.put((handle, grammar))
        return handle

    def close(self) -> None:
        with self._lock:
            self._closing.set()
            self._queue.put(None)
        self._worker.join()
        self.llm.close()

    # --- structured output ---

    def _grammar(self, constraint):
        """A LlamaGrammar for `constraint`, checked now so a bad one fails the caller, not the worker."""
        from llama_cpp import LlamaGrammar
        from llama_cpp.llama_grammar import JSON_GBNF

        kind, spec = constraint.kind, constraint.spec
        if (kind, spec) in self._grammars:
            return self._grammars[kind, spec]
        if kind == "regex":
            raise ConfigError("llama.cpp grammars take a JSON schema, a choice list or a GBNF grammar, not a regex")
        try:
            if kind == "json_schema":
                gbnf = LlamaGrammar.from_json_schema(spec, verbose=False)._grammar
            elif kind == "json":
                gbnf = JSON_GBNF
            elif kind == "choice":
                gbnf = "root ::= " + " | ".join(_gbnf_literal(o) for o in json.loads(spec))
            elif kind == "grammar":
                gbnf = spec
            else:
                raise ConfigError(f"unknown constraint kind {kind!r}")
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            raise ConfigError(f"{kind} constraint does not convert to a llama.cpp grammar: {e}") from None
        sampler = self._lib.llama_sampler_init_grammar(self.llm._model.vocab, gbnf.encode(), b"root")
        if not sampler:
            raise ConfigError(f"{kind} constraint: llama.cpp cannot parse the grammar (GBNF syntax)")
        self._lib.llama_sampler_free(sampler)
        grammar = self._grammars[kind, spec] = LlamaGrammar.from_string(gbnf, verbose=False)
        return grammar

    # --- the worker ---

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            handle, grammar = item
            if handle.cancelled.is_set() or self._closing.is_set():
                handle.emit(Delta("", [], finish_reason="cancelled"))
                continue
            try:
                self._run(handle, grammar)
            except Exception as e:  # a bad request or a llama.cpp failure: fail this one, keep serving
                log.exception("llama.cpp generation failed")
                handle.emit(Delta("", [], finish_reason="error", error=f"{type(e).__name__}: {e}"))
        while not self._queue.empty():
            if (item := self._queue.get()) is not None:
                item[0].emit(Delta("", [], finish_reason="cancelled"))

    def _run(self, handle: Handle, grammar) -> None:
        p = handle.request.params
        self.llm.set_seed(p.seed if p.seed is not None else random.randrange(2**32 - 1))
        text = TextStream(_Detokenizer(self.llm), p.stop)
        max_new = min(p.max_new_tokens, self.n_ctx - handle.prompt_tokens)
        ids, lps, piece, count, reason = [], [], "", 0, "length"
        tokens = self.llm.generate(handle.ids, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p, typical_p=1.0,
                                   temp=p.temperature, repeat_penalty=p.repetition_penalty,
                                   presence_penalty=p.presence_penalty, frequency_penalty=p.frequency_penalty,
                                   grammar=grammar)
        try:
            for token in tokens:
                if handle.cancelled.is_set() or self._closing.is_set():
                    reason = "cancelled"
                    break
                if p.logprobs:
                    lps.append(self._logprob(token, p.top_logprobs))
                if token in self.eog and (not p.ignore_eos or grammar is not None):
                    reason = "stop"
                    break
                ids.append(token)
                count += 1
                piece = text.push(token)
                if text.stopped:
                    reason = "stop"
                    break
                if count >= max_new:
                    break
                if piece:
                    handle.emit(Delta(piece, ids, lps or None))
                    ids, lps, piece = [], [], ""
        finally:
            tokens.close()
        handle.emit(Delta(piece + text.finish(), ids, lps or None, reason))

    def _logprob(self, token: int, top: int) -> TokenLogprob:
        """The model's own log-probabilities at this step (before penalties and sampling)."""
        import numpy as np

        logits = np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.llm.n_vocab(),))
        logp = self.llm.logits_to_logprobs(logits)
        best = np.argsort(-logp)[:top] if top else []
        return TokenLogprob(token, float(logp[token]), [(int(i), float(logp[i])) for i in best])

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def _chatml(self, eos: str) -> str:
        from tunelab.data.templates import CHATML_TEMPLATE

        end = "<|im_end|>" if len(self.llm.tokenize(b"<|im_end|>", add_bos=False, special=True)) == 1 else eos
        return CHATML_TEMPLATE.replace("END", repr(end))


def _gbnf_literal(text: str) -> str:
    """A GBNF string literal: quotes, backslashes and control characters escaped."""
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(escapes.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 32 else c) for c in text) + '"'


def open_engine(model, *, adapters, named, dtype, quantize, draft, max_batch_size, use) -> LlamaCppEngine:
    """The engine `load_engine` builds: one GGUF file, which takes no adapters, quantization or draft."""
    from tunelab.models.hub import DEFAULT_MODEL

    refuse("llamacpp", adapters=adapters, quantize=None if quantize == "auto" else quantize, draft=draft)
    return LlamaCppEngine(find_gguf(model or DEFAULT_MODEL))


register("llamacpp", open_engine)
