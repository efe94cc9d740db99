"""Models: local folders load, pickle and remote code are refused unless allowed, bad names fail clearly,
GGUF files convert once into a cached safetensors folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tunelab.config import ModelConfig
from tunelab.errors import ModelError
from tunelab.models import load_model, resolve, tiny_llama
from tunelab.models.hub import gguf_to_folder
from tunelab.models.tiny import CHATML


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


# ---------------------------------------------------------------- local folders


def test_load_model_from_a_local_folder(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    ids = tokenizer("hello")["input_ids"]
    assert logits(model, ids).shape == (1, len(ids), len(tokenizer))
    model2, _ = load_model(ModelConfig(name=str(tiny_model_dir)), dtype=torch.bfloat16)
    assert next(model2.parameters()).dtype == torch.bfloat16


def test_allow_pickle_still_loads_safetensors(tiny_model_dir):
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), allow_pickle=True))
    reference, _ = load_model(str(tiny_model_dir))
    torch.testing.assert_close(logits(model, [5, 6, 7]), logits(reference, [5, 6, 7]))


def pickle_folder(tmp_path):
    """A model folder with only pytorch_model.bin (+ config and tokenizer), as older checkpoints are."""
    model, tokenizer = tiny_llama(seed=3)
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def test_pickle_only_folder_is_refused_unless_allowed(tmp_path):
    folder, original = pickle_folder(tmp_path)
    with pytest.raises(ModelError) as info:
        load_model(str(folder))
    message = str(info.value)
    assert str(folder) in message and "pytorch_model.bin" in message and "allow_pickle" in message

    model, _ = load_model(ModelConfig(name=str(folder), allow_pickle=True))
    torch.testing.assert_close(logits(model, [3, 4, 5, 6]), logits(original, [3, 4, 5, 6]))


def test_folder_without_weights(tmp_path, tiny_model_dir):
    folder = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(ModelError, match="no weight files"):
        load_model(str(folder))


def test_trust_remote_code_is_off_by_default(tmp_path, tiny_model_dir):
    assert ModelConfig().trust_remote_code is False
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "tunelab_test_custom"
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    for name, body in [("configuration_custom.py", "from transformers import LlamaConfig as Base\n"
                        "class CustomConfig(Base):\n    model_type = 'tunelab_test_custom'\n"),
                       ("modeling_custom.py", "from transformers import LlamaForCausalLM as Base\n"
                        "class CustomForCausalLM(Base):\n    pass\n")]:
        (folder / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + body)

    with pytest.raises(ModelError, match="trust_remote_code"):
        load_model(str(folder))
    assert not marker.exists(), "the model's own code ran without trust_remote_code"


def test_trust_remote_code_is_passed_through(monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_model_dir))
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


# ---------------------------------------------------------------- names that do not resolve


@pytest.mark.parametrize("name", ["./does-not-exist", "/no/such/model/folder", "~/no-such-model-here",
                                  "not-a-model", "too/many/slashes", "nothing.gguf"])
def test_unresolvable_names_are_model_errors(name):
    with pytest.raises(ModelError) as info:
        resolve(name)
    assert name in str(info.value)


def test_folder_without_config_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve(str(tmp_path))


def test_hub_id_offline_fails_with_a_model_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        load_model("tunelab-tests/no-such-model-7f3a")
    message = str(info.value)
    assert "tunelab-tests/no-such-model-7f3a" in message and "HF_HUB_OFFLINE" in message


# ---------------------------------------------------------------- GGUF


def permute_for_gguf(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores q/k rows in interleaved rotary order; transformers undoes this on load."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_tiny_gguf(path):
    """A float32 tiny Llama as llama.cpp would write it, with a byte-level (gpt2-type) vocabulary."""
    import gguf

    model, tokenizer = tiny_llama(seed=5)
    c = model.config
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tunelab-tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_vocab_size(c.vocab_size)
    vocab = [t for t, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    specials = set(tokenizer.all_special_tokens)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in vocab])
    w.add_token_scores([0.0] * len(vocab))  # single-character vocabulary: transformers derives no merges
    w.add_bos_token_id(tokenizer.bos_token_id)
    w.add_eos_token_id(tokenizer.eos_token_id)
    w.add_pad_token_id(tokenizer.pad_token_id)
    w.add_chat_template(CHATML)
    sd = {k: v.numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])  # no output.weight: tied embeddings
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        for hf, name in names.items():
            tensor = sd[f"model.layers.{i}.{hf}.weight"]
            if name == "attn_q":
                tensor = permute_for_gguf(tensor, c.num_attention_heads)
            elif name == "attn_k":
                tensor = permute_for_gguf(tensor, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{name}.weight", tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model, tokenizer


def test_gguf_converts_once_to_a_cached_safetensors_folder(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNELAB_CACHE", str(cache))
    gguf_file = tmp_path / "tiny.gguf"
    original, tokenizer = write_tiny_gguf(gguf_file)

    folder = gguf_to_folder(gguf_file)
    assert folder.parent == cache / "models" and folder.name.startswith("tiny-")
    assert (folder / "model.safetensors").is_file()
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".gguf")]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left behind

    # the converted folder is an ordinary model: same outputs, same tokens, same chat template
    model, converted_tok = load_model(str(folder))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi there"}], tokenize=False)
    ids = tokenizer(text)["input_ids"]
    assert converted_tok(text)["input_ids"] == ids
    assert converted_tok.chat_template == tokenizer.chat_template
    torch.testing.assert_close(logits(model, ids), logits(original, ids))

    # a second call (and resolve of the .gguf path) reuses the cache without converting again
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of using the cache")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert gguf_to_folder(gguf_file) == folder
    assert resolve(str(gguf_file)) == folder


@pytest.mark.slow
def test_default_alias_is_a_plain_safetensors_folder(default_model_dir):
    config = json.loads((default_model_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert list(default_model_dir.glob("*.safetensors"))
    assert not [p for p in default_model_dir.iterdir() if p.suffix in (".bin", ".pt", ".gguf")]
