"""The vLLM backend: paged attention and continuous batching on a GPU.

vLLM's engine is asyncio-native, so it lives on its own event loop in a background
thread; `submit` schedules one coroutine per request on that loop and forwards each new
piece of output to the request's handle. Prompts are rendered and tokenized here, with
the same chat template as the transformers backend, and handed to vLLM as token ids,
so both backends answer the same prompt tokens. `sampling_params_kwargs` is the whole
option mapping and needs no vLLM install (it is tested without a GPU).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path

from tunelab.errors import ConfigError, ModelError
from tunelab.infer.decoding import DecodingConfig, TokenLogprob
from tunelab.infer.backends import dtype_name, refuse, register
from tunelab.infer.engine import BASE_ADAPTER, Delta, Handle, Request

log = logging.getLogger(__name__)
LORA_RANKS = (8, 16, 32, 64, 128, 256, 512)  # the max_lora_rank values vLLM accepts


def sampling_params_kwargs(params: DecodingConfig, constraint=None) -> dict:
    """`vllm.SamplingParams` keyword arguments for `params` and a structured-output constraint.

    The constraint comes back as a plain dict under "structured_outputs"; the engine turns
    it into StructuredOutputsParams (vLLM >= 0.10) or GuidedDecodingParams (older).
    """
    kwargs = {
        "n": 1,
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k or -1,  # -1 is "off" in every vLLM version (0 is rejected by older ones)
        "min_p": params.min_p,
        "repetition_penalty": params.repetition_penalty,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "stop": list(params.stop),
        "seed": params.seed,
        "logprobs": params.top_logprobs if params.logprobs else None,  # 0: the chosen token's only
        "ignore_eos": params.ignore_eos,
    }
    if constraint is not None:
        kwargs["structured_outputs"] = _structured(constraint)
    return kwargs


def _structured(constraint) -> dict:
    kind, spec = constraint.kind, constraint.spec
    try:
        if kind == "json_schema":
            return {"json": json.loads(spec)}
        if kind == "json":
            return {"json_object": True}
        if kind == "regex":
            return {"regex": spec}
        if kind == "choice":
            return {"choice": json.loads(spec)}
        if kind == "grammar":
            return {"grammar": spec}
    except json.JSONDecodeError as e:
        raise ConfigError(f"{kind} constraint: not valid JSON ({e})") from None
    raise ConfigError(f"unknown constraint kind {kind!r}; expected json_schema, json, regex, choice or grammar")


class VLLMEngine:
    """An `Engine` over vLLM.

    Args:
        model: a model folder, Hub id or tunelab alias (GGUF aliases are dequantized once).
        adapters: LoRA adapters by name -> adapter folder; a request picks one with `adapter`.
        engine_kwargs: passed on to vLLM's `AsyncEngineArgs` (e.g. tensor_parallel_size).
    """

    name = "vllm"

    def __init__(self, model: str, *, adapters: dict[str, str] | None = None, dtype: str = "auto",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9, **engine_kwargs):
        try:
            import vllm
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise ModelError("the vLLM backend needs vLLM, which needs an NVIDIA GPU (CUDA): pip install vllm") from None
        try:
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:  # vLLM before the v1 engine
            from vllm import AsyncLLMEngine as AsyncLLM
        from tunelab.models import load_tokenizer, resolve

        self._vllm = vllm
        folder = resolve(model)
        self.tokenizer = load_tokenizer(folder)
        self.stop_ids = _stop_ids(folder, self.tokenizer)
        self._lora = {name: LoRARequest(name, i + 1, str(path)) for i, (name, path) in enumerate((adapters or {}).items())}
        if self._lora:
            ranks = [_lora_rank(Path(path)) for path in adapters.values()]
            rank = next((r for r in LORA_RANKS if r >= max(ranks)), LORA_RANKS[-1])
            engine_kwargs = {"enable_lora": True, "max_loras": len(self._lora), "max_lora_rank": rank, **engine_kwargs}
        args = vllm.AsyncEngineArgs(model=str(folder), dtype=dtype, max_model_len=max_model_len,
                                    gpu_memory_utilization=gpu_memory_utilization, **engine_kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tunelab-vllm", daemon=True)
        self._thread.start()

        async def start():  # created on its loop: vLLM binds its background tasks to the running loop
            return AsyncLLM.from_engine_args(args)

        try:
            self.engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except BaseException:  # no GPU, out of memory, an unsupported model: leave no thread behind
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        self.max_model_len = getattr(getattr(self.engine, "model_config", None), "max_model_len", None)
        self._inflight: set[Handle] = set()
        self._lock = threading.Lock()
        self._closed = False

    # --- the Engine protocol ---

    def prompt_ids(self, request: Request) -> list[int]:
        from tunelab.infer.generate import prompt_ids

        return prompt_ids(self.tokenizer, request)

    def adapters(self) -> list[str]:
        return list(self._lora)

    def submit(self, request: Request, sink: Callable[[Delta], None] | None = None) -> Handle:
        params = request.params.check()
        if params.num_beams > 1:
            raise ConfigError("num_beams > 1: vLLM's engine has no beam search for streamed requests; "
                              "use the transformers backend")
        if request.adapter == BASE_ADAPTER:  # the server names the base explicitly when adapters are loaded
            request.adapter = None
        if request.adapter and request.adapter not in self._lora:
            raise ConfigError(f"adapter {request.adapter!r} is not loaded; loaded: {', '.join(self._lora) or 'none'}")
        kwargs = sampling_params_kwargs(params, request.constraint)
        if not params.ignore_eos:
            kwargs["stop_token_ids"] = self.stop_ids
        sampling = self._sampling_params(kwargs)
        handle = Handle(request, self.prompt_ids(request), sink)
        if self.max_model_len and handle.prompt_tokens >= self.max_model_len:
            raise ConfigError(f"the prompt has {handle.prompt_tokens} tokens; the model takes {self.max_model_len}")
        with self._lock:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._inflight.add(handle)
        lora = self._lora.get(request.adapter) if request.adapter else None
        asyncio.run_coroutine_threadsafe(self._run(handle, sampling, lora), self._loop)
        return handle

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pending = list(self._inflight)
        for handle in pending:
            handle.cancel()
        asyncio.run_coroutine_threadsafe(self._drain(), self._loop).result(timeout=30)
        shutdown = getattr(self.engine, "shutdown", None) or getattr(self.engine, "shutdown_background_loop", None)
        if shutdown is not None:
            self._loop.call_soon_threadsafe(shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)

    # --- on the event loop ---

    def _sampling_params(self, kwargs: dict):
        structured = kwargs.pop("structured_outputs", None)
        if structured is not None:
            try:
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(**structured)
            except ImportError:  # vLLM < 0.10
                from vllm.sampling_params import GuidedDecodingParams

                kwargs["guided_decoding"] = GuidedDecodingParams(**structured)
        try:
            return self._vllm.SamplingParams(**kwargs)
        except ValueError as e:
            raise ConfigError(f"vLLM rejects the decoding options: {e}") from None

    async def _run(self, handle: Handle, sampling, lora) -> None:
        """Stream one request; a cancelled handle cancels this task, which makes vLLM abort it."""
        task = asyncio.current_task()

        async def watch():
            while not handle.cancelled.is_set():
                await asyncio.sleep(0.05)
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        text, n_ids, finished, top = "", 0, False, handle.request.params.top_logprobs
        try:
            outputs = self.engine.generate({"prompt_token_ids": handle.ids}, sampling, f"tunelab-{handle.request.id}",
                                           lora_request=lora)
            async with aclosing(outputs):  # vLLM aborts a request whose stream is closed early
                async for out in outputs:
                    o = out.outputs[0]
                    ids, piece = list(o.token_ids[n_ids:]), o.text[len(text):]
                    lps = _logprobs(o.logprobs[n_ids:], ids, top) if o.logprobs is not None else None
                    text, n_ids, finished = o.text, len(o.token_ids), out.finished
                    reason = {"abort": "cancelled", None: "stop"}.get(o.finish_reason, o.finish_reason) if finished else None
                    if piece or ids or reason:
                        handle.emit(Delta(piece, ids, lps, reason))
            if not finished:
                handle.emit(Delta("", [], finish_reason="stop"))
        except asyncio.CancelledError:
            if not finished:  # (a cancel that lands after the last delta changes nothing)
                handle.emit(Delta("", [], finish_reason="cancelled"))
        except Exception as e:  # a rejected request or a dead engine: fail this request, keep the loop
            log.exception("vLLM generation failed")
            if not finished:
                handle.emit(Delta("", [], finish_reason="error", error=f"{type(e).__name__}: {e}"))
        finally:
            watcher.cancel()
            with self._lock:
                self._inflight.discard(handle)

    async def _drain(self) -> None:
        while self._inflight:
            await asyncio.sleep(0.05)


def _logprobs(steps: list, ids: list[int], top: int) -> list[TokenLogprob]:
    """vLLM's per-token {token id: Logprob} dicts (the chosen token plus the `top` most likely)."""
    out = []
    for token, step in zip(ids, steps):
        best = sorted(step.items(), key=lambda kv: -kv[1].logprob)[:top]
        out.append(TokenLogprob(token, step[token].logprob, [(i, lp.logprob) for i, lp in best]))
    return out


def _stop_ids(folder: Path, tokenizer) -> list[int]:
    """EOS and the chat template's end-of-answer token, as the transformers backend stops on."""
    from transformers import GenerationConfig

    from tunelab.data.templates import ensure_chat_template, eos_ids_for_generation

    ensure_chat_template(tokenizer)
    try:
        eos = GenerationConfig.from_pretrained(str(folder)).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    return eos_ids_for_generation(tokenizer, eos)


def _lora_rank(folder: Path) -> int:
    """The rank `r` in a peft adapter folder's adapter_config.json (16 when it cannot be read)."""
    try:
        return int(json.loads((folder / "adapter_config.json").read_text()).get("r", 16))
    except (OSError, ValueError):
        return 16


def open_engine(model, *, adapters, named, dtype, quantize, draft, max_batch_size, use) -> VLLMEngine:
    """The engine `load_engine` builds: LoRA adapters by name; vLLM batches and quantizes by itself."""
    from tunelab.models.hub import DEFAULT_MODEL

    refuse("vllm", quantize=None if quantize == "auto" else quantize, draft=draft)
    if adapters and not named:
        raise ConfigError("--backend vllm: name the adapter, e.g. --adapter tuned=runs/my-run")
    return VLLMEngine(model or DEFAULT_MODEL, adapters=named or None, dtype=dtype_name(dtype))


register("vllm", open_engine)
