"""`tunelab ui` driven in a real browser (headless Chromium through Playwright).

One UI server runs for the module, over a workspace folder holding data and documents, with a
tiny random model as its default; the tests run in file order (later ones use the run the first
one trains). Each tab's screenshot is saved to screenshots/ui/ (or $TUNELAB_UI_SCREENSHOTS).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (make setup)")
pytest.importorskip("gradio", reason="tunelab ui needs gradio (make setup)")
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("headless Chromium is not installed (make browser, or apt-get install chromium)",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("TUNELAB_UI_SCREENSHOTS", ROOT / "screenshots" / "ui"))
LONG = 240_000  # ms: a job starts a process that imports torch before it does anything
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]
RECORDS = [{"instruction": f"Say the word number {i}.", "output": f"word {i % 5}"} for i in range(24)]
DOCUMENTS = {"install.txt": "To install tunelab, run pip install tunelab. The xylophone plugin needs a sound card.",
             "runs.txt": "Every training run is saved in the runs folder with its config and its metrics."}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ui-workspace")
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    labelled = [{"text": f"{'great fine lovely' if i % 2 else 'awful bad sad'} day {i}", "label": ["neg", "pos"][i % 2]}
                for i in range(24)]
    (folder / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labelled), encoding="utf-8")
    (folder / "docs").mkdir()
    for name, text in DOCUMENTS.items():
        (folder / "docs" / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def server(workspace, tiny_model_dir):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    log = open(workspace / "ui.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "ui", "--port", str(port), "--root",
                                str(workspace), "--root", str(tiny_model_dir.parent), "--model", str(tiny_model_dir)],
                               cwd=workspace, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tunelab ui ended: {(workspace / 'ui.log').read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        raise RuntimeError("tunelab ui did not answer within 180 s")
    yield url
    process.terminate()
    process.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser tab on the UI; fails the test if the page asked anything of another host."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    outside: list[str] = []
    tab.on("request", lambda r: outside.append(r.url) if not r.url.startswith((server, "data:", "blob:")) else None)
    tab.goto(server)
    expect(tab.get_by_role("tab", name="Train")).to_be_visible(timeout=60_000)
    yield tab
    context.close()
    assert not outside, f"the page called outside the machine: {outside}"


def _open(page, tab: str) -> None:
    page.get_by_role("tab", name=tab, exact=True).click()


def _fill(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id}").locator("textarea, input").first.fill(str(text))


def _choose(page, elem_id: str, *values: str) -> None:
    """Pick values in a Gradio dropdown (single or multiple)."""
    box = page.locator(f"#{elem_id} input").first
    for value in values:
        option = page.get_by_role("option", name=value, exact=True)
        for attempt in range(12):  # the choices may still be on their way (a tab's refresh): type again
            box.click()
            box.fill(value)
            try:
                option.click(timeout=5_000)
                break
            except PlaywrightTimeout:
                page.keyboard.press("Escape")
        else:
            raise AssertionError(f"{elem_id} never offered {value!r}")
    page.keyboard.press("Escape")


def _until(page, elem_id: str, text: str, error_id: str, timeout: int = LONG) -> None:
    """Wait until #elem_id shows `text`; fail at once, with its message, if #error_id shows an error."""
    target = page.locator(f"#{elem_id}").filter(has_text=text)
    error = page.locator(f"#{error_id}").filter(has_text="error")
    expect(target.or_(error).first).to_be_visible(timeout=timeout)
    assert not error.count(), error.first.inner_text()


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _train_form(page, data: Path, run_name: str, max_steps: int, logging_steps: int = 1) -> None:
    _open(page, "Train")
    _fill(page, "train-data-train", data)
    page.get_by_text("train", exact=True).first.click()  # open the `train` section
    _fill(page, "train-train-run-name", run_name)
    _fill(page, "train-train-max-steps", max_steps)
    _fill(page, "train-train-batch-size", 4)
    _fill(page, "train-train-logging-steps", logging_steps)


def test_train_tab_trains_a_run_and_shows_its_curve_and_summary(page, workspace):
    _train_form(page, workspace / "train.jsonl", "ui-lora", max_steps=8)
    page.locator("#train-plan-button").click()
    _until(page, "train-plan", "peak memory", "train-error")
    page.locator("#train-start").click()
    _until(page, "train-status", "finished", "train-error")
    expect(page.locator("#train-summary")).to_contain_text("train_loss")
    expect(page.locator("#train-loss").locator("canvas, svg").first).to_be_visible()
    folder = workspace / "runs" / "ui-lora"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 8 and (folder / "adapter").is_dir()
    assert sum("loss" in json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()) >= 8
    _shot(page, "train")


def test_a_bad_value_shows_the_schemas_message(page, workspace):
    from tunelab.config import resolve
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError) as schema:
        resolve({"train": {"lr": -1}}, "")
    _train_form(page, workspace / "train.jsonl", "never", max_steps=2)
    _fill(page, "train-train-lr", -1)
    page.locator("#train-start").click()
    expect(page.locator("#train-error")).to_contain_text(str(schema.value).split(";")[0])
    expect(page.locator("#train-error")).to_contain_text("greater than 0")
    assert not (workspace / "runs" / "never").exists()


def test_a_path_outside_the_folders_is_refused(page, workspace, tmp_path_factory):
    secret = tmp_path_factory.mktemp("elsewhere") / "secret.jsonl"
    secret.write_text(json.dumps(RECORDS[0]) + "\n")
    _open(page, "Data")
    for typed in (str(secret), "../" * 8 + str(secret).lstrip("/")):
        _fill(page, "data-file", typed)
        page.locator("#data-inspect").click()
        expect(page.locator("#data-error")).to_contain_text("outside the folders this UI may use")
    expect(page.locator("#data-summary")).not_to_contain_text("format")


def test_data_tab_shows_format_examples_and_lengths(page, workspace):
    _open(page, "Data")
    _fill(page, "data-file", "train.jsonl")  # relative to the first folder
    page.locator("#data-inspect").click()
    _until(page, "data-summary", "instruction", "data-error", timeout=60_000)
    expect(page.locator("#data-summary")).to_contain_text("examples: 24")
    expect(page.locator("#data-examples")).to_contain_text("Say the word number 0")
    expect(page.locator("#data-lengths img, #data-lengths svg, #data-lengths canvas").first).to_be_visible()
    page.get_by_text("curate: clean and deduplicate").click()
    page.locator("#data-clean").click()
    _until(page, "data-curated", "kept", "data-error")
    curated = workspace / ".tunelab-ui" / "data" / "train.clean.jsonl"
    expect(page.locator("#data-file").locator("textarea, input").first).to_have_value(str(curated))
    assert len(curated.read_text().splitlines()) == 24 and (workspace / "train.jsonl").is_file()
    _shot(page, "data")


def test_chat_streams_the_base_and_an_adapter_side_by_side(page):
    _open(page, "Chat")
    _choose(page, "chat-adapters", "ui-lora")
    expect(page.locator("#chat-answer-1")).to_be_visible()
    page.get_by_text("decoding and structured output").click()
    _fill(page, "chat-max-new-tokens", 300)
    _fill(page, "chat-temperature", 1.0)  # sampled: a tiny random model's greedy answer is blank lines
    _fill(page, "chat-seed", 0)
    page.locator("#chat-ignore-eos input").check()
    _fill(page, "chat-message", "hello there")
    page.locator("#chat-send").click()
    lengths = set()
    deadline = time.time() + 120
    base = page.locator("#chat-answer-0 .bot").last
    while time.time() < deadline:
        if base.count():
            lengths.add(len(base.inner_text()))
        if page.locator("#chat-answer-1 .bot").count() and len(lengths) > 2:
            break
        time.sleep(0.02)
    expect(page.locator("#chat-answer-1 .bot").last).not_to_be_empty(timeout=60_000)
    assert len([n for n in lengths if n]) >= 2, f"the answer did not arrive in pieces: lengths seen {sorted(lengths)}"
    _shot(page, "chat")


def test_runs_tab_in_a_second_browser_tab_sees_the_run(page):
    _open(page, "Runs")
    expect(page.locator("#runs-table")).to_contain_text("ui-lora", timeout=30_000)
    _choose(page, "runs-select", "ui-lora")
    expect(page.locator("#runs-summaries")).to_contain_text("train_loss")
    expect(page.locator("#runs-config")).to_contain_text("max_steps: 8")
    _shot(page, "runs")


def test_stop_resume_and_closing_the_browser_leave_training_alone(browser, server, workspace):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    first = context.new_page()
    first.goto(server)
    _train_form(first, workspace / "train.jsonl", "ui-long", max_steps=100_000, logging_steps=5)
    first.locator("#train-start").click()
    expect(first.locator("#train-status")).to_contain_text("step", timeout=LONG)
    context.close()  # the browser goes away; the run must not

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    second = context.new_page()
    second.goto(server)
    _open(second, "Train")
    _choose(second, "train-run", "ui-long")
    expect(second.locator("#train-status")).to_contain_text("running: step", timeout=60_000)
    second.locator("#train-stop").click()
    expect(second.locator("#train-status")).to_contain_text("stopped", timeout=LONG)
    folder = workspace / "runs" / "ui-long"
    stopped_at = json.loads((folder / "progress.json").read_text())["step"]
    assert any(p.name.startswith("checkpoint-") for p in (folder / "checkpoints").iterdir())
    assert not (folder / "summary.json").exists()

    second.locator("#train-resume").click()
    expect(second.locator("#train-status")).to_contain_text("running: step", timeout=LONG)
    deadline = time.time() + 120
    while json.loads((folder / "progress.json").read_text())["step"] <= stopped_at and time.time() < deadline:
        time.sleep(0.5)
    second.locator("#train-stop").click()
    expect(second.locator("#train-status")).to_contain_text("stopped", timeout=LONG)
    log = "\n".join(p.read_text() for p in (workspace / ".tunelab-ui" / "jobs").glob("train-*.log"))
    assert "--resume" in json.dumps([json.loads(p.read_text()) for p in (workspace / ".tunelab-ui" / "jobs")
                                     .glob("train-*.json")])
    assert json.loads((folder / "progress.json").read_text())["step"] > stopped_at, log
    context.close()


def test_evaluate_tab_shows_base_against_tuned(page):
    _open(page, "Evaluate")
    _choose(page, "eval-runs", "ui-lora")
    _fill(page, "eval-name", "ui-eval")
    page.locator("#eval-start").click()
    _until(page, "eval-status", "finished", "eval-error")
    expect(page.locator("#eval-report table").first).to_be_visible()
    expect(page.locator("#eval-report")).to_contain_text("ui-lora")
    _shot(page, "evaluate")


def test_export_tab_exports_and_verifies(page):
    _open(page, "Export")
    _choose(page, "export-run", "ui-lora")
    _fill(page, "export-verify-prompts", 2)
    _fill(page, "export-verify-tokens", 8)
    page.locator("#export-start").click()
    _until(page, "export-status", "finished", "export-error")
    expect(page.locator("#export-status")).to_contain_text("verification passed")
    expect(page.locator("#export-result")).to_contain_text("hf")
    _shot(page, "export")


def test_compare_tab_checks_the_task_then_runs_it_and_recommends(page):
    _open(page, "Compare")
    _fill(page, "compare-train", "labels.jsonl")
    page.locator("#compare-start").click()
    expect(page.locator("#compare-error")).to_contain_text("test: the task has no test data")
    _fill(page, "compare-test-split", 0.25)
    page.locator("#compare-routes .cm-content").fill("[zero-shot, probe]")
    page.locator("#compare-start").click()
    expect(page.locator("#compare-error")).not_to_contain_text("error")  # the first message is cleared
    _until(page, "compare-status", "finished", "compare-error")
    expect(page.locator("#compare-recommendation")).to_contain_text("recommended")
    expect(page.locator("#compare-report")).to_contain_text("probe")
    _shot(page, "compare")


@pytest.mark.slow
def test_rag_indexes_two_files_and_answers_with_a_citation(page, workspace):
    _open(page, "RAG")
    _fill(page, "rag-paths", f"{workspace / 'docs' / 'install.txt'}\ndocs/runs.txt")
    page.locator("#rag-index-button").click()
    _until(page, "rag-indexed", "2 files indexed", "rag-error")
    _fill(page, "rag-model", "smollm2-135m-instruct")
    _fill(page, "rag-question", "What does the xylophone plugin need?")
    page.locator("#rag-ask").click()
    _until(page, "rag-answer", "cited", "rag-error")
    expect(page.locator("#rag-answer")).to_contain_text("install.txt")
    expect(page.locator("#rag-sources")).to_contain_text("sound card")
    expect(page.locator("#rag-sources")).to_contain_text("yes")
    _shot(page, "rag")


def test_every_tab_has_a_screenshot(page):
    for tab in ("Compare", "Evaluate", "Export", "Runs", "Data", "Train", "Chat", "RAG"):
        _open(page, tab)
        time.sleep(0.5)
        if not (SHOTS / f"{tab.lower()}.png").exists():
            _shot(page, tab.lower())
    assert all((SHOTS / f"{t}.png").is_file() for t in ("data", "train", "runs", "evaluate", "chat", "compare",
                                                         "export")), sorted(p.name for p in SHOTS.glob("*.png"))
