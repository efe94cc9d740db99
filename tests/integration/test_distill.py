"""Distillation end to end on tiny models: the student moves toward the teacher (held-out
KL falls) with lora and full, the run folder is complete, resume matches an uninterrupted
run, and teachers that cannot teach this student are refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.jsonl import read_jsonl, write_jsonl
from tunelab import train
from tunelab.config import load_config
from tunelab.errors import ConfigError
from tunelab.training import latest_checkpoint


def records(n: int = 24) -> list[dict]:
    return [{"instruction": f"Add {i} and {i * 7 % 13}.", "output": f"The sum is {i + i * 7 % 13}."}
            for i in range(n)]


def settings(student, teacher, data, out, name, *extra) -> list[str]:
    return [f"model.name={student}", "objective=distill", f"objective.teacher={teacher}", f"data.train={data}",
            f"train.output_dir={out}", f"train.run_name={name}", "train.batch_size=4", "train.logging_steps=1",
            "train.lr=1e-2", "train.warmup_ratio=0", *extra]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A student and two teachers fine-tuned from it by sft: a LoRA run (loaded as a run
    folder, adapter on base) and a full run (its model/ folder, loaded as a plain folder).

    The larger init_std gives the tiny model's frozen head room for confident
    predictions, so the teachers differ clearly from the student (held-out KL ~5 nats).
    """
    from tunelab.models import save_tiny

    root = tmp_path_factory.mktemp("distill")
    data = write_jsonl(root / "train.jsonl", records())
    student = save_tiny(root / "student", init_std=0.2)
    out = root / "runs"
    for method, lr in [("lora", "2e-2"), ("full", "3e-3")]:
        train(load_config(None, [f"model.name={student}", f"data.train={data}", f"train.output_dir={out}",
                                 f"train.run_name=teacher-{method}", f"method={method}", "train.batch_size=4",
                                 f"train.lr={lr}", "train.max_steps=10", "data.val_split=0"]))
    return root, data, out, student, {"lora": out / "teacher-lora", "full": out / "teacher-full" / "model"}


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("method,teacher,lr", [("lora", "lora", "1e-2"), ("full", "full", "3e-3"),
                                               ("qlora", "full", "1e-2")])
def test_student_moves_toward_teacher(workdir, method, teacher, lr):
    _, data, out, student, teachers = workdir
    name = f"distill-{method}"
    summary = train(load_config(None, settings(student, teachers[teacher], data, out, name, f"method={method}",
                                               f"train.lr={lr}", "train.max_steps=12", "data.val_split=0.25",
                                               "objective.ce_weight=0.1")))
    assert summary["kl_after"] < 0.5 * summary["kl_before"], summary
    assert summary["steps"] == 12 and summary["artifact"] == ("model" if method == "full" else "adapter")

    run = out / name
    for file in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png"):
        assert (run / file).is_file(), file
    assert (run / summary["artifact"]).is_dir()
    rows = read_jsonl(run / "metrics.jsonl")
    assert rows[0] == {"step": 0, "kl_before": summary["kl_before"]}
    assert {"step": 12, "kl_after": summary["kl_after"]} in rows
    trained = [r for r in rows if "loss" in r]
    assert len(trained) == 12 and all({"kl", "ce"} <= r.keys() for r in trained)
    assert load_config(run / "config.yaml").objective.teacher == str(teachers[teacher])


def test_lora_teacher_is_merged_and_computes_what_its_run_does(workdir):
    import torch

    from tunelab.models import load_run
    from tunelab.objectives.distill import load_teacher

    _, _, _, _, teachers = workdir
    merged, _ = load_teacher(str(teachers["lora"]))
    assert not hasattr(merged, "peft_config") and not any(p.requires_grad for p in merged.parameters())
    run, _ = load_run(teachers["lora"])
    ids = torch.tensor([[1, 70, 71, 72, 73, 2]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, run.eval()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


class SimulatedCrash(Exception):
    pass


def test_resume_matches_uninterrupted_run(workdir, monkeypatch):
    """Killed after step 3 (last complete checkpoint: step 2), resumed: same final loss and weights."""
    from transformers import TrainerCallback

    from tests.integration.test_train import assert_same_weights
    from tunelab.objectives import distill

    _, data, out, student, teachers = workdir
    teacher = teachers["lora"]
    common = ["train.max_steps=5", "train.save_steps=2", "data.val_split=0", "objective.kl=reverse"]
    train(load_config(None, settings(student, teacher, data, out, "straight", *common)))

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise SimulatedCrash("killed at step 3")

    class CrashingTrainer(distill.DistillTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Crash())

    monkeypatch.setattr(distill, "DistillTrainer", CrashingTrainer)
    with pytest.raises(SimulatedCrash):
        train(load_config(None, settings(student, teacher, data, out, "resumed", *common)))
    monkeypatch.undo()
    run = out / "resumed"
    assert latest_checkpoint(run) == run / "checkpoints" / "checkpoint-2"

    summary = train(load_config(None, settings(student, teacher, data, out, "resumed", *common, "train.resume=true")))
    assert summary["resumed_from"] == "checkpoint-2" and summary["steps"] == 5
    assert losses(run)[-1] == pytest.approx(losses(out / "straight")[-1], rel=1e-6)
    assert_same_weights(out / "straight" / "adapter", run / "adapter", atol=1e-7)


def test_teacher_with_another_vocabulary_is_refused(workdir):
    from tunelab.models import byte_tokenizer, tiny_llama

    root, data, out, student, _ = workdir
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["<extra_a>", "<extra_b>"])
    model, _ = tiny_llama(tokenizer)
    model.save_pretrained(root / "wider")
    tokenizer.save_pretrained(root / "wider")
    with pytest.raises(ConfigError, match=r"objective\.teacher: teacher .*wider and student .*student have different "
                                          r"vocabularies .*2 only in the teacher, 0 only in the student"):
        train(load_config(None, settings(student, root / "wider", data, out, "wider")))
    assert not (out / "wider").exists()


def test_teacher_with_another_output_size_is_refused(workdir):
    from tunelab.models import tiny_llama

    root, data, out, student, _ = workdir
    model, tokenizer = tiny_llama()
    model.resize_token_embeddings(len(tokenizer) + 4)  # same tokens, a padded output layer
    model.save_pretrained(root / "padded")
    tokenizer.save_pretrained(root / "padded")
    size = len(tokenizer)
    with pytest.raises(ConfigError, match=rf"predicts over {size + 4} tokens but student .* over {size}"):
        train(load_config(None, settings(student, root / "padded", data, out, "padded")))


@pytest.mark.parametrize("teacher,message", [
    ("", "objective.teacher: got ''; string should have at least 1 character .model alias, model folder"),
    ("{root}/no-such-run", "objective.teacher: .*no-such-run"),
])
def test_missing_teacher_is_refused(workdir, teacher, message):
    root, data, out, student, _ = workdir
    with pytest.raises(ConfigError, match=message):
        train(load_config(None, settings(student, teacher.format(root=root), data, out, "missing")))
    assert not (out / "missing").exists()
