"""The quantization methods of `tunelab quantize`: one table, each entry applying one library's method.

| method              | library      | bits | calibrated | runs on | saved as                                     |
|---------------------|--------------|------|------------|---------|----------------------------------------------|
| naive-<scheme> (12) | tunelab      | 8, 4 | no         | CPU/GPU | naive.safetensors (codes) + naive_quant.json |
| bnb-int8            | bitsandbytes | 8    | no         | CPU/GPU | safetensors + quantization_config            |
| bnb-nf4             | bitsandbytes | 4    | no         | CPU/GPU | safetensors + quantization_config            |
| torchao-int8        | torchao      | 8    | no         | CPU/GPU | safetensors + quantization_config            |
| torchao-int4        | torchao      | 4    | no         | CPU/GPU | safetensors (codes one per byte) + config    |
| torchao-int4-packed | torchao      | 4    | no         | GPU     | safetensors (tinygemm-packed) + config       |
| autoround-int4      | auto-round   | 4    | yes        | CPU/GPU | auto_round (GPTQ-style packed) + config      |

Library methods quantize through transformers' own loading path (the model is written to a temporary folder and
read back with a `quantization_config`), which is the one path those libraries support for saving and reloading:
their folders reload with plain `AutoModelForCausalLM.from_pretrained(folder)`. `load_quantized` picks the way.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from tunelab.compress import naive
from tunelab.config.options import Options, did_you_mean, opt
from tunelab.errors import ConfigError, ModelError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


# ---------------------------------------------------------------- the table's shape


@dataclass(frozen=True)
class Quantizer:
    """One quantization method.

    apply(model, tokenizer, *, calibration, options) -> model: the model quantized; it computes with the quantized
        weights. naive-* and autoround-int4 change `model` in place and return it; bnb-* and torchao-* return a new
        model and leave `model` as it was. Raises ConfigError for what the user can fix (no GPU, no calibration
        texts, a group size that does not divide a layer).
    save(model, tokenizer, folder): write what `apply` returned so that `load_quantized(folder)` reloads it.
    needs_gpu: it cannot run without an NVIDIA GPU. calibrated: it needs calibration texts.
    """

    name: str
    help: str
    needs_gpu: bool
    calibrated: bool
    bits: int
    library: str
    apply: Callable[..., Any]
    save: Callable[..., None]


# ---------------------------------------------------------------- options

NAIVE_METHODS = tuple(f"naive-{s}" for s in naive.SCHEMES)
LIBRARY_METHODS = ("bnb-int8", "bnb-nf4", "torchao-int8", "torchao-int4", "torchao-int4-packed", "autoround-int4")
METHOD_NAMES = NAIVE_METHODS + LIBRARY_METHODS


class QuantizeOptions(Options):
    """How to quantize a model: the method and its knobs (each method reads the ones it uses)."""

    method: Literal[METHOD_NAMES] = opt("bnb-nf4", "quantization method: naive-<scheme>, bnb-*, torchao-*, "
                                        "autoround-int4", aka=("quant_method", "quantization"))
    group_size: int = opt(naive.DEFAULT_GROUP_SIZE, "weights per scale along a row (naive-*-group, torchao-int4, "
                          "autoround-int4); must divide every layer's input width", ge=8, aka=("q_group_size",))
    calibration_samples: int = opt(16, "calibrated methods: text blocks to calibrate on", ge=1,
                                   aka=("nsamples", "num_calibration_samples"))
    calibration_seqlen: int = opt(128, "calibrated methods: tokens per calibration block", ge=16,
                                  aka=("seqlen", "max_seq_length"))
    iters: int = opt(20, "autoround: optimisation steps per transformer block (the library's default is 200; "
                     "20 keeps a 135M model to minutes on 2 CPU cores)", ge=1, aka=("iterations", "steps"))
    lr: float | None = opt(None, "autoround: learning rate of the rounding; unset: 1 / iters", gt=0)
    batch_size: int = opt(4, "calibrated methods: calibration blocks per step", ge=1)
    torch_compile: bool = opt(False, "autoround: compile the block being tuned (faster on a GPU, a long warm-up on "
                              "CPU, needs a C++ compiler)")
    double_quant: bool = opt(False, "bnb-nf4: quantize the block scales too (about 0.4 bit per weight less)")
    seed: int = opt(42, "calibrated methods: seed of the tuning", ge=0)


# ---------------------------------------------------------------- helpers


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _dtype(model) -> torch.dtype:
    return next(p for p in model.parameters() if p.is_floating_point()).dtype


def _need_gpu(name: str, why: str) -> None:
    """A ConfigError saying that method `name` needs a GPU (and `why`) when CUDA is not available."""
    if not torch.cuda.is_available():
        raise ConfigError(f"quantization method {name} needs an NVIDIA GPU ({why}) and none is available here; "
                          "on CPU use torchao-int4, bnb-nf4 or autoround-int4")


def _check_group_size(model, group_size: int, name: str) -> None:
    """A ConfigError naming the first layer whose input width `group_size` does not divide (the libraries
    otherwise skip that layer silently or fail deep inside)."""
    try:
        layers, _ = naive.linear_layers(model)
        naive._check_groups(layers, naive.Scheme("absmax", 4, "group", group_size))
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


@contextmanager
def _staged(model):
    """A temporary folder holding `model` as a plain checkpoint: what transformers quantizes while loading."""
    with tempfile.TemporaryDirectory(prefix="tunelab-quantize-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        yield tmp


def _reload(model, quantization_config, *, dtype: torch.dtype | None = None, device: torch.device | None = None):
    """`model` reloaded through transformers with `quantization_config`, on `device` in `dtype` (default: the
    model's own)."""
    from transformers import AutoModelForCausalLM

    device = device or _device(model)
    with _staged(model) as tmp:
        quantized = AutoModelForCausalLM.from_pretrained(
            tmp, quantization_config=quantization_config, dtype=dtype or _dtype(model),
            device_map={"": device.index or 0} if device.type == "cuda" else str(device))
    quantized.eval()
    return quantized


def _save_pretrained(model, tokenizer, folder) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def calibration_blocks(tokenizer, texts: Sequence[str], samples: int, seqlen: int) -> list[torch.Tensor]:
    """The calibration texts as up to `samples` blocks of `seqlen` token ids ([1, seqlen] each).

    The texts are joined (an EOS token between them) and cut into full blocks: calibrating libraries skip
    shorter samples, so short texts would otherwise be dropped one by one.

    Raises:
        ConfigError: the texts hold fewer than `seqlen` tokens.
    """
    ids: list[int] = []
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    for text in texts:
        ids += tokenizer.encode(text, add_special_tokens=False) + sep
        if len(ids) >= samples * seqlen:
            break
    blocks = min(samples, len(ids) // seqlen)
    if blocks == 0:
        raise ConfigError(f"the calibration texts hold {len(ids)} tokens, fewer than one block of "
                          f"calibration_seqlen={seqlen}; pass more texts or lower calibration_seqlen")
    return [torch.tensor(ids[i * seqlen:(i + 1) * seqlen]).unsqueeze(0) for i in range(blocks)]


# ---------------------------------------------------------------- naive


def _naive_apply(scheme: str):
    """The apply of naive scheme `scheme`: fake quant in place; the QuantReport is kept as `model.quantize_report`."""
    def apply(model, tokenizer, *, calibration=(), options: QuantizeOptions):
        model.quantize_report = naive.quantize_model(model, scheme, group_size=options.group_size)
        return model
    return apply


def _naive_save(model, tokenizer, folder) -> None:
    naive.save_naive(model, tokenizer, folder)


# ---------------------------------------------------------------- bitsandbytes


def _bnb_int8(model, tokenizer, *, calibration=(), options: QuantizeOptions):
    from transformers import BitsAndBytesConfig

    # LLM.int8: per-row absmax int8 weights; activation columns above the threshold (outliers) stay in 16 bits.
    _quiet_bnb_cast_warning()
    return _reload(model, BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0))


def _bnb_nf4(model, tokenizer, *, calibration=(), options: QuantizeOptions):
    from transformers import BitsAndBytesConfig

    # NF4: 4-bit codes on a normal-distribution grid, one absmax per 64 weights; computes in the model's dtype.
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=_dtype(model),
                                bnb_4bit_use_double_quant=options.double_quant)
    return _reload(model, config)


def _bnb_save(model, tokenizer, folder) -> None:
    _unpack_bnb_4bit_for_cpu(model)
    _save_pretrained(model, tokenizer, folder)


def _unpack_bnb_4bit_for_cpu(model) -> None:
    """Put 4-bit layers that bitsandbytes repacked for its CPU kernel back in the standard layout, scales intact.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight at its first forward pass and keeps
    its block scales (absmax) as a transposed [in / 64, out] bfloat16 matrix. Saving undoes the repacking but leaves
    that matrix transposed (without double quantization), so a model saved after any forward pass would reload with
    its scales scrambled. Here the repacking is undone first and the scales are put back in block order (float32
    holding the bfloat16 values the layer computed with, so the reloaded model computes the same). With double
    quantization bitsandbytes itself restores the scales, quantizing them again (about 1e-3 off in the logits).
    """
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        if state is None or not getattr(state, "packing_format_for_cpu", False):
            continue
        weight.data, state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
        if not state.nested and state.absmax.dim() == 2:
            state.absmax = state.absmax.t().reshape(-1).float().contiguous()
        weight.quant_state = state


def _quiet_bnb_cast_warning() -> None:
    # On CPU, LLM.int8 logs "inputs will be cast ... to float16" once per layer per forward; it is expected there.
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)


# ---------------------------------------------------------------- torchao


def _torchao_int8(model, tokenizer, *, calibration=(), options: QuantizeOptions):
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    # int8 weight-only, one symmetric scale per output row (PerRow); activations stay in float.
    return _reload(model, TorchAoConfig(Int8WeightOnlyConfig()))


def _torchao_int4(model, tokenizer, *, calibration=(), options: QuantizeOptions):
    from torchao.quantization import IntxWeightOnlyConfig, PerGroup
    from transformers import TorchAoConfig

    # torchao's CPU int4 in 0.18: Intx weight-only with int4 codes, one scale per group. Int4WeightOnlyConfig's
    # layouts need CUDA (tinygemm) or the mslk kernels, and its old CPU layout is gone. The codes are kept one per
    # byte (IntxUnpackedToInt8Tensor, the one intx form that saves to safetensors), so on disk this is int8-sized.
    _check_group_size(model, options.group_size, "torchao-int4")
    config = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(options.group_size))
    return _reload(model, TorchAoConfig(config))


def _torchao_int4_packed(model, tokenizer, *, calibration=(), options: QuantizeOptions):
    from torchao.quantization import Int4WeightOnlyConfig
    from transformers import TorchAoConfig

    _check_group_size(model, options.group_size, "torchao-int4-packed")
    config = Int4WeightOnlyConfig(group_size=options.group_size, int4_packing_format="tile_packed_to_4d")
    # tinygemm computes in bfloat16 only
    return _reload(model, TorchAoConfig(config), dtype=torch.bfloat16, device=torch.device("cuda", 0))


# ---------------------------------------------------------------- auto-round (SignRound)


def _autoround_int4(model, tokenizer, *, calibration=(), options: QuantizeOptions):
    try:
        from auto_round import AutoRound, SignRoundConfig
    except ImportError:
        raise ConfigError("autoround-int4 needs the auto-round package: pip install auto-round==0.16.1") from None
    _check_group_size(model, options.group_size, "autoround-int4")
    blocks = calibration_blocks(tokenizer, calibration, options.calibration_samples, options.calibration_seqlen)
    # SignRound: per transformer block, tune the rounding direction (a learnt offset in [-0.5, 0.5] per weight) and
    # the clipping range of each group, so the block's output on the calibration inputs matches the float block's.
    algorithm = SignRoundConfig(iters=options.iters, lr=options.lr, bits=4, group_size=options.group_size, sym=True)
    device = _device(model)
    compressor = AutoRound(model, tokenizer, alg_configs=algorithm, dataset=blocks, nsamples=len(blocks),
                           seqlen=options.calibration_seqlen, batch_size=min(options.batch_size, len(blocks)),
                           device_map="cpu" if device.type == "cpu" else str(device),
                           enable_torch_compile=options.torch_compile, seed=options.seed)
    # In place: where the CPU computes bfloat16 natively, auto-round first casts the model to bfloat16 (its mixed
    # precision), so the model returned (and saved) is bfloat16; the weights are then quantize-dequantized.
    quantized, _ = compressor.quantize()
    quantized.eval()
    quantized._autoround = compressor  # save() packs through it
    return quantized


def _autoround_save(model, tokenizer, folder) -> None:
    compressor = getattr(model, "_autoround", None)
    if compressor is None:
        raise ConfigError("autoround-int4: this model was not quantized by autoround-int4 in this process; "
                          "apply the method first, then save")
    folder = Path(folder)
    # auto_round format with GPTQ-style packing (int4 codes 8 to an int32, fp16 scales); transformers reloads it
    # through AutoRoundConfig with auto-round's pure-torch kernel on CPU. inplace=False keeps the in-memory model.
    compressor.save_quantized(str(folder), format="auto_round", inplace=False)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------- the table


def _guarded(name: str, gpu: str, calibrated: bool, apply: Callable) -> Callable:
    """`apply` preceded by the checks every method shares: a GPU when it needs one (`gpu` says why), calibration
    texts when it is calibrated."""
    def run(model, tokenizer, *, calibration: Sequence[str] = (), options: QuantizeOptions | None = None):
        options = options or QuantizeOptions(method=name)
        if calibrated and not calibration:
            raise ConfigError(f"{name} is calibrated: pass calibration texts (a few dozen paragraphs like the data "
                              "the model will see)")
        if gpu:
            _need_gpu(name, gpu)
        return apply(model, tokenizer, calibration=list(calibration), options=options)
    return run


def _entry(name, help, apply, save, *, bits, library, gpu="", calibrated=False) -> Quantizer:
    return Quantizer(name, help, bool(gpu), calibrated, bits, library, _guarded(name, gpu, calibrated, apply), save)


def _naive_help(scheme: str) -> str:
    method, bits, granularity = scheme.split("-")
    how = {"absmax": "symmetric absmax", "zeropoint": "asymmetric zero-point"}[method]
    per = {"tensor": "one scale per tensor", "channel": "one scale per output row",
           "group": "one scale per group_size columns"}[granularity]
    return f"{how} {bits}, {per}; round to nearest (tunelab's own code)"


QUANTIZERS: dict[str, Quantizer] = {
    **{f"naive-{s}": _entry(f"naive-{s}", _naive_help(s), _naive_apply(s), _naive_save, bits=int(s.split("-")[1][3:]),
                            library="tunelab") for s in naive.SCHEMES},
    "bnb-int8": _entry("bnb-int8", "bitsandbytes LLM.int8: int8 rows, outlier activations kept in 16 bits",
                       _bnb_int8, _bnb_save, bits=8, library="bitsandbytes"),
    "bnb-nf4": _entry("bnb-nf4", "bitsandbytes NF4 (QLoRA's 4-bit normal float), absmax per 64 weights",
                      _bnb_nf4, _bnb_save, bits=4, library="bitsandbytes"),
    "torchao-int8": _entry("torchao-int8", "torchao int8 weight-only, one scale per output row",
                           _torchao_int8, _save_pretrained, bits=8, library="torchao"),
    "torchao-int4": _entry("torchao-int4", "torchao int4 weight-only per group (runs on CPU; codes saved one per "
                           "byte)", _torchao_int4, _save_pretrained, bits=4, library="torchao"),
    "torchao-int4-packed": _entry("torchao-int4-packed", "torchao int4 weight-only per group, packed for the "
                                  "tinygemm CUDA kernels (bf16)", _torchao_int4_packed, _save_pretrained, bits=4,
                                  library="torchao", gpu="torchao's tinygemm int4 kernels run on CUDA, compute "
                                  "capability 8.0 or newer"),
    "autoround-int4": _entry("autoround-int4", "Intel AutoRound (SignRound): int4 per group, rounding tuned on "
                             "calibration texts", _autoround_int4, _autoround_save, bits=4, library="auto-round",
                             calibrated=True),
}
assert tuple(QUANTIZERS) == METHOD_NAMES


def get_quantizer(name: str) -> Quantizer:
    """The method named `name`.

    Raises:
        ConfigError: no such method (the message lists them).
    """
    if name not in QUANTIZERS:
        raise ConfigError(f"quantization method {name!r} is not known; choose one of {', '.join(QUANTIZERS)}"
                          f"{did_you_mean(name, list(QUANTIZERS))}")
    return QUANTIZERS[name]


def quantize(model, tokenizer, options: QuantizeOptions | None = None, *, calibration: Sequence[str] = ()):
    """(quantized model, seconds it took) by `options.method`; see Quantizer.apply.

    Raises:
        ConfigError: a method needing a GPU on a machine without one, a calibrated method without texts, a group
            size that does not divide a layer.
    """
    options = options or QuantizeOptions()
    start = time.perf_counter()
    quantized = get_quantizer(options.method).apply(model, tokenizer, calibration=calibration, options=options)
    return quantized, time.perf_counter() - start


# ---------------------------------------------------------------- loading and sizes


def load_quantized(folder: str | Path, dtype: torch.dtype | None = None, device_map: str | dict | None = None):
    """(model, tokenizer) from a folder any method here saved (or a plain model folder).

    naive folders (naive_quant.json) load through `naive.load_naive`; the others through plain
    `AutoModelForCausalLM.from_pretrained`, which reads the `quantization_config` in config.json.

    Args:
        dtype: the compute dtype (default: the dtype saved).
        device_map: where to put the model (default: the first GPU for a GPU-only format, else CPU).
    Raises:
        ModelError: the folder holds no model, its method's library is not installed, or its format needs a GPU
            and there is none.
    """
    from transformers import AutoModelForCausalLM

    from tunelab.models import load_tokenizer

    folder = Path(folder)
    if naive.is_naive(folder):
        return naive.load_naive(folder, dtype)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{folder}: no config.json; expected a folder written by `tunelab quantize`")
    method = (json.loads(config_file.read_text()).get("quantization_config") or {}).get("quant_method")
    needs = {"bitsandbytes": ("bitsandbytes", "bitsandbytes"), "torchao": ("torchao", "torchao"),
             "auto-round": ("auto_round", "auto-round==0.16.1")}
    if method in needs:
        module, package = needs[method]
        try:
            __import__(module)
        except ImportError:
            raise ModelError(f"{folder}: quantized with {method}; install it to load: pip install {package}") from None
    gpu_only = method == "torchao" and _gpu_only_checkpoint(folder)
    if gpu_only and not torch.cuda.is_available():
        raise ModelError(f"{folder}: its int4 weights are packed for torchao's CUDA kernels (torchao-int4-packed); "
                         "load it on a machine with an NVIDIA GPU, or quantize with torchao-int4 for CPU")
    if device_map is None:
        device_map = {"": 0} if gpu_only else "cpu"
    if method == "bitsandbytes":
        _quiet_bnb_cast_warning()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype or "auto", device_map=device_map)
    model.eval()
    return model, load_tokenizer(folder)


def _gpu_only_checkpoint(folder: Path) -> bool:
    """Whether the folder's torchao tensors are a GPU-only layout (tinygemm-packed int4)."""
    from safetensors import safe_open

    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            if "Int4TilePackedTo4dTensor" in json.dumps(f.metadata() or {}):
                return True
    return False


def model_size_bytes(folder: str | Path) -> int:
    """Bytes of the weight files in `folder` (safetensors, bin, pt, gguf), config and tokenizer not counted."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
