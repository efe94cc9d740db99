"""Objective ppo end to end on tiny models: a rigged reward model whose score the policy can
raise in a few iterations, the run folder, reloading the policy, resume, the full method's
frozen reference, and the user errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.jsonl import read_jsonl, write_jsonl
from tunelab import load_run, train
from tunelab.config import load_config
from tunelab.errors import ConfigError, DataError
from tunelab.models import byte_tokenizer, save_tiny
from tunelab.objectives import ppo
from tunelab.training import latest_checkpoint

WORDS = ["cats", "dogs", "rain", "sun", "tea", "code", "maps", "bread", "snow", "wind", "rivers", "books", "hills",
         "lamps", "boats", "songs"]


def favourite_token_reward_model(folder: Path, policy_dir: Path, prompts: list[str]) -> Path:
    """A one-layer Llama reward model whose score rises with the share of one token in the text.

    The token is the policy's own most likely answer token (outside the prompts), so sampling
    finds it from the start. How: every embedding has a constant 1 in dimension 0 and the
    favourite also a 1 in dimension 1; queries are 0, so attention averages the values, which
    copy dimension 1 (is-favourite) into dimension 2 at the last position, and the score
    head reads dimension 2 (after the final RMSNorm: a rising function of the share).
    """
    from transformers import (
        AutoModelForCausalLM,
        LlamaConfig,
        LlamaForSequenceClassification,
    )

    tok = byte_tokenizer()
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    with torch.no_grad():
        logits = policy(**tok(prompts[0], return_tensors="pt")).logits[0, -1]
    logits[sorted({i for p in prompts for i in tok(p)["input_ids"]})] = -torch.inf
    favourite = int(logits.argmax())
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        layer = model.model.layers[0]
        for norm in (model.model.norm, layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight.fill_(1.0)
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.model.embed_tokens.weight[favourite, 1] = 1.0
        layer.self_attn.v_proj.weight[0, 1] = 1.0
        layer.self_attn.o_proj.weight[2, 0] = 1.0
        model.score.weight[0, 2] = 1.0
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(policy folder, reward model folder, prompts file, runs folder)."""
    root = tmp_path_factory.mktemp("ppo")
    # A larger init gives the tiny policy's logits room to move (LoRA leaves the head frozen).
    policy = save_tiny(root / "policy", init_std=0.2)
    prompts = [f"Q: {w}\nA:" for w in WORDS]
    data = write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in prompts])
    reward = favourite_token_reward_model(root / "reward", policy, prompts)
    return policy, reward, data, root / "runs"


def settings(setup, name, *extra) -> list[str]:
    policy, reward, data, out = setup
    return ["objective=ppo", f"objective.reward_model={reward}", f"model.name={policy}", f"data.train={data}",
            f"train.output_dir={out}", f"train.run_name={name}", "train.lr=3e-3", "objective.rollout_batch=16",
            "objective.minibatch=8", "objective.max_new_tokens=4", "data.val_split=0.25", "objective.eval_every=5",
            *extra]


@pytest.fixture(scope="module")
def lora_run(setup):
    # 32 answers per iteration: enough that the rise shows for any seed tried (42, 1-5)
    summary = train(load_config(None, settings(setup, "lora", "train.max_steps=10", "objective.rollout_batch=32",
                                               "objective.minibatch=16")))
    return setup[3] / "lora", summary


def test_reward_rises_and_the_run_folder_is_complete(lora_run):
    run, summary = lora_run
    assert summary["steps"] == 10 and summary["artifact"] == "adapter" and summary["eval_on"] == "validation"
    assert summary["reward_after"] > summary["reward_before"] + 0.3, summary
    rows = read_jsonl(run / "metrics.jsonl")
    train_rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 11))
    keys = {"reward", "kl", "kl_k3", "loss", "policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy", "lr"}
    assert all(keys <= r.keys() for r in train_rows)
    assert train_rows[0]["kl"] == 0.0  # the first rollouts come from the reference itself
    early, late = (sum(r["reward"] for r in part) / 3 for part in (train_rows[:3], train_rows[-3:]))
    assert late > early + 0.2
    assert [r["step"] for r in rows if "eval_reward" in r] == [0, 5, 10]
    for name in ("config.yaml", "summary.json", "loss.png", "reward.png", "samples.jsonl",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", f"adapter/{ppo.VALUE_HEAD_FILE}"):
        assert (run / name).is_file(), name
    assert 0 < summary["trainable_params"] < summary["total_params"]
    assert summary["artifact_bytes"] == sum(p.stat().st_size for p in (run / "adapter").rglob("*") if p.is_file())
    assert summary["tokens_trained"] > 0 and summary["tokens_per_s"] > 0 and summary["kl_final"] is not None
    assert len(read_jsonl(run / "samples.jsonl")) == summary["eval_prompts"] == 4


def test_saved_policy_reloads_like_an_sft_run(lora_run, setup):
    run, _ = lora_run
    model, _ = load_run(run)
    base, _ = load_run(setup[0])
    ids = torch.tensor([[60, 61, 62, 63]])
    with torch.no_grad():
        assert not torch.allclose(model.eval()(input_ids=ids).logits, base.eval()(input_ids=ids).logits)
    head = load_file(str(run / "adapter" / ppo.VALUE_HEAD_FILE))
    assert head["weight"].shape == (1, 64) and head["bias"].shape == (1,)


def test_resume_matches_uninterrupted_run(setup, monkeypatch):
    common = ["train.max_steps=4", "train.save_steps=2", "objective.rollout_batch=8", "objective.minibatch=4",
              "objective.eval_every=2"]
    out = setup[3]
    train(load_config(None, settings(setup, "straight", *common)))

    calls = {"n": 0}
    update = ppo.ppo_update

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed during iteration 3")
        return update(*args, **kwargs)

    monkeypatch.setattr(ppo, "ppo_update", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, settings(setup, "resumed", *common)))
    monkeypatch.undo()
    run = out / "resumed"
    assert latest_checkpoint(run) == run / "checkpoints" / "checkpoint-2"
    assert not (run / "adapter").exists()

    summary = train(load_config(None, settings(setup, "resumed", *common, "train.resume=true")))
    assert summary["resumed_from"] == "checkpoint-2" and summary["steps"] == 4
    for name in ("adapter_model.safetensors", ppo.VALUE_HEAD_FILE):
        a, b = load_file(str(out / "straight" / "adapter" / name)), load_file(str(run / "adapter" / name))
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    timing = {"time_s", "tokens_per_s"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    assert strip(read_jsonl(run / "metrics.jsonl")) == strip(read_jsonl(out / "straight" / "metrics.jsonl"))
    checkpoint = run / "checkpoints" / "checkpoint-4"
    assert {p.name for p in checkpoint.iterdir()} >= {"COMPLETE", "trainable.safetensors", "optimizer.pt", "state.json"}


def test_full_method_keeps_a_frozen_reference_copy(setup):
    summary = train(load_config(None, settings(setup, "full", "method=full", "train.max_steps=2",
                                               "objective.eval_every=0")))
    run = setup[3] / "full"
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if "reward" in r]
    assert rows[0]["kl"] == 0.0 and rows[1]["kl"] != 0.0  # the policy moved away from its frozen copy
    assert summary["artifact"] == "model" and summary["trainable_params"] == summary["total_params"]
    assert (run / "model" / ppo.VALUE_HEAD_FILE).is_file()
    model, _ = load_run(run)
    assert type(model).__name__ == "LlamaForCausalLM"


def test_user_errors_name_the_key_or_file(setup, tmp_path):
    policy = setup[0]
    base = [f"train.output_dir={tmp_path}", "train.run_name=err", "train.max_steps=1"]
    with pytest.raises(ConfigError, match="objective.reward_model: got ''; .* .an rm run folder"):
        train(load_config(None, settings(setup, "err", "objective.reward_model=") + base))
    with pytest.raises(ConfigError, match="objective.reward_model: .*does not exist"):
        train(load_config(None, settings(setup, "err", f"objective.reward_model={tmp_path / 'nope'}") + base))
    with pytest.raises(ConfigError, match="not a sequence-classification model"):
        train(load_config(None, settings(setup, "err", f"objective.reward_model={policy}") + base))
    texts = write_jsonl(tmp_path / "texts.jsonl", [{"text": "no prompt here"}, {"text": "nor here"}])
    with pytest.raises(DataError, match=r"texts\.jsonl:1: no prompt; ppo needs a `prompt` field"):
        train(load_config(None, settings(setup, "err", f"data.train={texts}") + base))
    with pytest.raises(ConfigError, match="objective.minibatch"):
        train(load_config(None, settings(setup, "err", "objective.minibatch=32") + base))
    assert not (tmp_path / "err").exists()  # nothing is written before the inputs check out
