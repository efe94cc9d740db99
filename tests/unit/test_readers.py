"""Readers: every file kind reads, and every kind of bad input ends in a DataError naming file and line."""

from __future__ import annotations

import json
import re

import pytest

from tunelab.config import DataConfig
from tunelab.data import build_sft, load_records, read_records
from tunelab.errors import DataError

ROWS = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(3)]
BIG = 50_000_000  # bytes in the "runaway line" tests: five times the default max_record_bytes


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def error_of(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        list(read_records(path, **kwargs))
    return str(info.value)


def load_error(path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_records(str(path), DataConfig(**kwargs))
    return str(info.value)


# ---------------------------------------------------------------- happy paths, one per reader


def test_jsonl_reads_records_with_line_numbers(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(ROWS[1]) + "\n" + json.dumps(ROWS[2]), encoding="utf-8")
    records = list(read_records(path))
    assert [r.data for r in records] == ROWS
    # the blank line still counts, so line numbers match what an editor shows
    assert [r.where for r in records] == [f"{path}:1", f"{path}:3", f"{path}:4"]


@pytest.mark.parametrize("wrap", [False, True], ids=["list", "data-key"])
def test_json_reads_a_list_or_a_wrapped_list(tmp_path, wrap):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": ROWS} if wrap else ROWS), encoding="utf-8")
    records = list(read_records(path))
    assert [r.data for r in records] == ROWS
    assert records[2].where == f"{path} item 2"


def test_json_single_object_is_one_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ROWS[0]), encoding="utf-8")
    assert [r.data for r in read_records(path)] == [ROWS[0]]


def test_csv_reads_rows_with_physical_line_numbers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('instruction,output\n"two\nlines",a\nq,"a, with comma"\n', encoding="utf-8")
    records = list(read_records(path))
    assert [r.data for r in records] == [{"instruction": "two\nlines", "output": "a"},
                                         {"instruction": "q", "output": "a, with comma"}]
    assert records[1].where == f"{path}:4"


def test_parquet_reads_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    records = list(read_records(path))
    assert [r.data for r in records] == ROWS
    assert records[1].where == f"{path} row 1"


def test_txt_is_one_text_record(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("first line\nsecond line\n", encoding="utf-8")
    records = list(read_records(path))
    assert [r.data for r in records] == [{"text": "first line\nsecond line\n"}]
    assert records[0].where == str(path)


def test_datasets_folder_reads_rows(tmp_path):
    import datasets

    folder = tmp_path / "ds"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    records = list(read_records(folder))
    assert [r.data for r in records] == ROWS
    assert records[0].where == f"{folder} row 0"


def test_datasets_dict_folder_reads_the_train_split(tmp_path):
    import datasets

    folder = tmp_path / "dd"
    datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS[:1]),
                          "train": datasets.Dataset.from_list(ROWS[1:])}).save_to_disk(str(folder))
    assert [r.data for r in read_records(folder)] == ROWS[1:]


def test_folder_that_is_not_a_dataset_is_a_data_error(tmp_path):
    (tmp_path / "junk").mkdir()
    assert "save_to_disk" in error_of(tmp_path / "junk")


def test_missing_file_and_unknown_suffix(tmp_path):
    assert "file not found" in error_of(tmp_path / "nope.jsonl")
    odd = tmp_path / "d.xlsx"
    odd.write_text("x")
    assert ".xlsx" in error_of(odd) and ".jsonl" in error_of(odd)


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"this is not parquet")
    message = error_of(path)
    assert str(path) in message and "Parquet" in message


# ---------------------------------------------------------------- truncated JSON


def test_truncated_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"instruction": "cut off here', encoding="utf-8")
    message = error_of(path)
    assert message.startswith(f"{path}:2: not valid JSON")


def test_truncated_json_file_names_file_and_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("[\n" + json.dumps(ROWS[0]) + ",\n" + '{"instruction": "cut', encoding="utf-8")
    assert error_of(path).startswith(f"{path}:3: not valid JSON")


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n", encoding="utf-8")
    assert error_of(path).startswith(f"{path}:2: expected a JSON object")


# ---------------------------------------------------------------- missing and wrong-typed fields (via normalise)


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], {"instruction": "no answer"}])
    message = load_error(path)
    assert message.startswith(f"{path}:2: missing field 'output'")


def test_wrong_typed_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [ROWS[0], ROWS[1], {"instruction": "q", "output": 42}])
    message = load_error(path)
    assert message.startswith(f"{path}:3: field 'output' must be str, got int")


def test_missing_and_wrong_fields_in_json_csv_parquet_and_datasets(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [ROWS[0], {"instruction": "q", "output": None}]
    json_path = tmp_path / "d.json"
    json_path.write_text(json.dumps(rows), encoding="utf-8")
    assert load_error(json_path).startswith(f"{json_path} item 1: missing field 'output'")

    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), pq_path)
    assert load_error(pq_path).startswith(f"{pq_path} row 1: missing field 'output'")

    folder = tmp_path / "ds"
    datasets.Dataset.from_list([{"text": "a", "label": 1.5}]).save_to_disk(str(folder))
    assert load_error(folder).startswith(f"{folder} row 0: field 'label' must be str or int, got float")

    csv_path = tmp_path / "d.csv"  # a CSV cell is always a string: a missing column is the csv-shaped mistake
    csv_path.write_text("prompt,answer\nq,a\n", encoding="utf-8")
    message = load_error(csv_path, format="prompt_completion")
    assert message.startswith(f"{csv_path}:2: missing field 'completion'") and "answer" in message


# ---------------------------------------------------------------- empty files


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", ".txt"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    assert error_of(path) == f"{path}: the file is empty"


def test_file_with_no_records(tmp_path):
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n", encoding="utf-8")
    assert error_of(blank) == f"{blank}: no records found"
    header_only = tmp_path / "header.csv"
    header_only.write_text("instruction,output\n", encoding="utf-8")
    assert error_of(header_only) == f"{header_only}: no records found"
    empty_list = tmp_path / "empty.json"
    empty_list.write_text("[]", encoding="utf-8")
    assert error_of(empty_list) == f"{empty_list}: no records found"


# ---------------------------------------------------------------- bytes that are not UTF-8


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".txt"])
def test_non_utf8_bytes_name_the_line(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    body = {
        ".jsonl": b'{"text": "fine"}\n{"text": "caf\xe9"}\n',
        ".json": b'[{"text": "fine"},\n {"text": "caf\xe9"}]',
        ".csv": b"text,label\nfine,a\ncaf\xe9,b\n",
        ".txt": b"fine\ncaf\xe9\n",
    }[suffix]
    path.write_bytes(body)
    line = 3 if suffix == ".csv" else 2
    message = error_of(path)
    assert message.startswith(f"{path}:{line}: ") and "UTF-8" in message


def test_non_utf8_rows_are_skippable_in_jsonl_and_csv(tmp_path):
    for path, body in [(tmp_path / "a.jsonl", b'{"text": "caf\xe9"}\n{"text": "ok"}\n'),
                       (tmp_path / "a.csv", b"text\ncaf\xe9\nok\n")]:
        path.write_bytes(body)
        bad: list[str] = []
        assert [r.data for r in read_records(path, skip_bad=True, bad=bad)] == [{"text": "ok"}]
        assert len(bad) == 1 and "UTF-8" in bad[0]


# ---------------------------------------------------------------- a 50 MB line


def big_jsonl(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps(ROWS[0]).encode() + b"\n")
        f.write(b'{"instruction": "huge", "output": "' + b"x" * BIG + b'"}\n')
        f.write(json.dumps(ROWS[1]).encode() + b"\n")
    return path


def test_50mb_jsonl_line_is_a_clear_error(tmp_path):
    path = big_jsonl(tmp_path)
    message = error_of(path)
    assert message.startswith(f"{path}:2: line is longer than 10,000,000 bytes")
    assert "max_record_bytes" in message


def test_50mb_jsonl_line_is_skipped_and_counted_with_skip_bad(tmp_path):
    path = big_jsonl(tmp_path)
    bad: list[str] = []
    records = list(read_records(path, skip_bad=True, bad=bad))
    assert [r.data for r in records] == ROWS[:2]
    assert [r.where for r in records] == [f"{path}:1", f"{path}:3"]  # counting resumes after the long line
    assert len(bad) == 1 and bad[0].startswith(f"{path}:2:")


def test_50mb_line_is_read_when_the_limit_allows_it(tmp_path):
    path = big_jsonl(tmp_path)
    records = list(read_records(path, max_record_bytes=BIG + 1000))
    assert len(records[1].data["output"]) == BIG


def test_50mb_csv_field_is_a_clear_error_or_skipped(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "wb") as f:
        f.write(b"instruction,output\nq1,a1\nhuge," + b"x" * BIG + b"\nq3,a3\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3: ") and "max_record_bytes" in message
    bad: list[str] = []
    records = list(read_records(path, skip_bad=True, bad=bad))
    assert [r.data["instruction"] for r in records] == ["q1", "q3"]
    assert len(bad) == 1 and bad[0].startswith(f"{path}:3:")


def test_50mb_json_record_is_a_clear_error_or_skipped(tmp_path):
    path = tmp_path / "big.json"
    with open(path, "wb") as f:
        f.write(b"[" + json.dumps(ROWS[0]).encode() + b',\n{"instruction": "huge", "output": "' + b"x" * BIG + b'"}]')
    message = error_of(path)
    assert message.startswith(f"{path} item 1: ") and "max_record_bytes" in message
    bad: list[str] = []
    assert [r.data for r in read_records(path, skip_bad=True, bad=bad)] == ROWS[:1]
    assert len(bad) == 1


def test_50mb_txt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(b"x" * BIG)
    message = error_of(path)
    assert message.startswith(f"{path}: ") and "max_record_bytes" in message


# ---------------------------------------------------------------- skip_bad end to end


def mixed_file(tmp_path):
    """10 good records and 4 bad ones of four kinds."""
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(10)]
    lines.insert(2, '{"instruction": "truncated')
    lines.insert(5, json.dumps({"instruction": "no output"}))
    lines.insert(7, json.dumps({"instruction": "q", "output": ["not", "a", "string"]}))
    lines.insert(9, '"just a string"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_skip_bad_lists_every_bad_record(tmp_path):
    path = mixed_file(tmp_path)
    assert load_error(path).startswith(f"{path}:3:")  # without skip_bad the first bad record stops the run
    loaded = load_records(str(path), DataConfig(skip_bad=True))
    assert loaded.format == "instruction"
    assert len(loaded.records) == 10
    assert [re.match(r".*:(\d+):", b).group(1) for b in loaded.bad] == ["3", "6", "8", "10"]
    assert "'output'" in loaded.bad[1] and "'output'" in loaded.bad[2]


def test_build_sft_counts_bad_records(tmp_path):
    from tunelab.models import byte_tokenizer

    path = mixed_file(tmp_path)
    data = build_sft(DataConfig(train=str(path), skip_bad=True, val_split=0.2), byte_tokenizer())
    assert len(data.bad) == 4
    assert data.stats["bad_records"] == 4
    assert data.stats["train"]["examples"] + data.stats["validation"]["examples"] == 10


def test_all_records_bad_is_still_an_error_with_skip_bad(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{oops\n{also bad\n", encoding="utf-8")
    message = load_error(path, skip_bad=True)
    assert "no usable records" in message and "2 bad" in message
