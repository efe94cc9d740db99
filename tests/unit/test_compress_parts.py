"""The small parts of tunelab.compress: staged outputs, the default system prompt in a template, GGUF names."""

from __future__ import annotations

import pytest

from tunelab.compress.export import ExportConfig, default_output, quant_bits
from tunelab.compress.gguf import QUANTS, check_quant, modelfile
from tunelab.compress.hf import with_default_system
from tunelab.compress.source import Source
from tunelab.config.files import staged_output
from tunelab.errors import ConfigError
from tunelab.models.tiny import CHATML, byte_tokenizer


def test_staged_output_appears_only_when_complete(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_output(target) as staging:
            staging.mkdir()
            (staging / "half").write_text("x")
            raise RuntimeError("crash while writing")
    assert not target.exists() and list(tmp_path.iterdir()) == []  # nothing half-written, no staging left
    with staged_output(target) as staging:
        staging.mkdir()
        (staging / "a").write_text("1")
    assert (target / "a").read_text() == "1"


def test_staged_output_keeps_what_the_user_had(tmp_path):
    target = tmp_path / "model.gguf"
    target.write_text("old")
    with pytest.raises(ConfigError, match="--force"):
        with staged_output(target):
            pass
    with pytest.raises(ValueError):
        with staged_output(target, overwrite=True) as staging:
            staging.write_text("new, half")
            raise ValueError("fails before the end")
    assert target.read_text() == "old"
    with staged_output(target, overwrite=True) as staging:
        staging.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


def test_default_system_prompt_is_used_only_when_the_conversation_has_none():
    tok = byte_tokenizer()
    system = 'Answer in JSON, "quoted"\nand on two lines.'
    tok.chat_template = with_default_system(CHATML, system)
    user = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nhi")
    own = [{"role": "system", "content": "Be brief."}] + user
    text = tok.apply_chat_template(own, tokenize=False, add_generation_prompt=True)
    assert "Be brief." in text and "JSON" not in text


def test_gguf_types_and_their_bits():
    assert check_quant("Q4_K_M") == "q4_k_m" and "q8_0" in QUANTS and "f16" in QUANTS
    with pytest.raises(ConfigError, match="q4_k_m"):
        check_quant("q9_9")
    with pytest.raises(ConfigError, match="importance matrix"):
        check_quant("iq2_xs")
    assert [quant_bits(q) for q in ("f32", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q2_k")] == [32, 16, 8, 6, 5, 4, 2]


def test_default_output_names(tmp_path):
    run = Source("runs/demo", tmp_path / "demo", "lora", "smollm2-135m-instruct", tmp_path / "demo" / "adapter")
    assert default_output(run, ExportConfig()) == tmp_path / "demo" / "exports" / "hf"
    assert default_output(run, ExportConfig(format="gguf", quant="Q4_K_M")) == \
        tmp_path / "demo" / "exports" / "demo-q4_k_m.gguf"
    model = Source("smollm2-135m-instruct", None, None, "smollm2-135m-instruct", tmp_path)
    assert str(default_output(model, ExportConfig(format="ollama"))) == "exports/smollm2-135m-instruct-ollama"


def test_modelfile_carries_template_stops_and_system():
    text = modelfile("./model.gguf", CHATML, ["<|im_end|>", "<|endoftext|>"], "Answer in JSON.")
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|endoftext|>"' in lines
    assert 'SYSTEM """Answer in JSON."""' in lines
    assert "<|im_start|>{{ .Role }}" in text
