"""Build an engine from names: the model, its adapters, the backend, precision and draft."""

from __future__ import annotations

from tunelab.errors import ConfigError

BACKENDS = ("transformers", "llamacpp", "vllm")
DEFAULT_MODEL = "smollm2-135m-instruct"


def load_engine(model: str | None = None, *, adapters: list[str] | dict[str, str] | None = None,
                backend: str = "transformers", dtype: str = "auto", quantize: str | None = "auto",
                draft: str | None = None, max_batch_size: int = 16, use: str | None = None):
    """An engine for `model` (alias, folder, .gguf, Hub id; default the packaged SmolLM2).

    Args:
        adapters: one run folder, or NAME=RUN pairs (a list of "NAME=RUN" or a dict) to load
            several LoRA adapters on the one base; requests pick them by name.
        backend: transformers (CPU or GPU), llamacpp (a GGUF file) or vllm (GPU).
        dtype: auto (bfloat16 where the hardware computes it natively), bf16, fp16 or fp32.
        quantize: "auto", "int8" or None. auto is int8 for an engine of few rows (max_batch_size
            under 5: chat, one stream) on a CPU that computes bfloat16 natively, where it decodes
            about 1.7x faster than bfloat16 weights for +0.1% perplexity; otherwise none, since
            from about 8 rows a step runs on the bfloat16 weights anyway.
        draft: speculative decoding: "ngram", "layers:N" or a draft model (transformers backend).
        use: with several adapters, the one a request naming none gets (default: the first).
    """
    named = _named(adapters)
    if backend == "llamacpp":
        from tunelab.infer.backends.llamacpp import LlamaCppEngine, find_gguf

        _refuse(backend, adapters=adapters, quantize=None if quantize == "auto" else quantize, draft=draft)
        return LlamaCppEngine(find_gguf(model or DEFAULT_MODEL))
    if backend == "vllm":
        from tunelab.infer.backends.vllm import VLLMEngine

        _refuse(backend, quantize=None if quantize == "auto" else quantize, draft=draft)
        if adapters and not named:
            raise ConfigError("--backend vllm: name the adapter, e.g. --adapter tuned=runs/my-run")
        return VLLMEngine(model or DEFAULT_MODEL, adapters=named or None, dtype="auto" if dtype == "auto" else _DTYPES[dtype])
    if backend != "transformers":
        raise ConfigError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    return _transformers_engine(model, adapters, named, dtype, quantize, draft, max_batch_size, use)


def _transformers_engine(model, adapters, named, dtype, quantize, draft, max_batch_size, use):
    from tunelab.infer.backends.transformers import TransformersEngine
    from tunelab.infer.quantize import ROWS
    from tunelab.infer.speculative import make_draft
    from tunelab.models import load_adapters, load_model, load_run
    from tunelab.training.precision import compute_dtype

    torch_dtype = compute_dtype("auto") if dtype == "auto" else _torch_dtype(dtype)
    default = None
    if named:
        net, tokenizer = load_adapters(named, base=model, dtype=torch_dtype)
        if use and use not in named:
            raise ConfigError(f"--use {use}: no adapter of that name; loaded: {', '.join(named)}")
        default = use or next(iter(named))
    elif adapters:
        runs = [adapters] if isinstance(adapters, str) else list(adapters)
        if len(runs) > 1:
            raise ConfigError("--adapter: to load several adapters name them, e.g. --adapter a=runs/x --adapter b=runs/y")
        net, tokenizer = load_run(runs[0], base=model, dtype=torch_dtype)
        if tokenizer is None or not hasattr(net, "generate"):
            raise ConfigError(f"--adapter {runs[0]}: this run is a classifier or probe, which does not generate text")
    else:
        net, tokenizer = load_model(model or DEFAULT_MODEL, dtype=torch_dtype)
    import torch

    if torch.cuda.is_available():
        net = net.to("cuda")
    if draft and draft.startswith("layers:") and getattr(net, "peft_config", None):
        raise ConfigError("--draft layers:N drafts with the base model's own layers, which adapters wrap; with "
                          "--adapter use --draft ngram or a draft model")
    speculative = make_draft(draft, net)  # before quantizing: a layers:N draft shares the unquantized weights
    if quantize == "auto":
        cpu_bf16 = dtype == "auto" and torch_dtype == torch.bfloat16 and not torch.cuda.is_available()
        quantize = "int8" if cpu_bf16 and max_batch_size < ROWS else None
    if quantize == "int8":
        from tunelab.infer.quantize import quantize_int8

        quantize_int8(net)
    elif quantize not in (None, "", "none"):
        raise ConfigError(f"--quantize {quantize}: expected none or int8")
    net.eval()
    return TransformersEngine(net, tokenizer, max_batch_size=max_batch_size, draft=speculative,
                              default_adapter=default)


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ConfigError(f"--dtype {name}: expected auto, bf16, fp16 or fp32")
    return getattr(torch, _DTYPES[name])


def _named(adapters) -> dict[str, str]:
    if isinstance(adapters, dict):
        return dict(adapters)
    items = [adapters] if isinstance(adapters, str) else list(adapters or [])
    named = dict(a.split("=", 1) for a in items if "=" in a)
    if named and len(named) != len(items):
        raise ConfigError("--adapter: with several adapters give each as NAME=RUN_FOLDER")
    return named


def _refuse(backend: str, **options) -> None:
    given = [k for k, v in options.items() if v not in (None, "", "none", [], {})]
    if given:
        raise ConfigError(f"--backend {backend} does not take --{given[0]}; it is a transformers-backend option")
