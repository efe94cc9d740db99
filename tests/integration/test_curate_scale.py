"""Curation at scale: the same files from one process, from two worker processes, and from Ray Data in local
mode with two workers; and the input read as a stream, never held."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.data.curate import dedup as dedup_module
from tunelab.data.curate.dedup import DedupConfig, find_in_stream

WORDS = ("river town mill miller family water spring summer stone bridge road farm goat hill lake pine wood north "
         "morning evening market bread baker church bell school child garden apple tree field harvest rain").split()


def _corpus(folder: Path) -> tuple[Path, Path]:
    """A training file with planted exact and near copies and junk, and an evaluation file that part of it
    copies from."""
    rng = random.Random(7)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80))).capitalize() + "."
                  for _ in range(120)]
    rows = [{"text": p} for p in paragraphs]
    for p in paragraphs[:20]:  # near copies: a few words changed
        words = p.split()
        for _ in range(3):
            words[rng.randrange(len(words))] = rng.choice(WORDS)
        rows.append({"text": " ".join(words)})
    rows += [{"text": p.upper()} for p in paragraphs[20:30]]  # exact copies, once normalised
    rows += [{"text": "Click here to subscribe. " * 8}, {"text": "x" * 5}]
    rows += [{"instruction": "Say it again.", "output": p} for p in paragraphs[30:40]]
    rng.shuffle(rows)
    train = folder / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    evaluation = folder / "eval.jsonl"
    evaluation.write_text("".join(json.dumps({"question": " ".join(p.split()[:30])}) + "\n"
                                  for p in paragraphs[100:105]), encoding="utf-8")
    return train, evaluation


def _commands(train: Path, evaluation: Path, out: Path) -> list[list[str]]:
    return [["data", "clean", str(train), str(out / "clean.jsonl")],
            ["data", "dedup", str(evaluation), str(train), "-o", str(out / "dedup")],
            ["data", "decontaminate", str(train), "--against", str(evaluation), "-o", str(out / "decon.jsonl")]]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_worker_processes_write_the_same_files_as_one(tmp_path, capsys):
    train, evaluation = _corpus(tmp_path)
    for workers in ("1", "2"):
        out = tmp_path / f"workers-{workers}"
        for command in _commands(train, evaluation, out):
            assert main([*command, "--workers", workers]) == 0
    one, two = _files(tmp_path / "workers-1"), _files(tmp_path / "workers-2")
    assert one == two and len(one) == 7  # clean + dropped, two deduplicated files + clusters, decon + removed
    clusters = [json.loads(line) for line in one["dedup/clusters.jsonl"].decode().splitlines()]
    assert sum(len(c["removed"]) for c in clusters) >= 30  # the planted near and exact copies
    assert one["decon.removed.jsonl"].count(b"\n") == 5


def test_dedup_reads_its_input_once_as_a_stream(monkeypatch):
    """The records pass through as a generator: none is held after it is hashed (the signatures go to disk)."""
    held = []
    monkeypatch.setattr(dedup_module, "_embed", lambda *a: pytest.fail("no embedding asked for"))

    def stream():
        for i in range(3000):
            held.append(i)
            yield (f"record {i} " + " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(30)), 0)

    found = find_in_stream(stream(), DedupConfig(), workers=1)
    assert found.records == 3000 and len(held) == 3000


@pytest.fixture(scope="module")
def ray_two_workers():
    """One local Ray for the module's tests, started as `--ray local --workers 2` starts it (two workers and a
    CPU for reading and regrouping); it must leave no token behind in ~/.ray, which would lock this user out
    of clusters started later with `ray start`."""
    pytest.importorskip("ray", reason="the Ray engine needs ray (pip install 'tunelab[ray]')")
    from tunelab.data.curate.on_ray import session

    token = Path.home() / ".ray" / "auth_token"
    existed = token.exists()
    with session("local", 2):
        yield
    assert token.exists() == existed


def test_ray_data_with_two_workers_writes_the_same_files_as_one_process(tmp_path, ray_two_workers):
    train, evaluation = _corpus(tmp_path)
    for command in _commands(train, evaluation, tmp_path / "local"):
        assert main(command) == 0
    for command in _commands(train, evaluation, tmp_path / "ray"):
        assert main([*command, "--ray", "auto", "--workers", "2"]) == 0
    local, on_ray = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert local == on_ray and len(local) == 7


def test_ray_local_from_the_command_line_and_the_semantic_check_refused(tmp_path):
    pytest.importorskip("ray", reason="the Ray engine needs ray (pip install 'tunelab[ray]')")
    train, evaluation = _corpus(tmp_path)
    tunelab = shutil.which("tunelab", path=str(Path(sys.executable).parent))
    done = subprocess.run([tunelab, "data", "clean", str(train), str(tmp_path / "clean.jsonl"), "--ray", "local",
                           "--workers", "2"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["records"] == 162
    assert main(["data", "clean", str(train), str(tmp_path / "here.jsonl")]) == 0
    assert (tmp_path / "clean.jsonl").read_bytes() == (tmp_path / "here.jsonl").read_bytes()
    done = subprocess.run([tunelab, "data", "dedup", str(train), "-o", str(tmp_path / "d.jsonl"), "--semantic",
                           "--ray", "local"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "semantic" in done.stderr and "without --ray" in done.stderr
