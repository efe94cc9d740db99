"""One battery over every registered method (tunelab.methods.METHODS).

A new method module is picked up automatically: each test below is parametrized over
the method table. For each method: the forward works, exactly the intended parameters
train, save then load gives the same logits, merging an adapter keeps its outputs, the
loss falls when memorising one short sequence, and an evaluation pass between training
steps changes nothing. Models are loaded the way tunelab trains them (load_for_training).

The tiny model has 3 blocks so that freeze's default (last 2 blocks) leaves one frozen.
"""

from __future__ import annotations

import re

import pytest
import torch

from tunelab.config import load_config
from tunelab.methods import METHODS
from tunelab.models import load_model, save_tiny
from tunelab.training import load_for_training

NAMES = sorted(METHODS)
LAYERS = 3
TEXT = "The quick brown fox jumps over the lazy dog."

# Extra option sets checked by the trainable-parameter test (the default options always are).
VARIANTS = {
    "freeze": [
        {"last_n_layers": 1, "train_head": False, "train_final_norm": False},
        {"last_n_layers": 0, "train_head": True, "train_final_norm": False},
    ],
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny3") / "model", layers=LAYERS)


def run_config(model_dir, name: str, **options):
    sets = [f"model.name={model_dir}", f"method.name={name}", "train.precision=fp32"]
    sets += [f"method.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items()]
    return load_config(None, sets)


def load(model_dir, name: str, **options):
    """(model, tokenizer, cfg) loaded the way tunelab trains (load_for_training)."""
    cfg = run_config(model_dir, name, **options)
    model, tokenizer = load_for_training(cfg)
    return model, tokenizer, cfg


def batch(tokenizer):
    return tokenizer(TEXT, return_tensors="pt").input_ids  # (1, seq)


def logits(model, ids) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def perturb_trainable(model, seed: int = 1) -> None:
    """Move every trainable weight off its initial value (LoRA's B starts at zero, so an
    untrained adapter would hide a save/load mistake)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


# ---------------------------------------------------------------- expected trainable sets


def _expected_freeze(names: list[str], cfg) -> set[str]:
    """Blocks model.layers.{i} with i >= LAYERS - last_n, the (tied) head and the final norm."""
    keep = set()
    first = LAYERS - cfg.last_n_layers
    for n in names:
        m = re.match(r"model\.layers\.(\d+)\.", n)
        if m and int(m.group(1)) >= first:
            keep.add(n)
    if cfg.train_head:
        keep |= {"lm_head.weight", "model.embed_tokens.weight"}  # tied: one tensor, two names
    if cfg.train_final_norm:
        keep.add("model.norm.weight")
    return keep


def check_trainable(model, cfg) -> None:
    name = cfg.method_name
    params = dict(model.named_parameters(remove_duplicate=False))
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable, f"method {name}: nothing trains"
    if name == "full":
        assert trainable == set(params)
    elif name == "freeze":
        assert trainable == _expected_freeze(list(params), cfg.method)
    elif name in ("lora", "qlora"):
        lora = {n for n in params if ".lora_" in n}
        assert lora and trainable == lora, f"trainable besides LoRA: {sorted(trainable - lora)[:5]}"
        if METHODS[name].load_kwargs:  # qlora: the base really is 4-bit
            assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    elif METHODS[name].saves == "adapter":
        # An adapter method with no exact rule here yet: at least no weight of the base may train.
        base, _ = load_model(cfg.model)
        base_names = {n for n, _ in base.named_parameters(remove_duplicate=False)}
        plain = lambda n: n.removeprefix("base_model.model.").replace(".base_layer", "")  # noqa: E731
        assert not {n for n in trainable if plain(n) in base_names}
    else:
        pytest.fail(f"method {name}: add its expected trainable parameters to check_trainable")


# ---------------------------------------------------------------- the battery


@pytest.mark.parametrize("name", NAMES)
def test_forward(model_dir, name):
    model, tokenizer, _ = load(model_dir, name)
    ids = batch(tokenizer)
    out = logits(model, ids)
    assert out.shape == (1, ids.shape[1], len(tokenizer))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_only_intended_parameters_train(model_dir, name):
    for options in [{}] + VARIANTS.get(name, []):
        model, _, cfg = load(model_dir, name, **options)
        check_trainable(model, cfg)


@pytest.mark.parametrize("name", NAMES)
def test_save_then_load_gives_identical_logits(model_dir, name, tmp_path):
    model, tokenizer, cfg = load(model_dir, name)
    method = METHODS[name]
    perturb_trainable(model)
    ids = batch(tokenizer)
    before = logits(model, ids)
    model.save_pretrained(tmp_path / "saved", safe_serialization=True)
    if method.saves == "adapter":
        from peft import PeftModel, get_peft_model_state_dict

        extra = method.load_kwargs(cfg.method) if method.load_kwargs else {}
        base, _ = load_model(cfg.model, dtype=torch.float32, **extra)
        loaded = PeftModel.from_pretrained(base, tmp_path / "saved")
        saved, reloaded = get_peft_model_state_dict(model), get_peft_model_state_dict(loaded)
    else:
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
        saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    for key in saved:
        assert torch.equal(saved[key], reloaded[key]), key
    after = logits(loaded, ids)
    # The weights round-trip bit for bit (above). A 4-bit base reloaded for inference may run
    # bitsandbytes' CPU inference kernel (bf16, another summation order) where training ran
    # dequantize + matmul: logits then agree to bf16 rounding (observed ~2.4e-3), not bitwise.
    atol = 1e-2 if method.load_kwargs else 1e-5
    torch.testing.assert_close(after, before, rtol=0, atol=atol)


@pytest.mark.filterwarnings("ignore:Merge lora module to 4-bit linear")  # peft's notice; bounded below
@pytest.mark.parametrize("name", NAMES)
def test_merged_equals_unmerged(model_dir, name):
    method = METHODS[name]
    if method.saves != "adapter":
        pytest.skip(f"method {name} trains the model itself: nothing to merge")
    model, tokenizer, cfg = load(model_dir, name)
    perturb_trainable(model)
    ids = batch(tokenizer)
    before = logits(model, ids)
    with model.disable_adapter():
        without = logits(model, ids)
    merged = model.merge_and_unload()
    after = logits(merged, ids)
    if method.load_kwargs:
        # A quantized base is dequantized, added to and re-quantized, so the merged weights
        # carry fresh 4-bit rounding (~9% of each weight): require the merged model to sit
        # far closer to the adapter's outputs than the bare base does (observed ~0.2 of it).
        assert (after - before).abs().mean() < 0.5 * (without - before).abs().mean()
    else:
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls(model_dir, name):
    """Memorise one sentence for 12 Adam steps. The random tiny model's head is small, so
    methods that freeze it (LoRA) fall more slowly than full training: observed 5.57 -> ~4.8
    for lora/qlora and -> ~3.1 for full/freeze; the bar is a fall of at least 0.5 nats."""
    torch.manual_seed(0)
    model, tokenizer, _ = load(model_dir, name)
    ids = batch(tokenizer)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    losses = []
    for _ in range(12):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < losses[0] - 0.5, f"method {name}: loss did not fall: {losses}"


@pytest.mark.parametrize("name", NAMES)
def test_eval_pass_leaves_training_unchanged(model_dir, name):
    """Trainer.evaluate runs the model in eval mode without grad between training steps;
    that must not change what the next training step computes (bitsandbytes' CPU kernel
    once repacked 4-bit weights there into a layout with no backward)."""
    model, tokenizer, _ = load(model_dir, name)
    perturb_trainable(model)
    ids = batch(tokenizer)

    def grads():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = grads()
    logits(model, ids)  # eval mode, no grad
    after = grads()
    assert before.keys() == after.keys()
    for n in before:
        torch.testing.assert_close(after[n], before[n], rtol=1e-3, atol=1e-6, msg=lambda m: f"{n}: {m}")
