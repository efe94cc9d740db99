"""Bottleneck adapters (tunelab.methods.adapter) on tiny Llama, BERT and T5 models."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from tunelab.errors import ConfigError, TunelabError
from tunelab.methods import METHODS
from tunelab.methods.adapter import Config, apply, disabled, load, save, wrapped
from tunelab.models.tiny import tiny_llama


def llama(hidden=64):
    return tiny_llama(layers=2, hidden=hidden)[0].eval()


def bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=3)
    return BertForSequenceClassification(cfg).eval()


def t5():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=100, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                   num_heads=4, decoder_start_token_id=0)
    return T5ForConditionalGeneration(cfg).eval()


IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 61, 20]])


def logits(model):
    with torch.no_grad():
        if getattr(model.config, "is_encoder_decoder", False):
            return model(input_ids=IDS, decoder_input_ids=IDS[:, :5]).logits
        return model(input_ids=IDS).logits


def perturb(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for m in wrapped(model).values():
            for p in m.adapter.parameters():
                p.add_(torch.randn_like(p) * 0.1)


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# (builder, d, blocks, head parameters)
MODELS = {"llama": (llama, 64, 2, 0), "bert": (bert, 32, 2, 32 * 3 + 3), "t5": (t5, 32, 4, 0)}


@pytest.mark.parametrize("style,per_block", [("houlsby", 2), ("pfeiffer", 1)])
@pytest.mark.parametrize("arch", list(MODELS))
def test_trainable_count_matches_formula(arch, style, per_block):
    build, d, blocks, head = MODELS[arch]
    b = 8
    model = build()
    out = apply(model, Config(style=style, bottleneck=b))
    assert out is model
    assert len(wrapped(model)) == blocks * per_block
    assert n_trainable(model) == blocks * per_block * (2 * d * b + b + d) + head
    for name, p in model.named_parameters():
        assert p.requires_grad == (".adapter." in name or name.startswith("classifier.")), name
        if ".adapter." in name:
            assert p.dtype == torch.float32


@pytest.mark.parametrize("arch", list(MODELS))
def test_near_identity_then_perturbed_and_disabled(arch):
    model = MODELS[arch][0]()
    base = logits(model)
    apply(model, Config(bottleneck=8))
    at_init = (logits(model) - base).abs().max()
    assert at_init < 1e-2
    perturb(model)
    perturbed = (logits(model) - base).abs().max()
    assert perturbed > 10 * at_init and perturbed > 1e-4  # BERT's random logits are ~1e-2
    with disabled(model):
        assert torch.equal(logits(model), base)
    assert torch.equal((logits(model) - base).abs().max(), perturbed)  # back on after the context


@pytest.mark.parametrize("arch", ["llama", "bert", "t5"])
def test_save_load_round_trip(arch, tmp_path):
    build = MODELS[arch][0]
    fresh = build()
    model = apply(build(), Config(style="pfeiffer" if arch == "t5" else "houlsby", bottleneck=8, nonlinearity="tanh"))
    perturb(model)
    if arch == "bert":
        with torch.no_grad():
            model.classifier.weight.add_(1.0)
    save(model, tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_model.safetensors", "bottleneck_config.json"]
    saved = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    assert all(".adapter." in k or k.startswith("classifier.") for k in saved)
    assert any(k.startswith("classifier.") for k in saved) == (arch == "bert")

    loaded = load(fresh, tmp_path / "a")
    assert loaded is fresh
    assert torch.equal(logits(loaded), logits(model))
    save(loaded, tmp_path / "b")
    again = load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)


def test_load_into_other_hidden_size_fails(tmp_path):
    save(apply(llama(64), Config(bottleneck=8)), tmp_path)
    with pytest.raises(TunelabError, match="hidden size"):
        load(llama(32), tmp_path)


@pytest.mark.parametrize("key,value", [("style", "x"), ("bottleneck", 0), ("nonlinearity", "swish"),
                                       ("init_scale", -1.0), ("dropout", 1.0)])
def test_bad_config_names_key(key, value):
    with pytest.raises(ConfigError, match=f"{key}"):
        apply(llama(), Config(**{key: value}))


def test_registered_not_mergeable():
    method = METHODS["adapter"]
    assert method.config is Config and not method.mergeable and method.saves == "adapter"
    assert method.save is save and method.load is load and method.disabled is disabled


def test_training_lowers_loss():
    model = apply(llama(), Config(bottleneck=16, init_scale=1e-2)).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_bf16_frozen_weights_under_autocast():
    model = apply(llama(), Config(bottleneck=8))
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    # Outside autocast a bf16 sub-layer output meets float32 adapter weights.
    with torch.no_grad():
        out = model(input_ids=IDS).logits
    assert torch.isfinite(out.float()).all()


def test_copy_of_adapted_model_and_attribute_passthrough():
    model = apply(llama(), Config(bottleneck=8))
    twin = copy.deepcopy(model)
    assert torch.equal(logits(twin), logits(model))
    assert model.model.layers[0].self_attn.layer_idx == 0


def test_unknown_block_names_its_class():
    from types import SimpleNamespace

    from torch import nn

    class OddBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.left, self.right = nn.Linear(4, 4), nn.Linear(4, 4)

    class OddModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(num_hidden_layers=2, hidden_size=4)
            self.layers = nn.ModuleList([OddBlock(), OddBlock()])

    with pytest.raises(ConfigError, match="OddBlock"):
        apply(OddModel(), Config())
