"""`tunelab tokenizer train | extend`: a BPE trained on a corpus, and a model extended with domain tokens."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.cli import main
from tunelab.data.tokenizer import TokenizerConfig, extend, train
from tunelab.errors import ConfigError, DataError

CORPUS = ["Photosynthesis turns light into sugar in the chloroplast.",
          "The mitochondria make energy; photosynthesis stores it.",
          "Chloroplast and mitochondria are organelles of the cell."] * 40


def test_a_trained_bpe_round_trips_text_and_renders_chatml(tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS), encoding="utf-8")
    report = train([corpus], tmp_path / "tok", TokenizerConfig(vocab=400, compare_with=str(tiny_model_dir)))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == report["vocab"] <= 400
    text = "Photosynthesis in the chloroplast — ünïcode too."
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: nothing is unknown
    assert report["tokens_per_word"] < report["model_tokens_per_word"]  # the corpus' own words are single tokens
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|endoftext|>" and not (tmp_path / "tok.tmp").exists()
    with pytest.raises(ConfigError, match="already exists"):
        train([corpus], tmp_path / "tok", TokenizerConfig(vocab=400))


def test_extending_a_model_starts_new_rows_at_the_mean_of_their_pieces(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = tmp_path / "tokens.txt"
    tokens.write_text("photosynthesis\nmitochondria\na\n", encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t.lower()}) + "\n" for t in CORPUS), encoding="utf-8")
    report = extend(str(tiny_model_dir), tokens, tmp_path / "ext", corpus=[corpus])
    assert report["added"] == 2 and report["already_single_tokens"] == 1
    assert report["tokens_per_word_after"] < report["tokens_per_word_before"]
    old_tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    old = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings().weight
    tok = AutoTokenizer.from_pretrained(tmp_path / "ext")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ext")
    rows = model.get_input_embeddings().weight
    assert rows.shape[0] == len(tok) == len(old_tok) + 2
    pieces = old_tok("photosynthesis", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(rows[tok.convert_tokens_to_ids("photosynthesis")], old[pieces].mean(dim=0))
    torch.testing.assert_close(rows[: old.shape[0]], old)  # the old rows are untouched
    assert model(**tok("photosynthesis in the cell", return_tensors="pt")).logits.shape[-1] == len(tok)
    tokens.write_text("a\n", encoding="utf-8")
    with pytest.raises(DataError, match="already one token"):
        extend(str(tiny_model_dir), tokens, tmp_path / "none")


def test_the_tokenizer_commands(tmp_path, tiny_model_dir, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS), encoding="utf-8")
    assert main(["tokenizer", "train", str(corpus), "--vocab", "350", "-o", str(tmp_path / "t"),
                 "--compare-with", str(tiny_model_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["vocab"] <= 350
    assert main(["tokenizer", "train", str(corpus), "--vocab", "10", "-o", str(tmp_path / "u")]) == 2
    assert "vocab" in capsys.readouterr().err
