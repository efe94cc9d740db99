"""Naive quantization: each scheme's error stays within half a step, finer granularity errs less, int4 codes pack
two to a byte and back, a saved model reloads with exactly the in-memory fake-quant logits, bad names are refused."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.compress import naive
from tunelab.compress.naive import (
    SCHEMES,
    QuantizedTensor,
    load_naive,
    pack_int4,
    parse_scheme,
    quantize_model,
    quantize_tensor,
    save_naive,
    unpack_int4,
)
from tunelab.errors import ConfigError, ModelError
from tunelab.models import load_model, tiny_llama

IDS = torch.tensor([[1, 40, 72, 101, 108, 108, 111, 2, 50, 60]])


def uneven(rows: int = 16, cols: int = 64, seed: int = 0) -> torch.Tensor:
    """A weight whose rows differ in magnitude by up to 1000x (as real layers' rows do, less extremely)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.logspace(-3, 0, rows).unsqueeze(1)


def per_element(qt: QuantizedTensor, t: torch.Tensor) -> torch.Tensor:
    """A per-block tensor (scale or zero) spread over the weight's elements."""
    blocks = naive._blocks(qt.codes.float(), qt.scheme)
    return t.float().unsqueeze(-1).expand_as(blocks).reshape(qt.shape)


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


# ---------------------------------------------------------------- one tensor


@pytest.mark.parametrize("name", [s for s in SCHEMES if s.startswith("absmax")])
def test_absmax_error_is_at_most_half_a_step(name):
    w = uneven()
    qt = quantize_tensor(w, parse_scheme(name, group_size=16))
    s = per_element(qt, qt.scale)
    assert qt.zero is None and qt.codes.dtype == torch.int8
    assert qt.codes.abs().max() <= qt.scheme.qmax
    assert ((w - qt.dequantize()).abs() <= s / 2 * (1 + 1e-5)).all()


@pytest.mark.parametrize("name", [s for s in SCHEMES if s.startswith("zeropoint")])
def test_zeropoint_error_is_at_most_half_a_step_away_from_clamped_edges(name):
    w = uneven() + 0.3 * uneven(seed=1).abs()  # lopsided rows: the zero point is not in the middle
    qt = quantize_tensor(w, parse_scheme(name, group_size=16))
    s, z = per_element(qt, qt.scale), per_element(qt, qt.zero)
    raw = torch.round(w / s) + z
    inside = (raw >= 0) & (raw <= qt.scheme.qmax)
    err = (w - qt.dequantize()).abs()
    assert qt.codes.dtype == torch.uint8 and int(qt.codes.max()) <= qt.scheme.qmax
    assert inside.float().mean() > 0.99
    assert (err[inside] <= s[inside] / 2 * (1 + 1e-5)).all()
    assert (err <= s * (1 + 1e-5)).all()  # a clamped top edge is off by at most one step


def test_zero_is_exact_and_an_all_zero_block_stays_zero():
    w = uneven()
    w[3] = 0.0
    w[5, :8] = 0.0
    for name in SCHEMES:
        back = quantize_tensor(w, parse_scheme(name, group_size=16)).dequantize()
        assert (back[3] == 0).all(), name
        if name.startswith("absmax") or name.endswith("group"):
            assert (back[5, :8] == 0).all(), name


def test_finer_granularity_errs_less_on_uneven_rows():
    w = uneven()
    for method in ("absmax", "zeropoint"):
        for bits in (8, 4):
            diff = {g: w - quantize_tensor(w, parse_scheme(f"{method}-int{bits}-{g}", 16)).dequantize()
                    for g in ("tensor", "channel", "group")}
            total = {g: float(d.norm()) for g, d in diff.items()}
            row_relative = {g: float((d.norm(dim=1) / w.norm(dim=1)).mean()) for g, d in diff.items()}
            assert total["group"] <= total["channel"] <= total["tensor"], (method, bits, total)
            # one scale for all rows rounds the small rows to nothing; a scale per row keeps them
            assert row_relative["channel"] < row_relative["tensor"] * 0.2, (method, bits, row_relative)


def test_more_bits_err_less():
    w = uneven()
    for granularity in ("tensor", "channel", "group"):
        e8 = (w - quantize_tensor(w, parse_scheme(f"absmax-int8-{granularity}", 16)).dequantize()).norm()
        e4 = (w - quantize_tensor(w, parse_scheme(f"absmax-int4-{granularity}", 16)).dequantize()).norm()
        assert e8 < e4 / 8


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("method", ["absmax", "zeropoint"])
@pytest.mark.parametrize("count", [64, 63, 1])
def test_int4_codes_pack_two_per_byte_and_back(method, count):
    scheme = parse_scheme(f"{method}-int4-channel")
    g = torch.Generator().manual_seed(count)
    codes = torch.randint(scheme.qmin, scheme.qmax + 1, (count,), generator=g)
    codes = codes.to(torch.int8 if scheme.symmetric else torch.uint8)
    packed = pack_int4(codes, scheme)
    assert packed.dtype == torch.uint8 and packed.numel() == (count + 1) // 2
    assert torch.equal(unpack_int4(packed, count, scheme), codes)


@pytest.mark.parametrize("name", SCHEMES)
def test_saved_tensors_round_trip_and_count_their_bytes(name):
    w = uneven()
    qt = quantize_tensor(w, parse_scheme(name, group_size=16))
    tensors = qt.tensors("layer.weight")
    back = QuantizedTensor.from_tensors(tensors, "layer.weight", qt.shape, qt.scheme)
    assert torch.equal(back.codes, qt.codes) and torch.equal(back.dequantize(), qt.dequantize())
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == qt.nbytes
    assert tensors["layer.weight.codes"].numel() == w.numel() * qt.scheme.bits // 8


# ---------------------------------------------------------------- a model


@pytest.mark.parametrize("name", SCHEMES)
def test_save_then_load_gives_the_fake_quant_logits_exactly(name, tmp_path):
    model, tokenizer = tiny_llama()
    model.eval()
    before = logits(model)
    report = quantize_model(model, name, group_size=32)
    fake = logits(model)
    assert torch.isfinite(fake).all() and not torch.equal(fake, before)
    assert report.skipped == ["lm_head"] and len(report.layers) == 14  # 7 projections x 2 layers; tied head kept
    assert report.bytes_after < report.bytes_before
    save_naive(model, tokenizer, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()
    meta = json.loads((tmp_path / naive.SCHEME_FILE).read_text())
    assert meta["scheme"] == name and meta["group_size"] == (32 if name.endswith("group") else None)
    loaded, tok = load_naive(tmp_path)
    assert torch.equal(logits(loaded), fake)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    assert tok.encode("hi") == tokenizer.encode("hi")


def test_int4_files_are_smaller_than_int8_files_by_half_a_byte_per_weight(tmp_path):
    sizes, params = {}, 0
    for name in ("absmax-int8-channel", "absmax-int4-channel"):
        model, tokenizer = tiny_llama(hidden=128)
        params = quantize_model(model, name).params
        save_naive(model, tokenizer, tmp_path / name)
        sizes[name] = (tmp_path / name / naive.WEIGHTS_FILE).stat().st_size
    saved = sizes["absmax-int8-channel"] - sizes["absmax-int4-channel"]
    assert abs(saved - params / 2) < 200  # the same scales; only the safetensors headers differ


def test_report_counts_bytes_and_error():
    model, _ = tiny_llama()
    report = quantize_model(model, "absmax-int8-channel")
    assert report.bytes_before == 4 * report.params
    assert 3.5 < report.ratio < 4  # int8 codes plus one float32 scale per row, against float32
    assert 0 < report.relative_error < 0.02 and report.max_abs_error > 0
    assert set(report.to_dict()) >= {"scheme", "bytes_before", "bytes_after", "relative_error", "ratio"}


def test_an_untied_head_is_quantized_too(tmp_path):
    from transformers import LlamaForCausalLM

    tied, tokenizer = tiny_llama()
    config = tied.config
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    report = quantize_model(model, "zeropoint-int4-group", group_size=32)
    assert "lm_head" in report.layers and report.skipped == []
    fake = logits(model)
    save_naive(model, tokenizer, tmp_path)
    loaded, _ = load_naive(tmp_path)
    assert torch.equal(logits(loaded), fake)


def test_a_bfloat16_model_reloads_in_bfloat16_exactly(tiny_model_dir, tmp_path):
    # loaded in bfloat16 as transformers does it (model.to(bfloat16) would also round the rotary buffers)
    model, tokenizer = load_model(str(tiny_model_dir), dtype=torch.bfloat16)
    model.eval()
    quantize_model(model, "absmax-int4-group", group_size=32)
    fake = logits(model)
    save_naive(model, tokenizer, tmp_path)
    loaded, _ = load_naive(tmp_path)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert torch.equal(logits(loaded), fake)


def test_save_naive_quantizes_an_unquantized_model_and_refuses_a_second_scheme(tmp_path):
    model, tokenizer = tiny_llama()
    with pytest.raises(ConfigError, match="pass the scheme"):
        save_naive(model, tokenizer, tmp_path / "a")
    save_naive(model, tokenizer, tmp_path / "a", "zeropoint-int8-channel")
    assert load_naive(tmp_path / "a")[0] is not None
    with pytest.raises(ConfigError, match="zeropoint-int8-channel"):
        save_naive(model, tokenizer, tmp_path / "b", "absmax-int8-channel")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("bad, word, allowed", [
    ("absmax-int3-channel", "'int3'", "int8, int4"),
    ("maxabs-int8-channel", "'maxabs'", "absmax, zeropoint"),
    ("absmax-int8-row", "'row'", "tensor, channel, group"),
    ("absmax-int8", "absmax-int8", "absmax-int8-tensor"),
])
def test_a_bad_scheme_name_names_the_word_and_the_choices(bad, word, allowed):
    with pytest.raises(ConfigError) as err:
        parse_scheme(bad)
    assert word in str(err.value) and allowed in str(err.value)


def test_naive_prefix_and_case_are_accepted():
    assert parse_scheme("naive-ZeroPoint-int4-group", 32) == naive.Scheme("zeropoint", 4, "group", 32)


def test_a_group_size_that_does_not_divide_a_layer_is_refused_with_a_fitting_one():
    model, _ = tiny_llama()
    with pytest.raises(ConfigError, match=r"group_size 48 .* model\.layers\.0\..* \(e\.g\. 64 or 32\)"):
        quantize_model(model, "absmax-int4-group", group_size=48)


def test_load_naive_refuses_a_plain_folder(tiny_model_dir):
    with pytest.raises(ModelError, match="not a naive-quantized model"):
        load_naive(tiny_model_dir)
