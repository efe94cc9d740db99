"""The quantization method table: each method that runs on CPU quantizes a tiny model, saves it and reloads it with
the quantized logits, close to the float ones; GPU-only and calibrated methods refuse clearly what they cannot do.

Tolerances, measured on the tiny model (logits up to about 1.4) over four seeds: the largest |logit difference| to
the float model was 0.0073 for the 8-bit methods and 0.079 for the 4-bit ones (group 32); the bounds below leave
about 2.5x room for other seeds and library versions.
"""

from __future__ import annotations

import pytest
import torch

from tunelab.compress import quantizers as qz
from tunelab.compress.quantizers import (
    QUANTIZERS,
    QuantizeOptions,
    calibration_blocks,
    get_quantizer,
    load_quantized,
    model_size_bytes,
    quantize,
)
from tunelab.errors import ConfigError, ModelError
from tunelab.models import tiny_llama

IDS = torch.tensor([list(range(3, 259, 6))])
TOLERANCE = {8: 0.02, 4: 0.2}
TEXTS = [f"Paragraph {i}: the quick brown fox jumps over the lazy dog, and the dog does not mind. " * 3
         for i in range(12)]


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS.to(next(model.parameters()).device)).logits.float().cpu()


CPU_METHODS = ["naive-absmax-int8-channel", "naive-zeropoint-int4-group", "bnb-int8", "bnb-nf4", "torchao-int8",
               "torchao-int4"]


@pytest.mark.parametrize("name", CPU_METHODS)
def test_a_cpu_method_quantizes_saves_and_reloads(name, tmp_path):
    model, tokenizer = tiny_llama()
    model.eval()
    before = logits(model)
    quantized, seconds = quantize(model, tokenizer, QuantizeOptions(method=name, group_size=32))
    after = logits(quantized)
    bits = QUANTIZERS[name].bits
    assert torch.isfinite(after).all() and seconds >= 0
    assert 0 < (after - before).abs().max() <= TOLERANCE[bits]
    QUANTIZERS[name].save(quantized, tokenizer, tmp_path)
    reloaded, tok = load_quantized(tmp_path)
    assert torch.allclose(logits(reloaded), after, atol=1e-5)
    assert tok.encode("hi") == tokenizer.encode("hi")
    assert model_size_bytes(tmp_path) > 0


def test_bnb_nf4_saved_after_a_forward_pass_reloads_with_the_same_logits(tmp_path):
    # bitsandbytes repacks 4-bit layers for its CPU kernel at the first forward pass; saving must undo it intact
    model, tokenizer = tiny_llama(hidden=128)  # 256 input columns in down_proj: several scale blocks per row
    quantized, _ = quantize(model, tokenizer, QuantizeOptions(method="bnb-nf4"))
    first = logits(quantized)
    QUANTIZERS["bnb-nf4"].save(quantized, tokenizer, tmp_path)
    assert torch.equal(logits(quantized), first)
    assert torch.equal(logits(load_quantized(tmp_path)[0]), first)


@pytest.mark.parametrize("name", ["bnb-int8", "bnb-nf4", "torchao-int8", "torchao-int4"])
def test_library_folders_reload_with_plain_from_pretrained(name, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny_llama()
    quantized, _ = quantize(model, tokenizer, QuantizeOptions(method=name, group_size=32))
    expected = logits(quantized)
    QUANTIZERS[name].save(quantized, tokenizer, tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert torch.allclose(logits(plain), expected, atol=1e-5)


def test_4bit_folders_are_smaller_than_8bit_ones(tmp_path):
    sizes = {}
    for name in ("naive-absmax-int8-channel", "naive-absmax-int4-group", "bnb-int8", "bnb-nf4"):
        model, tokenizer = tiny_llama(hidden=128)
        quantized, _ = quantize(model, tokenizer, QuantizeOptions(method=name, group_size=32))
        QUANTIZERS[name].save(quantized, tokenizer, tmp_path / name)
        sizes[name] = model_size_bytes(tmp_path / name)
    assert sizes["naive-absmax-int4-group"] < sizes["naive-absmax-int8-channel"]
    assert sizes["bnb-nf4"] < sizes["bnb-int8"]


def test_calibrated_autoround_quantizes_saves_and_reloads_on_cpu(tmp_path):
    pytest.importorskip("auto_round")
    model, tokenizer = tiny_llama()
    model.eval()
    before = logits(model)
    options = QuantizeOptions(method="autoround-int4", group_size=32, iters=2, calibration_samples=4,
                              calibration_seqlen=32, batch_size=4)
    quantized, _ = quantize(model, tokenizer, options, calibration=TEXTS)
    after = logits(quantized)
    assert torch.isfinite(after).all() and 0 < (after - before).abs().max() <= TOLERANCE[4]
    QUANTIZERS["autoround-int4"].save(quantized, tokenizer, tmp_path)
    reloaded, _ = load_quantized(tmp_path, dtype=torch.float32)
    assert "QuantLinear" in type(reloaded.model.layers[0].mlp.up_proj).__name__  # packed int4, not dequantized
    # packing stores the scales in float16 and the reload computes in float32: close, not equal
    assert (logits(reloaded) - after).abs().max() < 0.02


# ---------------------------------------------------------------- refusals


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_a_gpu_method_on_cpu_says_it_needs_a_gpu():
    gpu_only = [q for q in QUANTIZERS.values() if q.needs_gpu]
    assert [q.name for q in gpu_only] == ["torchao-int4-packed"]
    model, tokenizer = tiny_llama()
    with pytest.raises(ConfigError, match=r"torchao-int4-packed needs an NVIDIA GPU .*on CPU use"):
        quantize(model, tokenizer, QuantizeOptions(method="torchao-int4-packed", group_size=32))


def test_a_calibrated_method_without_texts_asks_for_them():
    model, tokenizer = tiny_llama()
    with pytest.raises(ConfigError, match="autoround-int4 is calibrated: pass calibration texts"):
        quantize(model, tokenizer, QuantizeOptions(method="autoround-int4"))


def test_too_little_calibration_text_says_how_much_is_needed():
    _, tokenizer = tiny_llama()
    with pytest.raises(ConfigError, match="fewer than one block of calibration_seqlen=256"):
        calibration_blocks(tokenizer, ["short"], samples=4, seqlen=256)
    blocks = calibration_blocks(tokenizer, TEXTS, samples=4, seqlen=64)
    assert len(blocks) == 4 and all(b.shape == (1, 64) for b in blocks)
    one_text = len(TEXTS[0]) + 1  # byte tokens, then the EOS between texts
    assert len(calibration_blocks(tokenizer, TEXTS[:1], samples=100, seqlen=64)) == one_text // 64


def test_a_group_size_that_does_not_divide_a_layer_is_refused_before_the_library_runs():
    model, tokenizer = tiny_llama()
    with pytest.raises(ConfigError, match=r"torchao-int4: group_size 48 does not divide"):
        quantize(model, tokenizer, QuantizeOptions(method="torchao-int4", group_size=48))


def test_unknown_methods_are_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean bnb-nf4"):
        get_quantizer("bnb-nf5")
    with pytest.raises(ConfigError, match="method: 'bnb-nf5' is not allowed"):
        QuantizeOptions(method="bnb-nf5")


def test_the_table_is_complete_and_consistent():
    assert tuple(QUANTIZERS) == qz.METHOD_NAMES
    assert len([n for n in QUANTIZERS if n.startswith("naive-")]) == 12
    for name, q in QUANTIZERS.items():
        assert q.name == name and q.help and q.bits in (4, 8)
        assert q.calibrated == (name == "autoround-int4")


def test_load_quantized_loads_a_plain_folder_and_refuses_an_empty_one(tiny_model_dir, tmp_path):
    model, tokenizer = load_quantized(tiny_model_dir)
    assert torch.isfinite(logits(model)).all() and tokenizer.pad_token is not None
    with pytest.raises(ModelError, match="no config.json"):
        load_quantized(tmp_path)


def test_model_size_bytes_counts_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.gguf").write_bytes(b"x" * 10)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}" * 50)
    assert model_size_bytes(tmp_path) == 110
