"""`tunelab rag index | search | eval | ask` end to end with a tiny embedder and a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.cli import main

DOCS = {
    "install.md": "# Install\n\nRun pip install tunelab on Linux. The xylophone plugin needs a sound card.",
    "usage.txt": "Call tunelab train with a config file to fine-tune a model on your data.",
    "faq.txt": "Models are saved in the runs folder. Each run keeps its config and metrics.",
}


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def _run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["rag", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_index_search_eval_and_ask(tmp_path, docs, tiny_embedder_dir, tiny_model_dir, capsys):
    store = tmp_path / "store"
    code, out, err = _run(capsys, "index", docs, "--store", store, "--embedder", tiny_embedder_dir)
    assert code == 0, err
    assert "3 files indexed" in out and "0 unchanged" in out and (store / "store.json").is_file()
    code, out, _ = _run(capsys, "index", docs, "--store", store)  # the store keeps its embedder
    assert code == 0 and "0 files indexed" in out and "3 unchanged" in out

    code, out, _ = _run(capsys, "search", "xylophone plugin", "--store", store, "--mode", "bm25", "-k", "2")
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith("[1] score=") and "install.md, Install" in first
    assert "[2]" not in out  # only one chunk shares a word with the query

    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Which plugin needs a sound card?", "answer": "xylophone", "gold_source": "install.md"},
        {"question": "Where are models saved?", "answer": "runs folder", "gold_source": "faq.txt"}]) + "\n",
        encoding="utf-8")
    report = tmp_path / "out" / "report.json"
    code, out, _ = _run(capsys, "eval", qa, "--store", store, "--output", report)
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| mode | hit@1 | hit@5 | recall@5")
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["dense", "bm25", "hybrid"]
    saved = json.loads(report.read_text(encoding="utf-8"))
    assert set(saved["retrieval"]) == {"dense", "bm25", "hybrid"}
    assert saved["retrieval"]["bm25"]["questions"] == 2 and saved["retrieval"]["bm25"]["hit@5"] == 1.0
    assert saved["answers"] is None

    code, out, err = _run(capsys, "ask", "Which plugin needs a sound card?", "--store", store, "--model",
                          tiny_model_dir, "--json", "--max-new-tokens", "4", "--min-score", "-1", "-k", "2")
    assert code == 0, err
    answer = json.loads(out.strip().splitlines()[-1])
    assert answer["question"] == "Which plugin needs a sound card?" and isinstance(answer["answer"], str)
    assert answer["refused"] is False
    assert [s["number"] for s in answer["sources"]] == [1, 2]
    assert all(Path(s["source"]).name in DOCS for s in answer["sources"])


def test_ask_on_a_missing_store_says_how_to_make_one(tmp_path, tiny_model_dir, capsys):
    store = tmp_path / "nowhere"
    code, _, err = _run(capsys, "ask", "anything?", "--store", store, "--model", tiny_model_dir)
    assert code == 2
    assert str(store) in err and "tunelab rag index" in err
    assert not store.exists()
    code, _, err = _run(capsys, "search", "anything", "--store", store)
    assert code == 2 and not store.exists()


def test_index_of_a_missing_path_fails_cleanly(tmp_path, tiny_embedder_dir, capsys):
    store = tmp_path / "store"
    code, _, err = _run(capsys, "index", tmp_path / "no-such-folder", "--store", store, "--embedder",
                        tiny_embedder_dir)
    assert code == 2 and "no-such-folder" in err and "no such file" in err
    assert not store.exists()
