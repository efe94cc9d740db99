"""The command line: generate, data, and clear errors with exit code 2."""

import json

from tunelab.cli import main


def test_generate_writes_outputs(tiny_model_dir, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p, "id": i}) for i, p in enumerate(["hi", "yo", "abc"])))
    out = tmp_path / "out.jsonl"
    rc = main(["generate", "--model", str(tiny_model_dir), "--input", str(prompts), "--output", str(out),
               "--max-new-tokens", "5", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9",
               "--repetition-penalty", "1.1", "--seed", "1", "--stop", "\n\n"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2] and all("output" in r for r in rows)


def test_data_command_reports_stats(tiny_model_dir, tmp_path, capsys):
    f = tmp_path / "d.jsonl"
    f.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    assert main(["data", str(f), "--model", str(tiny_model_dir)]) == 2
    assert "d.jsonl:2" in capsys.readouterr().err
    assert main(["data", str(f), "--model", str(tiny_model_dir), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "bad records skipped: 1" in out and "skipped:" in out


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "x.jsonl").write_text('{"prompt": "hi"}\n')
    rc = main(["generate", "--model", str(tmp_path / "nope"), "--input", str(tmp_path / "x.jsonl"), "--output",
               str(tmp_path / "y.jsonl")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope" in err and "Traceback" not in err
