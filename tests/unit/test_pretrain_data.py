"""Continued-pretraining data: documents, the held-out tail, EOS-separated blocks."""

from __future__ import annotations

import pytest

from tests.jsonl import write_jsonl
from tunelab.config import DataConfig
from tunelab.data.pretrain import blocks, build_pretrain, split_tail
from tunelab.errors import DataError


class Chars:
    """A tokenizer with one id per character; EOS is 0."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return type("Enc", (), {"input_ids": [ord(c) for c in text]})


def test_the_last_lines_are_held_out():
    text = "".join(f"line {i}\n" for i in range(20))
    train, held = split_tail([text], 0.1)
    assert held == ["line 18\nline 19\n"] and train[0].endswith("line 17\n")
    assert split_tail(["a", "b", "c", "d"], 0.25) == (["a", "b", "c"], ["d"])
    assert split_tail(["a"], 0) == (["a"], [])


def test_blocks_join_documents_with_eos_and_drop_the_short_tail():
    out = blocks(["abc", "de"], Chars(), block_size=3)
    assert [b["input_ids"] for b in out] == [[97, 98, 99], [0, 100, 101]]  # "abc" EOS "de" EOS: the last EOS is cut
    assert all(b["labels"] == b["input_ids"] for b in out)
    # keep_last keeps a short last block only when it has a token to predict
    assert [b["input_ids"] for b in blocks(["abc", "d"], Chars(), 3, keep_last=True)] == [[97, 98, 99], [0, 100, 0]]
    assert len(blocks(["abc", "de"], Chars(), 3, keep_last=True)) == 2


def test_text_files_folders_and_text_fields(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x" * 40 + "\n" + "y" * 40 + "\n")
    write_jsonl(tmp_path / "docs" / "b.jsonl", [{"text": "z" * 30}, {"text": "w" * 30}])
    data = build_pretrain(DataConfig(train=str(tmp_path / "docs"), val_split=0.3), Chars(), block_size=8)
    assert data.stats["documents"] == 2  # of 3: the last is held out
    assert all(len(b["input_ids"]) == 8 for b in data.train + data.validation)


def test_records_without_text_say_how_to_map_them(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"content": "hello"}])
    with pytest.raises(DataError, match=r"c\.jsonl:1.*missing field 'text'.*data.columns"):
        build_pretrain(DataConfig(train=str(path)), Chars(), block_size=4)


def test_too_little_text_asks_for_shorter_blocks(tmp_path):
    (tmp_path / "t.txt").write_text("tiny\n")
    with pytest.raises(DataError, match="lower data.max_length"):
        build_pretrain(DataConfig(train=str(tmp_path / "t.txt"), val_split=0), Chars(), block_size=64)
