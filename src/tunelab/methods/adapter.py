"""Bottleneck adapters: small trained MLPs inserted into a frozen transformer.

Houlsby et al. 2019 (arXiv:1902.00751), "Parameter-Efficient Transfer Learning for NLP";
Pfeiffer et al. 2020 (arXiv:2005.00247), "AdapterFusion".

Each adapter maps a sub-layer's output h (hidden size d) to

    h + up(act(down(h)))        down: Linear(d, b), up: Linear(b, d), both with bias

where b is `bottleneck`. `up` starts with weights ~ N(0, init_scale^2) and zero bias, so a
new adapter is close to the identity and training starts from the base model.

Where they go, in every transformer block of every block list (encoder-decoders have two):
* style houlsby: after the attention sub-layer and after the feed-forward sub-layer;
* style pfeiffer: after the feed-forward sub-layer only.
Sub-layers are found by child name: `self_attn`/`mlp` (Llama, Mistral, Qwen ...),
`attention`/`output` (BERT family; the adapter follows BertOutput's LayerNorm), and
`layer[0]`/`layer[-1]` for T5 blocks.

Trainable parameters:

    total = n_adapters * (2*d*b + b + d)  (+ the classification head, when the model has one)
    n_adapters = blocks * (2 for houlsby, 1 for pfeiffer), summed over every block list

Not mergeable: the nonlinearity between the projections cannot fold into the base weights.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.config.options import Options, opt
from tunelab.errors import ConfigError, ModelError
from tunelab.methods import register
from tunelab.models.families import all_block_lists, classifier_head

WEIGHTS, CONFIG = "adapter_model.safetensors", "bottleneck_config.json"
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
ATTENTION_NAMES = ("self_attn", "attn", "self_attention", "attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "output")


class Config(Options):
    """Bottleneck adapter options."""

    name: Literal["adapter"] = "adapter"
    style: Literal["houlsby", "pfeiffer"] = opt("houlsby", "houlsby: after attention and feed-forward; pfeiffer: "
                                                "after feed-forward only")
    bottleneck: int = opt(64, "b, the reduced size inside each adapter", ge=1, aka=("reduction_factor",))
    nonlinearity: Literal["relu", "gelu", "silu", "tanh"] = opt("gelu", "activation inside the bottleneck")
    init_scale: float = opt(1e-3, "std of the up-projection's initial weights", ge=0, allow_inf_nan=False)
    dropout: float = opt(0.0, "dropout on the bottleneck activations", ge=0, lt=1)


class Bottleneck(nn.Module):
    """h + up(act(down(h))) on the last dimension of h."""

    def __init__(self, d: int, cfg: Config):
        super().__init__()
        self.down = nn.Linear(d, cfg.bottleneck)  # (..., d) -> (..., b)
        self.act = ACTIVATIONS[cfg.nonlinearity]()
        self.dropout = nn.Dropout(cfg.dropout)
        self.up = nn.Linear(cfg.bottleneck, d)  # (..., b) -> (..., d)
        nn.init.normal_(self.up.weight, std=cfg.init_scale)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h
        # Under autocast the matmuls pick their own dtype; otherwise a bf16 h meets float32 weights.
        if not torch.is_autocast_enabled(h.device.type) and h.dtype != self.down.weight.dtype:
            x = h.to(self.down.weight.dtype)
        delta = self.up(self.dropout(self.act(self.down(x))))
        return h + delta.to(h.dtype)  # the next layer expects the sub-layer's own dtype


class AdapterWrapped(nn.Module):
    """A sub-layer followed by a Bottleneck on the first element of its output."""

    def __init__(self, base: nn.Module, adapter: Bottleneck):
        super().__init__()
        self.base = base
        self.adapter = adapter
        self.enabled = True

    def forward(self, *args, **kwargs):
        out = self.base(*args, **kwargs)
        if not self.enabled:
            return out  # skipped, not multiplied by 0: exactly the base model's output
        if isinstance(out, tuple):  # (hidden, attention weights, ...): only the hidden states change
            return (self.adapter(out[0]), *out[1:])
        return self.adapter(out)

    def __getattr__(self, name: str):
        # Code outside the block may read attributes of the sub-layer (layer_idx, config ...).
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_"):  # no lookups through a half-built object (copy, pickle)
                raise
            return getattr(self._modules["base"], name)


def sublayers(block: nn.Module, style: str) -> list[tuple[nn.Module, str]]:
    """(parent, child name) of each sub-layer of `block` that gets an adapter."""
    children = dict(block.named_children())
    if isinstance(children.get("layer"), nn.ModuleList):  # T5: [self-attention, (cross-attention,) feed-forward]
        layer = children["layer"]
        attention, mlp = (layer, "0"), (layer, str(len(layer) - 1))
    else:
        attention = next(((block, n) for n in ATTENTION_NAMES if n in children), None)
        mlp = next(((block, n) for n in MLP_NAMES if n in children), None)
    chosen = [attention, mlp] if style == "houlsby" else [mlp]
    if any(c is None for c in chosen):
        raise ConfigError(f"method adapter: cannot find the attention and feed-forward sub-layers of "
                          f"{type(block).__name__} (children: {', '.join(children)})")
    return chosen


def hidden_size(model) -> int:
    return getattr(model.config, "hidden_size", None) or model.config.d_model


def apply(model, cfg: Config):
    """Freeze `model`, insert adapters in place; only adapters (and a classification head) train."""
    if wrapped(model):
        raise ConfigError("method adapter: this model already has bottleneck adapters")
    d = hidden_size(model)
    lists = all_block_lists(model)
    if not lists:
        raise ConfigError(f"method adapter: cannot find the transformer blocks of {type(model).__name__}")
    sites = [site for blocks in lists for block in blocks for site in sublayers(block, cfg.style)]
    model.requires_grad_(False)
    for parent, name in sites:
        base = parent.get_submodule(name)
        device = next(base.parameters(), next(model.parameters())).device
        adapter = Bottleneck(d, cfg).to(device=device, dtype=torch.float32)
        parent.register_module(name, AdapterWrapped(base, adapter))  # also replaces a ModuleList entry
    head = classifier_head(model)
    if head is not None:
        head.requires_grad_(True)
    model.bottleneck_adapter_config = cfg  # save() writes it beside the weights
    return model


def wrapped(model) -> dict[str, AdapterWrapped]:
    """Module name -> wrapper, for every adapter in `model`."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterWrapped)}


def disabled(model) -> contextlib.AbstractContextManager:
    """A context in which every adapter is skipped: the outputs are the base model's, bit for bit."""

    @contextlib.contextmanager
    def off():
        wrappers = list(wrapped(model).values())
        before = [w.enabled for w in wrappers]
        for w in wrappers:
            w.enabled = False
        try:
            yield model
        finally:
            for w, state in zip(wrappers, before):
                w.enabled = state

    return off()


def head_prefix(model) -> str | None:
    head = classifier_head(model)
    return next((n for n, m in model.named_modules() if m is head), None) if head is not None else None


def trained_tensors(model) -> dict[str, torch.Tensor]:
    """State-dict name -> tensor for the adapters and the classification head."""
    prefixes = [n + ".adapter." for n in wrapped(model)]
    if (head := head_prefix(model)) is not None:
        prefixes.append(head + ".")
    return {k: v for k, v in model.state_dict().items() if any(k.startswith(p) for p in prefixes)}


def _write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)  # readers never see half a file


def save(model, folder: Path) -> None:
    """Write the adapter (and head) weights and bottleneck_config.json to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in trained_tensors(model).items()}
    meta = {**model.bottleneck_adapter_config.model_dump(), "hidden_size": hidden_size(model),
            "wrapped": list(wrapped(model)), "head": head_prefix(model),
            "base_model_name_or_path": getattr(model.config, "name_or_path", "")}
    _write(folder / WEIGHTS, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    _write(folder / CONFIG, lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))


def load(base, folder: Path):
    """Insert the adapters saved in `folder` into `base` (a fresh base model) and return it."""
    folder = Path(folder)
    if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
        raise ModelError(f"{folder}: not a bottleneck adapter folder (needs {CONFIG} and {WEIGHTS})")
    meta = json.loads((folder / CONFIG).read_text())
    if meta["hidden_size"] != hidden_size(base):
        raise ModelError(f"{folder}: adapters were trained for hidden size {meta['hidden_size']}, "
                         f"but the base model {type(base).__name__} has hidden size {hidden_size(base)}")
    model = apply(base, Config(**{k: meta[k] for k in Config.model_fields if k in meta}))
    if list(wrapped(model)) != meta["wrapped"]:
        raise ModelError(f"{folder}: adapters were saved for a different architecture than {type(base).__name__}")
    saved, expected = load_file(str(folder / WEIGHTS)), trained_tensors(model)
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    bad = sorted(k for k in expected.keys() & saved.keys() if saved[k].shape != expected[k].shape)
    if missing or unexpected or bad:
        raise ModelError(f"{folder}: weights do not fit the base model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shape {bad[:3]})")
    with torch.no_grad():
        for k, t in expected.items():
            t.copy_(saved[k])  # state_dict tensors share storage with the parameters
    return model


register("adapter", Config, apply, save=save, load=load, disabled=disabled, mergeable=False, marker=CONFIG)
