"""The UI's parts without a browser: generated forms read back, the folder fence, auth, jobs, run folders."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

gr = pytest.importorskip("gradio", reason="tunelab ui needs gradio (make setup)")

from tunelab.config import DecodingConfig, resolve, run_schema  # noqa: E402
from tunelab.errors import ConfigError  # noqa: E402
from tunelab.ui import runs  # noqa: E402
from tunelab.ui.context import flag_args, set_args  # noqa: E402
from tunelab.ui.forms import UNSET, Form  # noqa: E402
from tunelab.ui.jobs import Jobs  # noqa: E402
from tunelab.ui.settings import Sandbox, read_auth, safe_name  # noqa: E402


def _form(cls, **kwargs) -> Form:
    with gr.Blocks():
        return Form(cls, "t", **kwargs)


def _values(form: Form, **changed) -> list:
    """What the page sends: every input at its shown value, with `changed` (dotted keys) typed in."""
    out = [changed.get(k, c.value) for k, c in form.choosers.items()]
    for f in form.fields:
        out.append(changed.get(f.key, f.component.value))
    return out


def test_an_untouched_run_form_reads_back_as_no_keys_and_resolves_to_the_defaults():
    form = _form(run_schema())
    assert form.raw(_values(form)) == {}
    assert resolve(form.raw(_values(form))).model_dump() == resolve({}).model_dump()
    assert {"method", "objective"} <= set(form.choosers)
    assert all(f.component.elem_id.startswith("t-") for f in form.fields)


def test_a_method_shows_and_sends_only_its_own_options():
    form = _form(run_schema())
    lora_r = next(f for f in form.fields if f.key == "method.r" and f.member == ("method", "lora"))
    assert lora_r.component.value == 16
    raw = form.raw(_values(form, **{"method.r": 8}))
    assert raw == {"method": {"name": "lora", "r": 8}}
    # a value typed into another method's section is not sent while that method is not chosen
    other = next(f for f in form.fields if f.member and f.member[0] == "method" and f.member[1] != "lora"
                 and f.kind == "number" and f.key.count(".") == 1)
    assert form.raw(_values(form, **{other.key: 999})) == {}
    chosen = form.raw(_values(form, method=other.member[1], **{other.key: 3}))
    assert chosen["method"]["name"] == other.member[1] and chosen["method"][other.key.split(".")[1]] == 3


def test_numbers_text_lines_yaml_and_choices_read_back_typed():
    form = _form(run_schema())
    raw = form.raw(_values(form, **{"train.lr": 1e-3, "train.max_steps": 7.0, "data.limit": "5",
                                    "data.columns": "question: prompt", "train.precision": "fp32",
                                    "model.attn_implementation": UNSET}))
    assert raw == {"train": {"lr": 1e-3, "max_steps": 7, "precision": "fp32"},
                   "data": {"limit": 5, "columns": {"question": "prompt"}}}
    decoding = _form(DecodingConfig)
    assert decoding.raw(_values(decoding, stop="###\n\nEND\n")) == {"stop": ["###", "END"]}


def test_a_bad_value_gets_the_schemas_own_message():
    form = _form(run_schema())
    with pytest.raises(ConfigError, match=r"train\.lr: got -1; input should be greater than 0"):
        resolve(form.raw(_values(form, **{"train.lr": -1})), "")
    with pytest.raises(ConfigError, match=r"data\.limit: got 'five'"):
        resolve(form.raw(_values(form, **{"data.limit": "five"})), "")
    with pytest.raises(ConfigError, match=r"data\.columns: not valid YAML"):
        form.raw(_values(form, **{"data.columns": "a: [unclosed"}))


def test_a_group_with_its_own_defaults_shows_them_and_leaves_them_out():
    from tunelab.rag.pipeline import RagConfig

    form = _form(RagConfig)
    min_score = next(f for f in form.fields if f.key == "retrieval.min_score")
    assert min_score.default == 0.3 and min_score.component.value == "0.3"  # RagConfig's, not the group's own
    assert form.raw(_values(form)) == {}
    assert RagConfig.load(form.raw(_values(form, **{"decoding.max_new_tokens": 32}))).decoding.max_new_tokens == 32


def test_the_fence_refuses_paths_outside_its_folders(tmp_path):
    inside, outside = tmp_path / "work", tmp_path / "private"
    inside.mkdir(), outside.mkdir()
    (inside / "data.jsonl").write_text("{}\n")
    (outside / "secret.jsonl").write_text("{}\n")
    (inside / "link.jsonl").symlink_to(outside / "secret.jsonl")
    fence = Sandbox([inside])
    assert fence.path("data.jsonl") == (inside / "data.jsonl").resolve()
    for typed in (str(outside / "secret.jsonl"), "../private/secret.jsonl", "link.jsonl", "/etc/passwd", "~"):
        with pytest.raises(ConfigError, match="outside the folders this UI may use"):
            fence.path(typed, "data file")
    with pytest.raises(ConfigError, match="no such file"):
        fence.path("missing.jsonl")
    assert fence.model("smollm2-135m-instruct") == "smollm2-135m-instruct"  # an alias is not a path
    with pytest.raises(ConfigError, match="outside"):
        fence.model(str(outside))


def test_auth_from_a_flag_or_a_file_and_names_that_cannot_be_paths(tmp_path):
    assert read_auth("ana:s3cret:with-colon") == [("ana", "s3cret:with-colon")]
    users = tmp_path / "users.txt"
    users.write_text("# who may use the UI\nana:one\n\nbo:two\n")
    assert read_auth(str(users)) == [("ana", "one"), ("bo", "two")]
    users.write_text("ana:one\nbo\n")
    with pytest.raises(ConfigError, match=rf"{users}:2: expected USER:PASS"):
        read_auth(str(users))
    assert safe_name("sft-lora-20261203") == "sft-lora-20261203"
    for bad in ("../runs", "a/b", "", ".hidden", "x" * 101):
        with pytest.raises(ConfigError):
            safe_name(bad)


def test_flags_and_overrides_for_the_commands_a_job_runs():
    from tunelab.compress.export import ExportConfig

    assert flag_args(ExportConfig, {"format": "gguf", "verify": False, "verify_prompts": 2}) == \
        ["--format", "gguf", "--no-verify", "--verify-prompts", "2"]
    assert set_args({"batch_size": 4, "harness": ["a", "b"], "run_name": "x"}) == \
        ["--set", "batch_size=4", "--set", "harness=[a, b]", "--set", "run_name=x"]


def test_a_job_runs_in_its_own_session_and_its_result_is_read_back(tmp_path):
    jobs = Jobs(tmp_path / "state", tmp_path)
    job = jobs.start("env", ["env", "--json"], tmp_path / "out")
    assert os.getsid(job.pid) == job.pid  # its own session: the UI's end is not its end
    deadline = time.time() + 120
    while jobs.state(job) == "running" and time.time() < deadline:
        time.sleep(0.2)
    assert jobs.state(job) == "finished"
    assert jobs.result(job)["hardware"]["cores"] >= 1
    again = Jobs(tmp_path / "state", tmp_path)  # another UI process sees the same jobs
    assert [j.id for j in again.all("env")] == [job.id] and again.latest(tmp_path / "out").rc == 0
    assert not again.stop(job)


def test_a_failed_job_says_so(tmp_path):
    jobs = Jobs(tmp_path / "state", tmp_path)
    job = jobs.start("train", ["train", str(tmp_path / "missing.yaml")], tmp_path / "run")
    deadline = time.time() + 120
    while jobs.state(job) == "running" and time.time() < deadline:
        time.sleep(0.2)
    assert jobs.state(job) == "failed" and "missing.yaml" in jobs.tail(job)


def test_run_folders_read_for_status_progress_curves_and_summaries(tmp_path):
    done, stopped, fresh = tmp_path / "done", tmp_path / "stopped", tmp_path / "fresh"
    for folder in (done, stopped, fresh):
        folder.mkdir()
        (folder / "config.yaml").write_text("model: {name: tiny}\nmethod: {name: lora}\nobjective: {name: sft}\n")
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7}]
    (done / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    (done / "summary.json").write_text(json.dumps({"steps": 2, "train_loss": 1.75}))
    (stopped / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (stopped / "progress.json").write_text(json.dumps({"step": 5, "max_steps": 20, "loss": 1.234, "eta_s": 30}))
    assert [runs.status(f, False) for f in (done, stopped, fresh)] == ["finished", "stopped", "incomplete"]
    assert runs.status(fresh, True) == "running"
    assert runs.progress_line(stopped, "running") == "running: step 5 / 20 (25%), loss 1.234, ETA 30 s"
    curves = runs.curves([done, stopped])
    assert list(curves["curve"]) == ["done train", "done train", "done validation"]  # the half line is skipped
    table = runs.summaries([done])
    assert table.set_index("figure").loc["train_loss", "done"] == "1.75"
    overview = runs.overview(runs.run_folders(tmp_path), set())
    assert set(overview["run"]) == {"done", "stopped", "fresh"} and set(overview["method"]) == {"lora"}


def test_listening_beyond_loopback_without_auth_warns(tmp_path, capsys):
    import socket

    from tunelab.ui.app import launch
    from tunelab.ui.settings import UIConfig

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app, url = launch(UIConfig(host="0.0.0.0", port=port, root=[str(tmp_path)], max_upload_mb=3), block=False)
    try:
        assert "no --auth" in capsys.readouterr().err
        assert app.max_file_size == 3 * 1024 * 1024 and not app.share
        assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
        assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / ".tunelab-ui" / "uploads")
    finally:
        app.close()
    assert sys.modules["gradio"]


def test_structured_output_choices_from_the_chat_tab():
    from tunelab.ui.tabs.chat import _constraint

    assert _constraint("none", "anything") is None
    assert _constraint("choice", "yes\n\nno\n") is not None
    assert _constraint("json_schema", '{"type": "object"}') is not None
    with pytest.raises(ConfigError, match="json_schema: not valid JSON"):
        _constraint("json_schema", "{type: object")
    with pytest.raises(ConfigError, match="give the regex"):
        _constraint("regex", "  ")


def test_sigterm_asks_training_to_save_and_stop_and_gives_the_signal_back():
    import signal

    from transformers import TrainerControl

    from tunelab.training.callbacks import StopOnSignal

    before = signal.getsignal(signal.SIGTERM)
    stopper, control = StopOnSignal(), TrainerControl()
    stopper.on_train_begin(None, None, control)
    assert signal.getsignal(signal.SIGTERM) == stopper._request
    stopper.on_step_end(None, None, control)
    assert not control.should_save and not control.should_training_stop
    os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process lives on
    stopper.on_step_end(None, None, control)
    assert stopper.requested and control.should_save and control.should_training_stop
    stopper.restore()  # what setup.train does also when training raised
    assert signal.getsignal(signal.SIGTERM) == before
