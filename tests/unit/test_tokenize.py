"""Tokenize: answer-only labels, end-of-answer tokens, truncation, packing without cross-talk, collation, splits."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tunelab.config import DataConfig
from tunelab.data import Collator, build_sft, describe, pack, tokenize_messages
from tunelab.data.templates import answer_end_ids, ensure_chat_template, eos_ids_for_generation
from tunelab.data.tokenize import IGNORE, tokenize_text
from tunelab.errors import DataError
from tunelab.models import byte_tokenizer, tiny_llama

END = "<|im_end|>"
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "six, of course"},
]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def labelled_spans(tokenizer, ids, labels) -> list[str]:
    """The decoded runs of consecutive learned tokens (labels that are not IGNORE)."""
    runs, current = [], []
    for i, label in zip(ids, labels):
        if label == IGNORE:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == i, "a learned label must be the token at that position"
            current.append(i)
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def plain_tokenizer(specials: list[str], eos: str, template: str | None = None):
    """A byte-level tokenizer with the given special tokens and no chat template (unless given)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, unk_token=specials[0],
                                        pad_token=specials[0])
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.chat_template = template
    return tokenizer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- which tokens are learned


def test_single_turn_learns_only_the_answer_and_its_end(tok):
    out = tokenize_messages(CHAT[:3], tok, max_length=512)
    assert labelled_spans(tok, out.input_ids, out.labels) == ["4" + END]
    assert tok.decode(out.input_ids) == tok.apply_chat_template(CHAT[:3], tokenize=False)
    assert not out.truncated


def test_multi_turn_learns_every_answer_and_no_user_turn(tok):
    out = tokenize_messages(CHAT, tok, max_length=512)
    spans = labelled_spans(tok, out.input_ids, out.labels)
    assert spans == ["4" + END, "six, of course" + END]
    learned = "".join(spans)
    assert "2+2" not in learned and "3+3" not in learned and "terse" not in learned


def test_train_on_last_learns_only_the_last_answer(tok):
    out = tokenize_messages(CHAT, tok, max_length=512, train_on="last")
    assert labelled_spans(tok, out.input_ids, out.labels) == ["six, of course" + END]


def test_train_on_all_learns_every_token(tok):
    out = tokenize_messages(CHAT, tok, max_length=512, train_on="all")
    assert out.labels == out.input_ids


def test_unknown_train_on_is_a_data_error(tok):
    with pytest.raises(DataError, match="data.train_on"):
        tokenize_messages(CHAT, tok, max_length=512, train_on="answers")


def test_text_learns_every_token_and_ends_with_eos(tok):
    out = tokenize_text("plain document", tok, max_length=512)
    assert out.labels == out.input_ids
    assert out.input_ids[-1] == tok.eos_token_id


# ---------------------------------------------------------------- every answer ends with a stop token


def assert_answers_end_with(tokenizer, out, end_id):
    spans = []
    run = []
    for i, label in zip(out.input_ids, out.labels):
        if label != IGNORE:
            run.append(label)
        elif run:
            spans.append(run)
            run = []
    spans += [run] if run else []
    assert spans, "nothing was learned"
    for span in spans:
        assert span[-1] == end_id, f"answer {tokenizer.decode(span)!r} does not end with {tokenizer.decode([end_id])!r}"


def test_answers_end_with_the_template_end_token(tok):
    assert answer_end_ids(tok) == [tok.convert_tokens_to_ids(END)]
    assert_answers_end_with(tok, tokenize_messages(CHAT, tok, 512), tok.convert_tokens_to_ids(END))


def test_tokenizer_without_template_gets_chatml_ending_in_im_end():
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None
    assert ensure_chat_template(tokenizer) is True
    assert ensure_chat_template(tokenizer) is False  # an existing template is left alone
    end_id = tokenizer.convert_tokens_to_ids(END)
    assert answer_end_ids(tokenizer) == [end_id]
    assert_answers_end_with(tokenizer, tokenize_messages(CHAT, tokenizer, 512), end_id)


def test_tokenizer_without_template_or_im_end_ends_answers_with_eos(tmp_path):
    tokenizer = plain_tokenizer(["<unk>", "</s>"], eos="</s>")
    assert ensure_chat_template(tokenizer) is True
    assert answer_end_ids(tokenizer) == [tokenizer.eos_token_id]
    assert_answers_end_with(tokenizer, tokenize_messages(CHAT, tokenizer, 512), tokenizer.eos_token_id)
    # and the same through build_sft, which adds the fallback template itself
    tokenizer = plain_tokenizer(["<unk>", "</s>"], eos="</s>")
    rows = [{"instruction": f"q{i}", "output": f"answer {i}"} for i in range(4)]
    data = build_sft(DataConfig(train=write_jsonl(tmp_path / "d.jsonl", rows), val_split=0), tokenizer)
    spans = sorted(s for e in data.train for s in labelled_spans(tokenizer, e["input_ids"], e["labels"]))
    assert spans == [f"answer {i}</s>" for i in range(4)]


def test_template_without_end_token_gets_eos_appended_to_answers():
    template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    tokenizer = plain_tokenizer(["<unk>", "</s>"], eos="</s>", template=template)
    assert answer_end_ids(tokenizer) == []
    out = tokenize_messages(CHAT[:3], tokenizer, 512)
    assert labelled_spans(tokenizer, out.input_ids, out.labels) == ["4\n</s>"]


def test_eos_ids_for_generation_adds_the_template_end_token(caplog):
    tokenizer = byte_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"  # the model stops on this, the template ends answers with <|im_end|>
    eos, im_end = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END)
    assert eos != im_end
    with caplog.at_level(logging.WARNING, logger="tunelab.data.templates"):
        stops = eos_ids_for_generation(tokenizer, eos)
    assert stops == [eos, im_end]
    assert END in caplog.text
    # a list of model EOS ids is kept, in order, and nothing is duplicated
    assert eos_ids_for_generation(tokenizer, [im_end, eos]) == [im_end, eos]


def test_eos_ids_for_generation_when_eos_already_ends_answers(tok, caplog):
    with caplog.at_level(logging.WARNING, logger="tunelab.data.templates"):
        assert eos_ids_for_generation(tok, tok.eos_token_id) == [tok.eos_token_id]
        assert eos_ids_for_generation(tok, None) == [tok.eos_token_id]
    assert not caplog.records


# ---------------------------------------------------------------- truncation report


def test_truncation_is_counted_and_cut_answers_are_dropped(tmp_path, tok):
    rows = [
        {"instruction": "short", "output": "fits"},
        {"instruction": "q", "output": "a very long answer " * 5},  # answer cut, but partly kept
        {"instruction": "a long question " * 10, "output": "lost"},  # the answer is cut off entirely
    ]
    cfg = DataConfig(train=write_jsonl(tmp_path / "d.jsonl", rows), val_split=0, max_length=48)
    data = build_sft(cfg, tok)
    stats = data.stats["train"]
    assert stats["truncated"] == 2
    assert stats["dropped"] == 1
    assert stats["examples"] == len(data.train) == 2
    assert all(len(e["input_ids"]) <= 48 and len(e["labels"]) == len(e["input_ids"]) for e in data.train)
    kept = [labelled_spans(tok, e["input_ids"], e["labels"])[0] for e in data.train]
    assert "fits" + END in kept
    assert not any("lost" in k for k in kept)
    assert "truncated 2, dropped 1" in describe(data.stats)


def test_everything_cut_off_is_a_data_error(tmp_path, tok):
    rows = [{"instruction": "a long question " * 10, "output": "lost"}] * 2
    with pytest.raises(DataError, match="max_length=16"):
        build_sft(DataConfig(train=write_jsonl(tmp_path / "d.jsonl", rows), val_split=0, max_length=16), tok)


# ---------------------------------------------------------------- packing


def random_examples(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": list(ids)})  # text-like: every token learned
    return out


def segments(row):
    """(start, end) of each packed example, from where position_ids restart at 0."""
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
    return list(zip(starts, starts[1:]))


def test_pack_keeps_examples_whole_and_rows_within_max_length():
    examples = random_examples([30, 17, 9, 40, 5, 64, 1, 33, 12], vocab=200)
    rows = pack(examples, max_length=64)
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    assert len(rows) < len(examples)
    found = []
    for row in rows:
        assert len(row["labels"]) == len(row["position_ids"]) == len(row["input_ids"])
        for s, e in segments(row):
            found.append(tuple(row["input_ids"][s:e]))
            assert row["position_ids"][s:e] == list(range(e - s))
            assert row["labels"][s] == IGNORE  # nothing is learned across the boundary
            assert row["labels"][s + 1:e] == row["input_ids"][s + 1:e]
    assert sorted(found) == sorted(tuple(x["input_ids"]) for x in examples)  # each example once, never split


def test_pack_refuses_an_example_longer_than_a_row():
    with pytest.raises(DataError, match="max_length=8"):
        pack(random_examples([4, 9], vocab=50), max_length=8)


def test_packed_examples_do_not_see_each_other():
    """Logits and loss of each example inside a packed row equal those of the example alone."""
    model, tokenizer = tiny_llama()
    model.eval()
    examples = random_examples([23, 9, 31, 14, 5, 2, 40], vocab=len(tokenizer), seed=1)
    rows = pack(examples, max_length=48)
    assert any(len(segments(r)) > 2 for r in rows)
    batch = Collator(tokenizer.pad_token_id)(rows)
    assert "attention_mask" not in batch
    with torch.no_grad():
        # the trainer runs with use_cache=False: that is what lets transformers read packed position ids
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        packed_loss = 0.0
        alone_loss = 0.0
        for r, row in enumerate(rows):
            logits = packed[r, : len(row["input_ids"])]
            labels = torch.tensor(row["labels"])
            packed_loss += torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE,
                                                             reduction="sum").item()
            for s, e in segments(row):
                ids = torch.tensor([row["input_ids"][s:e]])
                alone = model(input_ids=ids, use_cache=False).logits[0]
                torch.testing.assert_close(logits[s:e], alone, atol=1e-5, rtol=1e-5)
                alone_loss += torch.nn.functional.cross_entropy(alone[:-1], ids[0, 1:], reduction="sum").item()
    assert packed_loss == pytest.approx(alone_loss, rel=1e-5)


def test_build_sft_packs_when_asked(tmp_path, tok):
    rows = [{"instruction": f"question {i}", "output": "answer " * (i % 4 + 1)} for i in range(12)]
    cfg = DataConfig(train=write_jsonl(tmp_path / "d.jsonl", rows), val_split=0, packing=True, max_length=128)
    data = build_sft(cfg, tok)
    assert data.stats["train"]["packed_rows"] == len(data.train) < 12
    assert all(len(r["input_ids"]) <= 128 and "position_ids" in r for r in data.train)
    spans = [s for r in data.train for s in labelled_spans(tok, r["input_ids"], r["labels"])]
    assert sorted(spans) == sorted("answer " * (i % 4 + 1) + END for i in range(12))


# ---------------------------------------------------------------- collation


def test_collator_pads_unpacked_rows_on_the_right():
    batch = Collator(pad_id=0)([
        {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
        {"input_ids": [8], "labels": [8]},
    ])
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


def test_collator_gives_packed_rows_position_ids_and_no_mask():
    batch = Collator(pad_id=0)([
        {"input_ids": [5, 6, 7, 8], "labels": [IGNORE, 6, IGNORE, 8], "position_ids": [0, 1, 0, 1]},
        {"input_ids": [9, 10], "labels": [IGNORE, 10], "position_ids": [0, 1]},
    ])
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1], [0, 1, 0, 1]]  # padding is its own sequence
    assert batch["labels"][1].tolist() == [IGNORE, 10, IGNORE, IGNORE]


# ---------------------------------------------------------------- train / validation split


def test_val_split_is_deterministic_disjoint_and_complete(tmp_path, tok):
    rows = [{"instruction": f"question number {i:02d}", "output": f"a{i}"} for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)

    def split(seed):
        data = build_sft(DataConfig(train=path, val_split=0.25), tok, seed=seed)
        names = lambda examples: {tok.decode(e["input_ids"]).split("question number ")[1][:2] for e in examples}  # noqa: E731
        return names(data.train), names(data.validation), data

    train, val, data = split(seed=1)
    assert len(val) == 5 and len(train) == 15
    assert not train & val
    assert train | val == {f"{i:02d}" for i in range(20)}
    assert split(seed=1)[:2] == (train, val)
    assert split(seed=2)[1] != val
    for name in ("train", "validation"):
        stats = data.stats[name]
        for key in ("examples", "tokens", "learned_tokens", "min", "mean", "p50", "p95", "max", "truncated", "dropped"):
            assert key in stats
        assert stats["min"] <= stats["p50"] <= stats["p95"] <= stats["max"]
    assert data.stats["train"]["examples"] == 15 and data.stats["format"] == "instruction"


def test_separate_validation_file_is_used_instead_of_a_split(tmp_path, tok):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": f"p{i}", "completion": "c"} for i in range(6)])
    val = write_jsonl(tmp_path / "v.jsonl", [{"prompt": "held out", "completion": "c"}])
    data = build_sft(DataConfig(train=train, validation=val, val_split=0.5), tok)
    assert len(data.train) == 6 and len(data.validation) == 1
    assert "held out" in tok.decode(data.validation[0]["input_ids"])


def test_preference_data_is_refused_for_sft(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="dpo"):
        build_sft(DataConfig(train=path), tok)
