"""One battery over every registered method (tunelab.methods.METHODS) that trains weights.

A new method module is picked up automatically: the cases below are every method's
default options plus the variants in VARIANTS, on every task the method declares
(causal_lm and/or classify), on a tiny random Llama loaded the way tunelab trains
(load_for_training). Each case checks: the forward works; the trainable-parameter count
equals the method's formula (FORMULAS, computed from the model config, not from the
model); save then load gives identical logits; merged equals unmerged where the method
merges; the loss falls; turning the adapter off gives the base model's logits exactly;
an evaluation pass between training steps changes nothing.

The feature route (probe) trains no weights; tests/unit/test_probe.py covers it.
The tiny model has 3 blocks so that freeze's default (last 2 blocks) leaves one frozen.
"""

from __future__ import annotations

import pytest
import torch

from tunelab.config import load_config
from tunelab.methods import METHODS, adapter_disabled, load_adapter, save_adapter
from tunelab.models import load_model, save_tiny
from tunelab.models.families import auto_class
from tunelab.training import load_for_training

LAYERS = 3
NUM_LABELS = 3
TEXT = "The quick brown fox jumps over the lazy dog."

# Option sets checked besides each method's defaults.
VARIANTS = {
    "lora": [{"dora": True}, {"rslora": True, "r": 4}, {"init": "pissa"}, {"init": "pissa_niter_2"},
             {"lora_plus_ratio": 16}, {"target_modules": ["q_proj", "v_proj"], "r": 4}],
    "qlora": [{"dora": True}],
    "freeze": [{"last_n_layers": 1, "train_head": False, "train_final_norm": False},
               {"last_n_layers": 0, "train_head": True, "train_final_norm": False}],
    "prompt": [{"init_text": "Answer the question briefly."}],
    "prefix": [{"projection": True, "encoder_hidden": 32}],
    "ptuning": [{"encoder": "LSTM"}],
    "adapter": [{"style": "pfeiffer", "bottleneck": 8}],
}


def _cases():
    cases = []
    for name in sorted(METHODS):
        method = METHODS[name]
        if method.kind != "weights":
            continue
        for options in [{}] + VARIANTS.get(name, []):
            for task in ("causal_lm", "classify"):
                if task in method.tasks:
                    label = ",".join(f"{k}={v}" for k, v in options.items())
                    cases.append(pytest.param(name, options, task, id=f"{name}[{label}]-{task}"))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny3") / "model", layers=LAYERS)


@pytest.fixture(scope="module")
def fit_model_dir(tmp_path_factory):
    """Weights 10x the usual init scale: with the default, the frozen random head's logits
    stay near uniform (|logit| < ~1.3 after the final norm), so no method that freezes it
    can fit anything; LoRA plateaued at 5.24 nats from 5.57."""
    return save_tiny(tmp_path_factory.mktemp("tiny3-fit") / "model", layers=LAYERS, init_std=0.2)


def model_kwargs(task: str) -> dict:
    return {"num_labels": NUM_LABELS} if task == "classify" else {}


def load(model_dir, name: str, options: dict, task: str):
    """(model, tokenizer, cfg) loaded the way tunelab trains (load_for_training)."""
    sets = [f"model.name={model_dir}", f"method.name={name}", "train.precision=fp32"]
    sets += [f"method.{k}={_yaml(v)}" for k, v in options.items()]
    cfg = load_config(None, sets)
    model, tokenizer = load_for_training(cfg, task, **model_kwargs(task))
    return model, tokenizer, cfg


def _yaml(v) -> str:
    return str(v).lower() if isinstance(v, bool) else "[" + ",".join(v) + "]" if isinstance(v, list) else str(v)


def load_base(cfg, task: str):
    """The plain base model, loaded as the method would load it (4-bit for qlora)."""
    method = METHODS[cfg.method_name]
    extra = method.load_kwargs(cfg.method) if method.load_kwargs else {}
    model, tokenizer = load_model(cfg.model, dtype=torch.float32, auto_class=auto_class(task), **extra,
                                  **model_kwargs(task))
    if task == "classify":
        model.config.pad_token_id = tokenizer.pad_token_id
    if method.load_kwargs:  # 4-bit: the same kernel as the adapter model runs (see qlora.keep_4bit_layout)
        from tunelab.methods.qlora import keep_4bit_layout

        keep_4bit_layout(model)
    return model


def batch(tokenizer):
    return tokenizer(TEXT, return_tensors="pt").input_ids  # (1, seq)


def logits(model, ids) -> torch.Tensor:
    """Logits at the input's positions (prompt methods prepend virtual tokens: drop those)."""
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits.float()
    return out if out.dim() == 2 else out[:, -ids.shape[1]:]


def perturb_trainable(model, seed: int = 1) -> None:
    """Move every trainable weight off its initial value (LoRA's B starts at zero, so an
    untrained adapter would hide a save/load mistake)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.dtype))


# ---------------------------------------------------------------- trainable-parameter formulas
# Each takes the model config (c), the method's options (m) and the task; returns a count.


def _shapes(c) -> dict[str, tuple[int, int]]:
    """(in, out) of every Linear in one Llama block."""
    h, hd = c.hidden_size, c.hidden_size // c.num_attention_heads
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, c.intermediate_size), "up_proj": (h, c.intermediate_size),
            "down_proj": (c.intermediate_size, h)}


def _head(c, task) -> int:
    """A classification head is new and trains with every method: score = Linear(h, labels), no bias."""
    return c.hidden_size * NUM_LABELS if task == "classify" else 0


def _lora(c, m, task) -> int:
    names = _shapes(c) if m.target_modules == "all-linear" else {n: _shapes(c)[n] for n in m.target_modules}
    per_block = sum(m.r * (i + o) + (o if m.dora else 0) for i, o in names.values())
    return c.num_hidden_layers * per_block + _head(c, task)


def _freeze(c, m, task) -> int:
    block = sum(i * o for i, o in _shapes(c).values()) + 2 * c.hidden_size  # 7 Linears + 2 RMSNorms
    n = m.last_n_layers * block + (c.hidden_size if m.train_final_norm else 0)
    if task == "classify":
        return n + _head(c, task)
    return n + (c.vocab_size * c.hidden_size if m.train_head else 0)  # the tied embedding/head


def _kv_dim(c) -> int:
    return c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)


def _prefix(c, m, task) -> int:
    out = c.num_hidden_layers * 2 * _kv_dim(c)
    if not m.projection:
        return m.num_virtual_tokens * out
    e = m.encoder_hidden
    return m.num_virtual_tokens * _kv_dim(c) + (_kv_dim(c) + 1) * e + (e + 1) * out


def _ptuning(c, m, task) -> int:
    h, e, n = c.hidden_size, m.encoder_hidden, m.num_virtual_tokens
    if m.encoder == "MLP":
        return n * h + (h * e + e) + (e * e + e) + (e * h + h)
    # LSTM encoder: a 2-layer bidirectional LSTM of width e (4 gates, two biases each), then
    # Linear(2e, 2e) and Linear(2e, h)
    lstm = 2 * sum(4 * e * (inp + e) + 8 * e for inp in (h, 2 * e))
    return n * h + lstm + (2 * e * 2 * e + 2 * e) + (2 * e * h + h)


def _ia3(c, m, task) -> int:
    s = _shapes(c)
    return c.num_hidden_layers * (s["k_proj"][1] + s["v_proj"][1] + s["down_proj"][0]) + _head(c, task)


def _adapter(c, m, task) -> int:
    per = 2 * c.hidden_size * m.bottleneck + m.bottleneck + c.hidden_size
    return c.num_hidden_layers * (2 if m.style == "houlsby" else 1) * per + _head(c, task)


FORMULAS = {
    "full": lambda c, m, task: None,  # every parameter: checked against the model's own count below
    "freeze": _freeze,
    "lora": _lora,
    "qlora": _lora,
    "prompt": lambda c, m, task: m.num_virtual_tokens * c.hidden_size,
    "prefix": _prefix,
    "ptuning": _ptuning,
    "ia3": _ia3,
    "adapter": _adapter,
    "head": lambda c, m, task: _head(c, task),
}


def unique_params(model):
    seen, out = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


# ---------------------------------------------------------------- the battery


@pytest.mark.parametrize(("name", "options", "task"), CASES)
def test_forward(model_dir, name, options, task):
    model, tokenizer, _ = load(model_dir, name, options, task)
    ids = batch(tokenizer)
    out = logits(model, ids)
    expected = (1, NUM_LABELS) if task == "classify" else (1, ids.shape[1], len(tokenizer))
    assert out.shape == expected
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "options", "task"), CASES)
def test_trainable_count_equals_formula(model_dir, name, options, task):
    assert name in FORMULAS, f"method {name}: add its trainable-parameter formula to FORMULAS"
    model, _, cfg = load(model_dir, name, options, task)
    trainable = sum(p.numel() for p in unique_params(model) if p.requires_grad)
    expected = FORMULAS[name](load_base(cfg, task).config, cfg.method, task)
    if expected is None:  # full: everything
        expected = sum(p.numel() for p in unique_params(model))
    assert trainable == expected
    if METHODS[name].saves == "adapter":  # and none of it is a base weight
        base = {n for n, _ in load_base(cfg, task).named_parameters()}
        plain = lambda n: n.removeprefix("base_model.model.").replace(".base_layer", "")  # noqa: E731
        assert not {n for n, p in model.named_parameters() if p.requires_grad and plain(n) in base
                    and "score" not in n}


@pytest.mark.parametrize(("name", "options", "task"), CASES)
def test_save_then_load_gives_identical_logits(model_dir, name, options, task, tmp_path):
    model, tokenizer, cfg = load(model_dir, name, options, task)
    method = METHODS[name]
    perturb_trainable(model)
    ids = batch(tokenizer)
    before = logits(model, ids)
    if method.saves == "adapter":
        save_adapter(method, model, tmp_path / "saved")
        loaded = load_adapter(method, load_base(cfg, task), tmp_path / "saved")
    else:
        model.save_pretrained(tmp_path / "saved", safe_serialization=True)
        loaded = auto_class(task).from_pretrained(tmp_path / "saved", dtype=torch.float32)
    after = logits(loaded, ids)
    # A 4-bit base reloaded for inference may run bitsandbytes' CPU inference kernel (bf16,
    # another summation order) where training ran dequantize + matmul: observed ~2.4e-3.
    # PiSSA is saved converted to a rank-2r LoRA on the original base: float rounding only.
    atol = 1e-2 if method.load_kwargs else 1e-4 if str(options.get("init", "")).startswith("pissa") else 1e-5
    torch.testing.assert_close(after, before, rtol=0, atol=atol)


@pytest.mark.filterwarnings("ignore:Merge lora module to 4-bit linear")  # peft's notice; bounded below
@pytest.mark.parametrize(("name", "options", "task"), [c for c in CASES if METHODS[c.values[0]].mergeable])
def test_merged_equals_unmerged(model_dir, name, options, task):
    method = METHODS[name]
    model, tokenizer, cfg = load(model_dir, name, options, task)
    perturb_trainable(model)
    # six texts of one length (byte tokenizer: no padding), so a classifier gives 18 logits, not 3
    texts = [TEXT, TEXT.upper(), TEXT[::-1], TEXT.lower(), TEXT.swapcase(), TEXT.replace("o", "0")]
    ids = tokenizer(texts, return_tensors="pt").input_ids
    before = logits(model, ids)
    with adapter_disabled(method, model):
        without = logits(model, ids)
    merged = model.merge_and_unload()
    after = logits(merged, ids)
    if method.load_kwargs:
        # A quantized base is dequantized, added to and re-quantized, so the merged weights
        # carry fresh 4-bit rounding: require the merged model to sit far closer to the
        # adapter's outputs than the bare base does (observed ~0.2 of it).
        assert (after - before).abs().mean() < 0.5 * (without - before).abs().mean()
    else:
        torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def _adapter_cases():
    """Language-model cases whose result is an adapter on an unchanged base (a classifier's
    new head has no base output to return to)."""
    return [c for c in CASES if METHODS[c.values[0]].saves == "adapter" and c.values[2] == "causal_lm"]


@pytest.mark.parametrize(("name", "options", "task"), _adapter_cases())
def test_adapter_off_gives_base_logits_exactly(model_dir, name, options, task, tmp_path):
    """Off means off: bit for bit the base model, after saving and loading too. (PiSSA
    trains on a residual base in memory; what it saves applies to the original base.)"""
    method = METHODS[name]
    model, tokenizer, cfg = load(model_dir, name, options, task)
    perturb_trainable(model)
    ids = batch(tokenizer)
    base = logits(load_base(cfg, task), ids)
    if not str(options.get("init", "")).startswith("pissa"):
        with adapter_disabled(method, model):
            assert torch.equal(logits(model, ids), base)
    save_adapter(method, model, tmp_path / "saved")
    loaded = load_adapter(method, load_base(cfg, task), tmp_path / "saved")
    assert not torch.equal(logits(loaded, ids), base)  # the adapter does something
    with adapter_disabled(method, loaded):
        assert torch.equal(logits(loaded, ids), base)


@pytest.mark.parametrize(("name", "options", "task"), CASES)
def test_loss_falls(fit_model_dir, name, options, task):
    """12 Adam steps: memorise one sentence (causal_lm) or fit 4 labelled texts (classify).
    The random tiny model's head is small, so methods that freeze it fall more slowly than
    full training (observed 5.57 -> ~4.8 for lora, ~3.1 for full); the bar is 0.5 nats
    (0.3 for classification, which starts near ln 3 = 1.1)."""
    torch.manual_seed(0)
    model, tokenizer, _ = load(fit_model_dir, name, options, task)
    model.train()
    if task == "classify":
        enc = tokenizer(["good fun", "bad day", "so so", "great"], return_tensors="pt", padding=True)
        inputs = {**enc, "labels": torch.tensor([0, 1, 2, 0])}
        bar = 0.3
    else:
        ids = batch(tokenizer)
        inputs, bar = {"input_ids": ids, "labels": ids}, 0.5
    # Small adapters on a random model need a larger step to move the loss within 12 steps.
    lr = 5e-3 if METHODS[name].saves == "model" else 3e-2
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(12):
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < losses[0] - bar, f"method {name}: loss did not fall: {losses}"


@pytest.mark.parametrize(("name", "options", "task"), [c for c in CASES if c.values[2] == "causal_lm"])
def test_eval_pass_leaves_training_unchanged(model_dir, name, options, task):
    """Trainer.evaluate runs the model in eval mode without grad between training steps;
    that must not change what the next training step computes (bitsandbytes' CPU kernel
    once repacked 4-bit weights there into a layout with no backward)."""
    model, tokenizer, _ = load(model_dir, name, options, task)
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
