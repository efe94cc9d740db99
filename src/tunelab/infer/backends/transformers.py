"""The transformers backend: KV-cached decoding with continuous batching, CPU or GPU.

Each step prefills newly arrived requests (left-padded together), joins them to the
running batch, and decodes one token for every running row.
Every row picks its token under its own options, adapter and grammar, so a greedy request,
a sampled one and a JSON-schema one share a forward pass. What this loop cannot run is
handed to `model.generate` whole: beam search, encoder-decoder models, prompt-learning
adapters (their virtual tokens change the cache), caches with sliding windows, and
speculative decoding with a draft.

Which thread runs the steps matters on a CPU: torch's OpenMP pool belongs to the thread
that first used it, and a second thread doing the heavy work gets a second pool, which
libgomp then throttles (measured here: 27 instead of 47 tokens/s). So the steps run on
the thread that loaded the model: the server's main thread (`run_forever`), or, in batch
jobs and chat, the caller waiting on its answer. `start()` gives a background thread for
embedding the engine where neither fits.
"""

from __future__ import annotations

import inspect
import logging
import threading
from pathlib import Path
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from tunelab.data.templates import eos_ids_for_generation
from tunelab.errors import ConfigError
from tunelab.infer.batching import KVBatch, supports_batching
from tunelab.infer.decoding import TokenLogprob, TokenPicker
from tunelab.infer.backends import dtype_name, register
from tunelab.infer.engine import BASE_ADAPTER, Delta, Handle, Request
from tunelab.infer.generate import generation_kwargs, prompt_ids
from tunelab.infer.text import TextStream

log = logging.getLogger(__name__)


@dataclass
class _Row:
    """One answer in progress."""

    handle: Handle
    adapter: str
    prompt_ids: list[int]
    picker: TokenPicker
    text: TextStream
    max_new: int
    matcher: object | None = None
    generated: list[int] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)  # picked but not yet emitted
    pending_lps: list[TokenLogprob] = field(default_factory=list)
    last: int = -1  # picked, not yet in the cache

    @property
    def position(self) -> int:
        return len(self.prompt_ids) + len(self.generated) - 1


class TransformersEngine:
    """An `Engine` over a transformers model (optionally a peft model with named adapters).

    Args:
        max_batch_size: rows decoded together; more requests wait their turn.
        prefill_tokens: padded prompt tokens prefilled in one step (bounds memory and latency).
        draft: speculative decoding for greedy requests: a draft model sharing the tokenizer,
            or "ngram" (prompt lookup); see `tunelab.infer.speculative`.
        default_adapter: what a request naming no adapter gets (default: the active adapter).
    """

    name = "transformers"

    def __init__(self, model, tokenizer, *, max_batch_size: int = 16, prefill_tokens: int = 4096, draft=None,
                 default_adapter: str | None = None, system_prompts: dict[str, str] | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.prefill_tokens, self.draft = max_batch_size, prefill_tokens, draft
        self.eos = set(eos_ids_for_generation(tokenizer, model.generation_config.eos_token_id))
        config = model.config
        self.max_positions = getattr(config, "max_position_embeddings", None) or 1 << 30
        peft_config = getattr(model, "peft_config", None) or {}
        self.peft_adapters = list(peft_config)
        # a request that names no adapter gets the active one (a run loaded alone); BASE_ADAPTER is the base
        self.default_adapter = default_adapter or (model.active_adapter if peft_config else BASE_ADAPTER)
        # adapter name (None: the default) -> the system prompt its run was trained with, for requests that bring none
        self.system_prompts = {self.default_adapter if name is None else name: text
                               for name, text in (system_prompts or {}).items() if text}
        prompt_learning = any(c.is_prompt_learning for c in peft_config.values())
        self.batching = (not config.is_encoder_decoder and not prompt_learning and supports_batching(config))
        # peft runs a batch whose rows use different LoRA adapters in one forward; other kinds go one adapter at a time
        self.mixed = bool(peft_config) and all(c.peft_type.value == "LORA" for c in peft_config.values())
        base = model.get_base_model() if peft_config else model
        self.logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        self.vocab_size = model.get_output_embeddings().out_features  # the head may hold packed weights
        self._grammars = None
        self._kv = KVBatch()
        self._rows: list[_Row] = []
        self._waiting: deque[Handle] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._looping = False
        self._step_lock = threading.Lock()
        self._taken: list[Handle] = []  # taken off the queue this step, maybe not yet in a row
        self.steps = 0  # decode steps run (for metrics)

    # --- the Engine protocol ---

    def prompt_ids(self, request: Request) -> list[int]:
        if request.system is None and request.chat:
            request = replace(request, system=self.system_prompts.get(request.adapter or self.default_adapter))
        return prompt_ids(self.tokenizer, request)

    def adapters(self) -> list[str]:
        return list(self.peft_adapters)

    def submit(self, request: Request, sink: Callable[[Delta], None] | None = None) -> Handle:
        request.params.check()
        if request.adapter and request.adapter not in self.peft_adapters + [BASE_ADAPTER]:
            raise ConfigError(f"adapter {request.adapter!r} is not loaded; loaded: {', '.join(self.peft_adapters) or 'none'}")
        if request.constraint is not None and request.params.num_beams > 1:
            raise ConfigError("structured output runs with num_beams 1 (beam search cannot follow a grammar here)")
        if request.constraint is not None and not self.batching:
            raise ConfigError("structured output needs the batched decoder, which this model cannot use "
                              "(encoder-decoder, prompt-learning adapter or sliding-window cache)")
        # with no loop running, whoever waits on a handle runs the steps (see the module notes)
        ids = self.prompt_ids(request)
        if not ids:  # an empty raw prompt: start from the text boundary token, as a new document would
            ids = [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id]
        handle = Handle(request, ids, sink, drive=None if self._looping else self._drive)
        if request.constraint is not None:  # compile now, so a bad schema fails the caller, not the loop
            handle.matcher = self.grammars().matcher(request.constraint)
        with self._cv:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(handle)
            self._cv.notify()
        return handle

    def close(self) -> None:
        """Stop the loop; answers in flight end with finish_reason 'cancelled'."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join()
        with self._step_lock:
            self._cancel_all()

    def run_forever(self) -> None:
        """Run steps in this thread until `close()`: the server runs this on its main thread."""
        self._looping = True
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._closed or self._waiting or self._rows):
                        self._cv.wait()
                    if self._closed:
                        return
                with self._step_lock:
                    self._safe_step()

    def start(self) -> None:
        """Run the loop in a background thread (for callers that cannot give it their own thread)."""
        if self._worker is None:
            self._looping = True
            self._worker = threading.Thread(target=self.run_forever, name="tunelab-engine", daemon=True)
            self._worker.start()

    def grammars(self):
        if self._grammars is None:
            from tunelab.infer.structured import Grammars

            self._grammars = Grammars(self.tokenizer, self.vocab_size, sorted(self.eos))
        return self._grammars

    @property
    def load(self) -> tuple[int, int]:
        """(running rows, waiting requests)."""
        return len(self._rows), len(self._waiting)

    # --- the worker ---

    def _drive(self) -> bool:
        """One step, run by a consumer waiting on its handle when no loop is running; False if idle."""
        with self._step_lock, torch.inference_mode():
            if self._closed:
                self._cancel_all()
            elif self._waiting or self._rows:
                self._safe_step()
            else:
                return False
        return True

    def _safe_step(self) -> None:
        self._taken = []
        try:
            self._step()
        except Exception as e:  # a bug or out of memory: fail what is in flight, keep serving
            log.exception("generation step failed")
            for handle in [r.handle for r in self._rows] + self._taken:
                handle.emit(Delta("", [], finish_reason="error", error=f"{type(e).__name__}: {e}"))
            self._rows, self._kv = [], KVBatch()

    def _cancel_all(self) -> None:
        for row in self._rows:
            row.handle.emit(Delta("", [], finish_reason="cancelled"))
        self._rows, self._kv = [], KVBatch()
        with self._cv:
            while self._waiting:
                self._waiting.popleft().emit(Delta("", [], finish_reason="cancelled"))

    def _step(self) -> None:
        self._drop_cancelled()
        whole = self._next_whole()
        if whole is not None:
            self._taken = [whole]
            self._run_whole(whole)
            return
        new = self._admit()
        self._taken = new
        if new:
            self._prefill(new)
        if self._rows:
            self._decode()

    def _next_whole(self) -> Handle | None:
        with self._cv:
            if self._waiting and self._needs_whole(self._waiting[0].request):
                return self._waiting.popleft()
        return None

    def _needs_whole(self, request: Request) -> bool:
        p = request.params
        plain = (p.greedy and request.constraint is None and not p.logprobs and not p.ignore_eos
                 and not p.presence_penalty and not p.frequency_penalty)  # what model.generate with a draft keeps
        return not self.batching or p.num_beams > 1 or (self.draft is not None and plain)

    def _admit(self) -> list[Handle]:
        """Waiting requests that fit this step (room in the batch, prefill budget, adapter rules)."""
        taken = []
        with self._cv:
            while self._waiting and len(self._rows) + len(taken) < self.max_batch_size:
                h = self._waiting[0]
                if self._needs_whole(h.request):
                    break
                longest = max([len(t.ids) for t in taken] + [len(h.ids)])
                if taken and longest * (len(taken) + 1) > self.prefill_tokens:
                    break
                adapter = self._adapter(h)
                if not self.mixed and ({r.adapter for r in self._rows} | {self._adapter(t) for t in taken}) - {adapter}:
                    break  # this kind of adapter runs one at a time: wait until the batch drains
                taken.append(self._waiting.popleft())
        return taken

    def _adapter(self, handle: Handle) -> str:
        return handle.request.adapter or self.default_adapter

    def _forward(self, rows_adapters: list[str], **inputs):
        names = set(rows_adapters)
        if not self.peft_adapters:
            return self.model(**inputs)
        if names == {BASE_ADAPTER}:
            with self.model.disable_adapter():
                return self.model(**inputs)
        if len(names) == 1:
            if self.model.active_adapter != rows_adapters[0]:
                self.model.set_adapter(rows_adapters[0])
            return self.model(**inputs)
        return self.model(**inputs, adapter_names=rows_adapters)

    def _prefill(self, handles: list[Handle]) -> None:
        from transformers import DynamicCache

        device = self.model.device
        length = max(len(h.ids) for h in handles)
        ids = torch.full((len(handles), length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(handles), length), dtype=torch.long)
        for i, h in enumerate(handles):
            ids[i, length - len(h.ids):] = torch.tensor(h.ids)
            mask[i, length - len(h.ids):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        extra = {"logits_to_keep": 1} if self.logits_to_keep else {}
        out = self._forward([self._adapter(h) for h in handles], input_ids=ids, attention_mask=mask,
                            position_ids=positions, past_key_values=cache, use_cache=True, **extra)
        logits = out.logits[:, -1].float()
        rows = [self._start(h) for h in handles]
        keep = [i for i, row in enumerate(rows) if self._advance(row, logits[i])]
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=device)
            for layer in cache.layers:
                layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)
            mask = mask.index_select(0, index)
        if keep:
            self._kv.add(cache, mask)
            self._rows += [rows[i] for i in keep]

    def _start(self, handle: Handle) -> _Row:
        request = handle.request
        room = self.max_positions - len(handle.ids)
        return _Row(handle, self._adapter(handle), handle.ids, TokenPicker(request.params, handle.ids, self.model.device),
                    # a constrained answer ends where its grammar does: a stop string could cut it mid-record
                    TextStream(self.tokenizer, [] if handle.matcher else request.params.stop),
                    max(1, min(request.params.max_new_tokens, room)),
                    handle.matcher)

    def _decode(self) -> None:
        rows = self._rows
        device = self.model.device
        tokens = torch.tensor([[r.last] for r in rows], device=device)
        positions = torch.tensor([[r.position] for r in rows], device=device)
        mask = self._kv.grow()
        out = self._forward([r.adapter for r in rows], input_ids=tokens, attention_mask=mask, position_ids=positions,
                            past_key_values=self._kv.cache, use_cache=True)
        self.steps += 1
        logits = out.logits[:, -1].float()
        greedy = logits.argmax(-1).tolist()  # one batched argmax serves every plain greedy row
        keep = [i for i, row in enumerate(rows) if self._advance(row, logits[i], greedy[i])]
        self._kv.keep(keep)
        self._rows = [rows[i] for i in keep]

    def _advance(self, row: _Row, logits: torch.Tensor, argmax: int | None = None) -> bool:
        """Pick and record one token for `row`; emit text; return False when the row finished."""
        if row.handle.cancelled.is_set():
            return self._finish(row, "cancelled")
        params = row.handle.request.params
        if argmax is not None and params.plain_argmax and row.matcher is None:
            token, logprob = argmax, None
        else:
            token, logprob = row.picker.pick(logits, row.matcher.constrain if row.matcher else None)
        if row.matcher is not None:
            row.matcher.accept(token)
        if (token in self.eos and not params.ignore_eos) or (row.matcher is not None and row.matcher.done):
            return self._finish(row, "stop")  # the end token is not part of the answer, nor of its logprobs
        if logprob is not None:
            row.pending_lps.append(logprob)
        row.generated.append(token)
        row.pending_ids.append(token)
        row.last = token
        piece = row.text.push(token)
        if row.text.stopped:
            return self._finish(row, "stop", piece)
        if len(row.generated) >= row.max_new:
            return self._finish(row, "length", piece)
        if piece:
            row.handle.emit(Delta(piece, row.pending_ids, row.pending_lps or None))
            row.pending_ids, row.pending_lps = [], []
        return True

    def _finish(self, row: _Row, reason: str, piece: str = "") -> bool:
        row.handle.emit(Delta(piece + row.text.finish(), row.pending_ids, row.pending_lps or None, reason))
        return False

    def _drop_cancelled(self) -> None:
        with self._cv:
            for h in [h for h in self._waiting if h.cancelled.is_set()]:
                self._waiting.remove(h)
                h.emit(Delta("", [], finish_reason="cancelled"))
        if any(r.handle.cancelled.is_set() for r in self._rows):
            keep = [i for i, r in enumerate(self._rows) if not r.handle.cancelled.is_set() or self._finish(r, "cancelled")]
            self._kv.keep(keep)
            self._rows = [self._rows[i] for i in keep]

    def _run_whole(self, handle: Handle) -> None:
        """One request through `model.generate` (beam search, encoder-decoder, speculative...)."""
        request = handle.request
        params = request.params
        if params.seed is not None:
            torch.manual_seed(params.seed)
        ids = torch.tensor([handle.ids], device=self.model.device)
        kwargs = generation_kwargs(self.model, self.tokenizer, params)
        if self.draft is not None and params.greedy and params.num_beams == 1:
            from tunelab.infer.speculative import draft_kwargs

            kwargs.update(draft_kwargs(self.draft))
        adapter = self._adapter(handle)
        if self.peft_adapters and adapter != BASE_ADAPTER and self.model.active_adapter != adapter:
            self.model.set_adapter(adapter)
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):  # a timeout or a closed connection ends this generate() too
            def __call__(self, input_ids, scores, **kw):
                return torch.full((input_ids.shape[0],), handle.cancelled.is_set(), device=input_ids.device)

        with self.model.disable_adapter() if self.peft_adapters and adapter == BASE_ADAPTER else _nothing():
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      stopping_criteria=StoppingCriteriaList([Cancelled()]), **kwargs)
        if handle.cancelled.is_set():
            handle.emit(Delta("", [], finish_reason="cancelled"))
            return
        start = 0 if self.model.config.is_encoder_decoder else ids.shape[1]
        tokens = [t for t in out[0, start:].tolist() if t not in self.eos and t != self.tokenizer.pad_token_id]
        text = TextStream(self.tokenizer, params.stop)
        pieces = [text.push(t) for t in tokens]
        reason = "stop" if text.stopped or len(tokens) < params.max_new_tokens else "length"
        handle.emit(Delta("".join(pieces) + text.finish(), tokens, finish_reason=reason))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def open_engine(model, *, adapters, named, dtype, quantize, draft, max_batch_size, use) -> TransformersEngine:
    """The engine `load_engine` builds: the model (or its adapters on their base), on the GPU when there
    is one, optionally with int8 or int4 weights and a speculative draft."""
    from tunelab.hardware import compute_dtype, int8_decode
    from tunelab.hardware.choose import INT8_ROWS
    from tunelab.infer.speculative import make_draft
    from tunelab.compress.quantize import is_quantized, load_any
    from tunelab.compress.source import recorded_system_prompt, run_system_prompt
    from tunelab.models import load_adapters, load_run
    from tunelab.models.hub import DEFAULT_MODEL

    torch_dtype = compute_dtype("auto") if dtype == "auto" else getattr(torch, dtype_name(dtype))
    default, systems = None, {}
    if named:
        net, tokenizer = load_adapters(named, base=model, dtype=torch_dtype)
        if use and use not in named:
            raise ConfigError(f"--use {use}: no adapter of that name; loaded: {', '.join(named)}")
        default = use or next(iter(named))
        systems = {name: run_system_prompt(Path(run)) for name, run in named.items()}
    elif adapters:
        runs = [adapters] if isinstance(adapters, str) else list(adapters)
        if len(runs) > 1:
            raise ConfigError("--adapter: to load several adapters name them, e.g. --adapter a=runs/x --adapter b=runs/y")
        net, tokenizer = load_run(runs[0], base=model, dtype=torch_dtype)
        if tokenizer is None or not hasattr(net, "generate"):
            raise ConfigError(f"--adapter {runs[0]}: this run is a classifier or probe, which does not generate text")
        systems = {None: run_system_prompt(Path(runs[0]))}
    else:
        net, tokenizer = load_any(model or DEFAULT_MODEL, dtype=torch_dtype)
        systems = {None: recorded_system_prompt(model)}
    prequantized = is_quantized(net)
    if torch.cuda.is_available():
        net = net.to("cuda")
    if draft and draft.startswith("layers:") and getattr(net, "peft_config", None):
        raise ConfigError("--draft layers:N drafts with the base model's own layers, which adapters wrap; with "
                          "--adapter use --draft ngram or a draft model")
    speculative = make_draft(draft, net)  # before quantizing: a layers:N draft shares the unquantized weights
    rows = 0 if prequantized or torch.cuda.is_available() else int8_decode(torch_dtype)
    if quantize == "auto":  # int8 where the hardware's int8 kernel beats the weights for this many streams
        quantize = "int8" if dtype == "auto" and max_batch_size < rows else None
    if quantize in ("int8", "int4") and prequantized:
        raise ConfigError(f"--quantize {quantize}: {model} is already quantized; drop --quantize")
    if quantize == "int8":
        from tunelab.infer.quantize import quantize_int8

        quantize_int8(net, rows or INT8_ROWS)  # asked for where auto would not: the measured crossing
    elif quantize == "int4":
        from tunelab.infer.quantize import quantize_int4

        quantize_int4(net)
    elif quantize not in (None, "", "none"):
        raise ConfigError(f"--quantize {quantize}: expected auto, int8, int4 or none")
    net.eval()
    return TransformersEngine(net, tokenizer, max_batch_size=max_batch_size, draft=speculative,
                              default_adapter=default, system_prompts=systems)


register("transformers", open_engine)
