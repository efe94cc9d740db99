"""End-to-end training on the tiny model: the run folder, reproducibility, resume,
atomic checkpoints, no silent overwrite, bad records, and the CLI's error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab import train
from tunelab.config import load_config, to_dict
from tunelab.errors import DataError, RunError
from tunelab.training import latest_checkpoint

SUMMARY_KEYS = {"wall_s", "tokens_trained", "tokens_per_s", "peak_rss_mb", "trainable_params", "total_params",
                "artifact_bytes", "skipped_records"}


def write_records(path: Path, n: int = 24, bad_line: int | None = None) -> Path:
    """n instruction records of varied length; line `bad_line` (1-based) is broken JSON."""
    lines = []
    for i in range(n):
        lines.append(json.dumps({"instruction": f"Add {i} and {i * 7 % 13}." + " Please." * (i % 4),
                                 "output": f"The sum is {i + i * 7 % 13}."}))
    if bad_line is not None:
        lines.insert(bad_line - 1, '{"instruction": "unterminated')
    path.write_text("\n".join(lines) + "\n")
    return path


def settings(model_dir, data, out, name, *extra) -> list[str]:
    return [f"model.name={model_dir}", f"data.train={data}", f"train.output_dir={out}", f"train.run_name={name}",
            "train.batch_size=4", "train.logging_steps=1", "train.lr=1e-3", *extra]


def final_loss(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r][-1]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(str(folder / name))


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=atol, msg=lambda m: f"{key}: {m}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("train")
    return root, write_records(root / "train.jsonl"), root / "runs"


@pytest.fixture(scope="module")
def lora_run(workdir, tiny_model_dir):
    """One LoRA SFT epoch (22 train + 2 validation records, batch 4: 6 steps)."""
    _, data, out = workdir
    cfg = load_config(None, settings(tiny_model_dir, data, out, "lora"))
    summary = train(cfg)
    return out / "lora", summary, cfg


# ---------------------------------------------------------------- the run folder


def test_run_folder_has_every_record(lora_run):
    run, summary, _ = lora_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses] == list(range(1, summary["steps"] + 1))
    assert all({"step", "loss", "tokens_per_s"} <= r.keys() for r in losses)
    assert any("eval_loss" in r for r in rows)

    saved = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= saved.keys()
    assert saved["skipped_records"] == 0 and saved["artifact"] == "adapter"
    assert 0 < saved["trainable_params"] < saved["total_params"]
    assert saved["artifact_bytes"] == sum(p.stat().st_size for p in (run / "adapter").rglob("*") if p.is_file())
    assert saved["tokens_per_s"] > 0 and saved["wall_s"] > 0 and saved["peak_rss_mb"] > 0
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


def test_tokens_trained_counts_training_tokens_only(lora_run):
    """One epoch trains every train token once; validation tokens are not training."""
    _, summary, _ = lora_run
    assert summary["tokens_trained"] == summary["data"]["train"]["tokens"]


def test_adapter_loads_with_plain_peft(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunelab.models import load_run

    run, _, _ = lora_run
    recorded = json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded) == tiny_model_dir.resolve()
    base = AutoModelForCausalLM.from_pretrained(recorded, dtype=torch.float32)
    ids = torch.tensor([[1, 70, 71, 72, 73, 2]])
    with torch.no_grad():
        plain_base = base(input_ids=ids).logits
        plain = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
        tuned = plain(input_ids=ids).logits
        ours, _ = load_run(run)
        ours_logits = ours.eval()(input_ids=ids).logits
    assert not torch.allclose(tuned, plain_base)  # the adapter learned something
    torch.testing.assert_close(ours_logits, tuned)


def test_config_yaml_repeats_the_run(lora_run, workdir):
    """config.yaml alone repeats the run, to the same final loss and weights (reproducible)."""
    run, summary, cfg = lora_run
    again = load_config(run / "config.yaml", ["train.run_name=lora-again"])
    expected = to_dict(cfg) | {"train": to_dict(cfg.train) | {"run_name": "lora-again"}}
    assert to_dict(again) == expected
    repeat = train(again)
    twin = Path(again.train.output_dir) / "lora-again"
    assert repeat["train_loss"] == summary["train_loss"]
    assert repeat["eval_loss"] == summary["eval_loss"]
    assert final_loss(twin) == final_loss(run)
    assert_same_weights(run / "adapter", twin / "adapter")


def test_full_method_saves_a_transformers_model(workdir, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    _, data, out = workdir
    summary = train(load_config(None, settings(tiny_model_dir, data, out, "full", "method=full",
                                               "train.max_steps=2", "data.val_split=0")))
    folder = out / "full" / "model"
    assert summary["artifact"] == "model" and not (out / "full" / "adapter").exists()
    assert summary["trainable_params"] == summary["total_params"]
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.dtype == torch.float32
    trained, base = weights(folder), load_file(str(tiny_model_dir / "model.safetensors"))
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 70, 71]])).logits).all()


# ---------------------------------------------------------------- resume


class SimulatedCrash(Exception):
    pass


def crash_at(monkeypatch, step: int) -> None:
    """Make the next run die at the end of optimizer step `step` (before any save at that step)."""
    from transformers import TrainerCallback

    from tunelab.training import setup

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise SimulatedCrash(f"killed at step {step}")

    class CrashingTrainer(setup.TunelabTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(Crash())

    monkeypatch.setattr(setup, "TunelabTrainer", CrashingTrainer)  # make_trainer builds every objective's trainer


def test_resume_matches_uninterrupted_run(workdir, tiny_model_dir, monkeypatch):
    """Killed after step 5 (last complete checkpoint: step 4), resumed: same data order, same
    optimizer and scheduler state, so the same final weights and loss as a run never stopped."""
    _, data, out = workdir
    common = ["train.max_steps=8", "train.save_steps=2", "train.save_total_limit=3", "data.val_split=0"]
    train(load_config(None, settings(tiny_model_dir, data, out, "straight", *common)))

    crash_at(monkeypatch, 5)
    with pytest.raises(SimulatedCrash):
        train(load_config(None, settings(tiny_model_dir, data, out, "resumed", *common)))
    monkeypatch.undo()
    run = out / "resumed"
    assert not (run / "summary.json").exists() and not (run / "adapter").exists()
    assert latest_checkpoint(run) == run / "checkpoints" / "checkpoint-4"

    summary = train(load_config(None, settings(tiny_model_dir, data, out, "resumed", *common, "train.resume=true")))
    assert summary["resumed_from"] == "checkpoint-4"
    assert summary["steps"] == 8
    assert final_loss(run) == pytest.approx(final_loss(out / "straight"), rel=1e-6)
    assert_same_weights(out / "straight" / "adapter", run / "adapter", atol=1e-7)


def test_latest_checkpoint_ignores_unfinished_writes(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in [("checkpoint-2", True), ("checkpoint-10", True), ("checkpoint-12", False),
                           (".staging-checkpoint-14", True)]:
        (root / name).mkdir(parents=True)
        (root / name / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (root / name / "COMPLETE").write_text("{}")
    assert latest_checkpoint(tmp_path) == root / "checkpoint-10"  # numeric order, not text order
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_checkpoints_are_complete_and_staging_is_gone(workdir):
    _, _, out = workdir
    root = out / "straight" / "checkpoints"  # written by the resume test's uninterrupted run
    if not root.is_dir():
        pytest.skip("needs test_resume_matches_uninterrupted_run's run")
    names = sorted(p.name for p in root.iterdir())
    assert names == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]  # save_total_limit=3
    assert all((root / n / "COMPLETE").is_file() for n in names)


# ---------------------------------------------------------------- user work and bad input


def test_finished_run_is_not_overwritten(workdir, tiny_model_dir):
    _, data, out = workdir
    base = settings(tiny_model_dir, data, out, "keep", "train.max_steps=1", "data.val_split=0")
    train(load_config(None, base))
    before = {p.name: p.read_bytes() for p in (out / "keep").iterdir() if p.is_file()}
    with pytest.raises(RunError, match="train.overwrite"):
        train(load_config(None, base + ["train.lr=5e-3"]))
    assert {p.name: p.read_bytes() for p in (out / "keep").iterdir() if p.is_file()} == before
    summary = train(load_config(None, base + ["train.lr=5e-3", "train.overwrite=true"]))
    assert summary["steps"] == 1
    assert load_config(out / "keep" / "config.yaml").train.lr == 5e-3


def test_bad_record_stops_the_run_or_is_skipped_and_counted(workdir, tiny_model_dir, capsys):
    from tunelab.cli import main

    root, _, out = workdir
    data = write_records(root / "with_bad.jsonl", bad_line=3)
    sets = settings(tiny_model_dir, data, out, "bad", "train.max_steps=1", "data.val_split=0")
    with pytest.raises(DataError, match=r"with_bad\.jsonl:3"):
        train(load_config(None, sets))

    argv = ["train", "--skip-bad"] + [arg for s in sets for arg in ("--set", s)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["skipped_records"] == 1
    assert json.loads((out / "bad" / "summary.json").read_text())["skipped_records"] == 1


def test_cli_bad_config_key_is_one_line_and_exit_2(capsys):
    from tunelab.cli import main

    assert main(["train", "--set", "train.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bogus" in err
    assert len(err.splitlines()) == 1
