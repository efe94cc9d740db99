"""Round-to-nearest integer quantization written out in full: the baseline every other method is measured against.

Two ways to map a float weight w to a b-bit integer code q, with one float `scale` s per block of weights:

absmax (symmetric): qmax = 2^(b-1) - 1 (127 for int8, 7 for int4),
    s = max|w| / qmax,  q = round(w / s) in [-qmax, qmax],  w ~ s * q.
    Zero is exact and no zero point is stored; one code (-128 / -8) is left unused so the grid is symmetric.
zero-point (asymmetric): levels = 2^b - 1 (255 / 15), the range [min, max] widened to hold 0,
    s = (max - min) / levels,  z = round(-min / s),  q = clamp(round(w / s) + z, 0, levels),  w ~ s * (q - z).
    All 2^b codes cover the actual range, which helps when a block is lopsided (all its weights positive, say).

Either way a weight that is not clamped is off by at most s / 2 (the rounding step). The block a scale covers is
the granularity: the whole tensor, one output row of an nn.Linear weight [out, in] (per channel), or `group_size`
consecutive input columns of one row (per group). Smaller blocks give smaller scales, hence smaller errors, at the
cost of one more scale (and zero point) per block.

The model in memory keeps computing in floating point with the dequantized weights s * (q - z) ("fake quant"), so
its perplexity shows the quantization error alone; `save_naive` writes the integer codes (int4 packed two to a
byte), which is where the size on disk shrinks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from tunelab.config.options import did_you_mean
from tunelab.errors import ConfigError, ModelError

METHODS = ("absmax", "zeropoint")
BITS = (8, 4)
GRANULARITIES = ("tensor", "channel", "group")
SCHEMES = tuple(f"{m}-int{b}-{g}" for m in METHODS for b in BITS for g in GRANULARITIES)
DEFAULT_GROUP_SIZE = 64  # divides the widths of most small models (576, 960, 1536, 2048...); 128 does not divide 576

WEIGHTS_FILE = "naive.safetensors"  # not model.safetensors: plain from_pretrained must not mistake codes for weights
SCHEME_FILE = "naive_quant.json"
FORMAT_VERSION = 1


# ---------------------------------------------------------------- schemes


@dataclass(frozen=True)
class Scheme:
    """How to quantize: method (absmax | zeropoint), bits (8 | 4), granularity (tensor | channel | group), group size.

    `group_size` only matters for granularity "group".
    """

    method: str
    bits: int
    granularity: str
    group_size: int = DEFAULT_GROUP_SIZE

    @property
    def name(self) -> str:
        """The scheme's name, e.g. `absmax-int8-channel` (the group size is kept apart)."""
        return f"{self.method}-int{self.bits}-{self.granularity}"

    @property
    def symmetric(self) -> bool:
        return self.method == "absmax"

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1


def parse_scheme(name: str, group_size: int = DEFAULT_GROUP_SIZE) -> Scheme:
    """The Scheme named `name` (`absmax-int8-channel`, `zeropoint-int4-group`; a `naive-` prefix is allowed).

    Raises:
        ConfigError: a word of the name is not known (the message names it and the allowed words),
            or group_size is not positive.
    """
    text = str(name).strip().lower()
    text = text[len("naive-"):] if text.startswith("naive-") else text
    words = text.split("-")
    if len(words) != 3:
        raise ConfigError(f"quantization scheme {name!r}: expected METHOD-BITS-GRANULARITY such as "
                          f"absmax-int8-channel; choose one of {', '.join(SCHEMES)}{did_you_mean(text, list(SCHEMES))}")
    method, bits, granularity = words
    allowed = {"method": (method, METHODS), "bits": (bits, tuple(f"int{b}" for b in BITS)),
               "granularity": (granularity, GRANULARITIES)}
    for part, (word, choices) in allowed.items():
        if word not in choices:
            raise ConfigError(f"quantization scheme {name!r}: {part} {word!r} is not known; choose one of "
                              f"{', '.join(choices)}{did_you_mean(word, list(choices))}")
    if group_size < 1:
        raise ConfigError(f"quantization scheme {name!r}: group_size must be a positive number of columns, "
                          f"got {group_size}")
    return Scheme(method, int(bits[3:]), granularity, group_size)


def _as_scheme(scheme: Scheme | str, group_size: int | None) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme if group_size is None else Scheme(scheme.method, scheme.bits, scheme.granularity, group_size)
    return parse_scheme(scheme, DEFAULT_GROUP_SIZE if group_size is None else group_size)


# ---------------------------------------------------------------- one tensor


def _blocks(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """`w` [out, in] viewed as [rows, blocks, block_size]: the last axis is what one scale covers.

    tensor: [1, 1, out*in]; channel: [out, 1, in]; group: [out, in / group_size, group_size].
    """
    out, inp = w.shape
    if scheme.granularity == "tensor":
        return w.reshape(1, 1, out * inp)
    if scheme.granularity == "channel":
        return w.reshape(out, 1, inp)
    if inp % scheme.group_size:
        raise ConfigError(f"group_size {scheme.group_size} does not divide the {inp} input columns of this weight; "
                          "choose a group size that divides it")
    return w.reshape(out, inp // scheme.group_size, scheme.group_size)


@dataclass
class QuantizedTensor:
    """One weight quantized: integer codes and the per-block scale (and zero point) that map them back to floats.

    codes: the weight's shape [out, in]; int8 for absmax (values in [-qmax, qmax]), uint8 for zero-point
        (values in [0, 2^b - 1]). In memory one code per byte even for int4; `pack_int4` puts two in a byte for saving.
    scale: float32 [rows, blocks] (see `_blocks`): [1, 1] per tensor, [out, 1] per channel, [out, in / g] per group.
    zero: uint8 like `scale` for zero-point, None for absmax.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    shape: tuple[int, ...]
    scheme: Scheme

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """s * (q - z) in float32, then cast to `dtype` (the same steps in memory and after loading: identical)."""
        q = _blocks(self.codes.float(), self.scheme)
        if self.zero is not None:
            q.sub_(self.zero.float().unsqueeze(-1))
        return q.mul_(self.scale.unsqueeze(-1)).reshape(self.shape).to(dtype)

    @property
    def nbytes(self) -> int:
        """Bytes as saved: codes (half a byte each for int4), float32 scales, uint8 zero points."""
        codes = math.ceil(self.codes.numel() * self.scheme.bits / 8)
        return codes + self.scale.numel() * 4 + (0 if self.zero is None else self.zero.numel())

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors to save under `prefix` (`<layer>.weight`): codes (int4 packed), scale, zero."""
        codes = pack_int4(self.codes, self.scheme) if self.scheme.bits == 4 else self.codes
        out = {f"{prefix}.codes": codes.contiguous(), f"{prefix}.scale": self.scale.contiguous()}
        if self.zero is not None:
            out[f"{prefix}.zero"] = self.zero.contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str, shape: tuple[int, ...],
                     scheme: Scheme) -> QuantizedTensor:
        """The inverse of `tensors`."""
        codes = tensors[f"{prefix}.codes"]
        if scheme.bits == 4:
            codes = unpack_int4(codes, math.prod(shape), scheme).reshape(shape)
        return cls(codes, tensors[f"{prefix}.scale"], tensors.get(f"{prefix}.zero"), tuple(shape), scheme)


def quantize_tensor(w: torch.Tensor, scheme: Scheme) -> QuantizedTensor:
    """Quantize a 2-D weight [out, in] with `scheme` (the arithmetic of the module docstring, in float32).

    Raises:
        ConfigError: granularity "group" and group_size does not divide `in`.
    """
    if w.ndim != 2:
        raise ValueError(f"expected a 2-D weight [out, in], got shape {tuple(w.shape)}")
    x = _blocks(w.detach().float(), scheme)  # [rows, blocks, block_size]
    ones = x.new_ones(x.shape[:-1])
    if scheme.symmetric:
        scale = x.abs().amax(-1) / scheme.qmax  # [rows, blocks]
        scale = torch.where(scale > 0, scale, ones)  # an all-zero block: any scale gives codes 0
        zero = None
        q = (x / scale.unsqueeze(-1)).round_()
    else:
        lo, hi = x.amin(-1).clamp(max=0), x.amax(-1).clamp(min=0)  # widened to hold 0, so 0.0 stays exact
        scale = torch.where(hi > lo, (hi - lo) / scheme.qmax, ones)
        zero = torch.round(-lo / scale).clamp(0, scheme.qmax)  # the code that stands for 0.0
        q = (x / scale.unsqueeze(-1)).round_().add_(zero.unsqueeze(-1))
    # absmax: |w / s| <= qmax already, the clamp only guards float rounding. zero-point: w / s and z are rounded
    # separately, so the top of the range can land one step past 2^b - 1 (when both round up); it is clamped there
    # (an error up to s, not s / 2).
    q = q.clamp_(scheme.qmin, scheme.qmax).reshape(w.shape)
    codes = q.to(torch.int8 if scheme.symmetric else torch.uint8)
    return QuantizedTensor(codes, scale, None if zero is None else zero.to(torch.uint8), tuple(w.shape), scheme)


def pack_int4(codes: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """int4 codes (one per byte) -> uint8, two per byte: element 2i in the low nibble, 2i+1 in the high one.

    Absmax codes in [-7, 7] are stored offset by 8 (so in [1, 15]); an odd count is padded with one code.
    """
    flat = codes.flatten().to(torch.int16) + (8 if scheme.symmetric else 0)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] | (flat[1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, count: int, scheme: Scheme) -> torch.Tensor:
    """The inverse of `pack_int4`: `count` codes, flat, int8 (absmax) or uint8 (zero-point)."""
    p = packed.to(torch.int16)
    flat = torch.stack([p & 0xF, p >> 4], dim=1).flatten()[:count]
    if scheme.symmetric:
        return (flat - 8).to(torch.int8)
    return flat.to(torch.uint8)


# ---------------------------------------------------------------- a model


@dataclass
class QuantReport:
    """What `quantize_model` did: the layers, their weight bytes before and after, and the error it made.

    bytes_before: the quantized layers' weights in the dtype they had; bytes_after: codes + scales + zero points.
    relative_error: ||w - w_hat|| / ||w|| over all quantized weights; max_abs_error: the largest |w - w_hat|.
    layers: per layer, its relative error.
    """

    scheme: str
    group_size: int | None
    params: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    relative_error: float = 0.0
    max_abs_error: float = 0.0
    skipped: list[str] = field(default_factory=list)
    layers: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """bytes_before / bytes_after."""
        return self.bytes_before / max(self.bytes_after, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 3)}


def _tied_head(model: nn.Module) -> nn.Module | None:
    """The output projection when it shares its weight with the input embeddings, else None."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and emb is not None and head.weight is emb.weight:
        return head
    return None


def linear_layers(model: nn.Module) -> tuple[dict[str, nn.Linear], list[str]]:
    """(the nn.Linear layers to quantize by name, the names left alone).

    Every nn.Linear is quantized except an output head tied to the input embeddings: its weight *is* the embedding
    table, which this scheme leaves in floating point (quantizing it would quantize the embeddings too). An untied
    head is an ordinary projection and is quantized like the rest. Embeddings and norms are not nn.Linear.
    """
    tied = _tied_head(model)
    layers, skipped = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is tied:
            skipped.append(name)
        elif isinstance(module, nn.Linear):
            layers[name] = module
    if not layers:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layers to quantize")
    return layers, skipped


def _check_groups(layers: dict[str, nn.Linear], scheme: Scheme) -> None:
    if scheme.granularity != "group":
        return
    for name, layer in layers.items():
        if layer.in_features % scheme.group_size:
            widths = math.gcd(*(m.in_features for m in layers.values()))
            fits = [g for g in (256, 128, 64, 32, 16) if widths % g == 0][:2]
            hint = f" (e.g. {' or '.join(map(str, fits))})" if fits else ""
            raise ConfigError(f"group_size {scheme.group_size} does not divide the {layer.in_features} input "
                              f"columns of {name}; choose a group size that divides every layer's input width{hint}")


@torch.no_grad()
def quantize_model(model: nn.Module, scheme: Scheme | str, *, group_size: int | None = None) -> QuantReport:
    """Quantize every nn.Linear weight of `model` in place (fake quant) and keep the codes for `save_naive`.

    After this call each quantized layer computes with its dequantized weight s * (q - z) in the layer's dtype, so
    the model runs (and can be evaluated) as before, with the quantization error alone.

    Args:
        scheme: a Scheme or its name (`absmax-int8-channel`...).
        group_size: columns per group for granularity "group" (default 64; overrides the Scheme's).
    Returns:
        A QuantReport (bytes before / after, relative and maximum error, per-layer error).
    Raises:
        ConfigError: a bad scheme name, or a group size that does not divide a layer's input width.
        ModelError: the model has no nn.Linear layers.
    """
    scheme = _as_scheme(scheme, group_size)
    layers, skipped = linear_layers(model)
    _check_groups(layers, scheme)
    report = QuantReport(scheme.name, scheme.group_size if scheme.granularity == "group" else None, skipped=skipped)
    codes: dict[str, QuantizedTensor] = {}
    err2 = norm2 = 0.0
    for name, layer in layers.items():
        w = layer.weight
        qt = quantize_tensor(w, scheme)
        w_hat = qt.dequantize(w.dtype)
        diff = w.float() - w_hat.float()
        err, norm = float(torch.linalg.vector_norm(diff)), float(torch.linalg.vector_norm(w.float()))
        err2, norm2 = err2 + err * err, norm2 + norm * norm
        report.layers[name] = round(err / max(norm, 1e-12), 6)
        report.max_abs_error = max(report.max_abs_error, float(torch.linalg.vector_norm(diff, ord=float("inf"))))
        report.params += w.numel()
        report.bytes_before += w.numel() * w.element_size()
        report.bytes_after += qt.nbytes
        w.copy_(w_hat)
        codes[name + ".weight"] = qt
    report.relative_error = round(math.sqrt(err2 / max(norm2, 1e-30)), 6)
    # Kept on the model so save_naive writes these exact codes (re-deriving them from w_hat could move a scale by
    # one float ulp and break the exact round trip).
    model._naive_codes = codes
    model._naive_scheme = scheme
    return report


# ---------------------------------------------------------------- save and load


def save_naive(model: nn.Module, tokenizer, folder: str | Path, scheme: Scheme | str | None = None, *,
               group_size: int | None = None) -> Path:
    """Write a naive-quantized model: codes, scales and zero points in safetensors, plus config and tokenizer.

    Files: naive.safetensors (the codes of each quantized layer as `<name>.weight.codes/.scale/.zero`, int4
    packed; every other tensor (embeddings, norms, biases) as is), config.json, the tokenizer, naive_quant.json
    (the scheme, group size and each layer's shape). Tied weights are written once.

    Args:
        scheme: the scheme, if the model was not quantized by `quantize_model` yet (then it is, in place).
    Returns:
        The folder.
    Raises:
        ConfigError: no scheme was given for a model not yet quantized, or one that differs from the model's.
    """
    from safetensors.torch import save_file

    kept: Scheme | None = getattr(model, "_naive_scheme", None)
    if kept is None:
        if scheme is None:
            raise ConfigError("save_naive: this model was not quantized yet; pass the scheme to quantize it with")
        quantize_model(model, scheme, group_size=group_size)
        kept = model._naive_scheme
    elif scheme is not None and _as_scheme(scheme, group_size) != kept:
        raise ConfigError(f"save_naive: the model was quantized with {kept.name} (group {kept.group_size}), "
                          f"not {_as_scheme(scheme, group_size).name}; quantize a fresh copy to save another scheme")
    codes: dict[str, QuantizedTensor] = model._naive_codes
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # a tied weight: written once, tied again on load
            continue
        seen.add(tensor.data_ptr())
        if name in codes:
            tensors.update(codes[name].tensors(name))
        else:
            tensors[name] = tensor.detach().cpu().contiguous()
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "tunelab": "naive"})
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    meta = {"format": "tunelab-naive", "version": FORMAT_VERSION, "scheme": kept.name, "method": kept.method,
            "bits": kept.bits, "granularity": kept.granularity,
            "group_size": kept.group_size if kept.granularity == "group" else None,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "layers": {name: list(qt.shape) for name, qt in codes.items()}}
    (folder / SCHEME_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return folder


def is_naive(folder: str | Path) -> bool:
    """Whether `folder` holds a model written by `save_naive`."""
    return (Path(folder) / SCHEME_FILE).is_file()


def load_naive(folder: str | Path, dtype: torch.dtype | None = None):
    """(model, tokenizer) from a `save_naive` folder, the weights dequantized into a plain transformers model.

    Args:
        dtype: the dtype to compute in (default: the dtype the model was saved from). Loaded in the saved dtype,
            the logits equal the in-memory fake-quant model's exactly.
    Raises:
        ModelError: the folder is not a naive-quantized model or its files are incomplete.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunelab.models import load_tokenizer

    folder = Path(folder)
    if not is_naive(folder) or not (folder / WEIGHTS_FILE).is_file():
        raise ModelError(f"{folder}: not a naive-quantized model ({SCHEME_FILE} and {WEIGHTS_FILE} are expected); "
                         "write one with `tunelab quantize --method naive-...`")
    meta = json.loads((folder / SCHEME_FILE).read_text())
    scheme = Scheme(meta["method"], meta["bits"], meta["granularity"], meta.get("group_size") or DEFAULT_GROUP_SIZE)
    dtype = dtype or getattr(torch, meta.get("dtype") or "float32")
    tensors = load_file(str(folder / WEIGHTS_FILE))
    state: dict[str, torch.Tensor] = {}
    for name, shape in meta["layers"].items():
        try:
            qt = QuantizedTensor.from_tensors(tensors, name, tuple(shape), scheme)
        except KeyError as e:
            raise ModelError(f"{folder / WEIGHTS_FILE}: the codes of {name} are missing ({e})") from None
        state[name] = qt.dequantize(dtype)
        for suffix in ("codes", "scale", "zero"):
            tensors.pop(f"{name}.{suffix}", None)
    state.update({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()})
    config = AutoConfig.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and _tied_head(model) is not None}
    if unexpected or set(missing) - tied:
        raise ModelError(f"{folder}: the saved tensors do not match the model (missing {sorted(set(missing) - tied)}, "
                         f"unexpected {sorted(unexpected)})")
    model.tie_weights()
    model.eval()
    return model, load_tokenizer(folder)
