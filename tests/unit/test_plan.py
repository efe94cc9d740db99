"""tunelab plan: parameter counts read without loading weights equal the loaded model's, the memory
breakdown moves the way each setting moves it, advice appears when a run will not fit, and a
training run records the prediction beside its outcome."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main
from tunelab.compare import plan
from tunelab.compare.devices import GPUS, gpu
from tunelab.compare.planner import Skeleton
from tunelab.config import load_config
from tests.jsonl import write_jsonl

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan-data")
    rows = [{"instruction": f"Say {i} twice.", "output": f"{i} {i}" + " and more" * (i % 5)} for i in range(24)]
    pairs = [{"prompt": f"Pick {i}", "chosen": f"{i}", "rejected": f"not {i} at all"} for i in range(12)]
    labelled = [{"text": f"text number {i}", "label": i % 2} for i in range(16)]
    return {"sft": write_jsonl(folder / "sft.jsonl", rows), "dpo": write_jsonl(folder / "pairs.jsonl", pairs),
            "classify": write_jsonl(folder / "labels.jsonl", labelled)}


def run_config(model_dir, data, objective="sft", method="lora", *extra):
    file = data[objective if objective in data else "sft"]
    return load_config(None, [f"model.name={model_dir}", f"data.train={file}",
                              f"objective={objective}", f"method={method}", "data.max_length=64",
                              "train.batch_size=4", *extra])


@pytest.mark.parametrize("objective, method", [("sft", "lora"), ("sft", "full"), ("sft", "freeze"), ("sft", "ia3"),
                                               ("sft", "prompt"), ("sft", "prefix"), ("sft", "adapter"),
                                               ("classify", "head"), ("classify", "lora"), ("dpo", "lora")])
def test_parameter_counts_match_the_loaded_model(tiny_model_dir, data, objective, method):
    from tunelab.training.setup import load_for_training, parameter_counts

    cfg = run_config(tiny_model_dir, data, objective, method)
    extra = {"num_labels": 2} if objective == "classify" else {}
    model, _ = load_for_training(cfg, "classify" if objective == "classify" else "causal_lm", **extra)
    counts = parameter_counts(model)
    skeleton = Skeleton.of(cfg)
    assert (skeleton.trainable, skeleton.total) == (counts["trainable_params"], counts["total_params"])


def test_the_breakdown_moves_with_each_setting(tiny_model_dir, data):
    base = plan(run_config(tiny_model_dir, data), probe=False)
    assert base.fits and base.peak_mb == pytest.approx(sum(base.memory_mb.values()), abs=1)
    assert base.memory_mb["optimizer states"] == pytest.approx(2 * base.memory_mb["gradients"], rel=0.01)
    double = plan(run_config(tiny_model_dir, data, "sft", "lora", "train.batch_size=8"), probe=False)
    assert double.memory_mb["activations"] == pytest.approx(2 * base.memory_mb["activations"], rel=0.01)
    assert double.steps == pytest.approx(base.steps / 2, abs=1)
    checkpointed = plan(run_config(tiny_model_dir, data, "sft", "lora", "train.gradient_checkpointing=true"),
                        probe=False)
    # two blocks: one h-vector per block plus one block's worth, against every block's worth
    assert checkpointed.memory_mb["activations"] < 0.7 * base.memory_mb["activations"]
    full = plan(run_config(tiny_model_dir, data, "sft", "full"), probe=False)
    assert full.trainable_params == full.total_params
    assert full.memory_mb["gradients"] * MIB == 4 * full.trainable_params  # float32 gradients
    assert full.memory_mb["optimizer states"] * MIB == 8 * full.trainable_params  # AdamW's two moments
    qlora = plan(run_config(tiny_model_dir, data, "sft", "qlora"), probe=False)
    assert qlora.memory_mb["weights (frozen)"] < base.memory_mb["weights (frozen)"] / 3
    assert qlora.trainable_params == base.trainable_params
    pairs = plan(run_config(tiny_model_dir, data, "dpo", "lora"), probe=False)
    assert pairs.data["sequences"] == 2 * pairs.data["examples"]  # chosen and rejected
    no_reference = plan(run_config(tiny_model_dir, data, "dpo", "lora", "objective=orpo"), probe=False)
    assert pairs.flops_per_step > 1.3 * no_reference.flops_per_step  # DPO also runs the reference forward


def test_a_run_that_does_not_fit_says_what_to_change(tiny_model_dir, data, monkeypatch):
    import tunelab.compare.planner as planning

    monkeypatch.setattr(planning, "_rss_bytes", lambda: 500 * MIB)  # the process, held still between the two plans
    cfg = run_config(tiny_model_dir, data, "sft", "full")
    roomy = plan(cfg, probe=False)
    short = roomy.peak_mb - roomy.memory_mb["activations"] / 2  # half the activations too little
    monkeypatch.setattr(planning, "_machine_mb", lambda: short)
    p = plan(cfg, probe=False)
    assert not p.fits
    text = "\n".join(p.advice)
    assert "more than the" in text and "train.batch_size" in text and "gradient_checkpointing" in text
    assert "method lora" in text and "WARNING" in p.table()


def test_named_gpus_use_their_table_figures(tiny_model_dir, data):
    p = plan(run_config(tiny_model_dir, data), device="h100")
    assert p.device == "h100" and p.available_mb == pytest.approx((GPUS["h100"].memory_gb - 1) * 1024)
    assert "35% of the h100" in p.throughput_source
    assert p.seconds_per_step == pytest.approx(p.flops_per_step / (GPUS["h100"].tflops * 0.35e12), rel=0.01)
    assert {"t4", "l4", "a10g", "rtx4090", "a100-40gb", "a100-80gb", "h100"} <= set(GPUS)
    with pytest.raises(Exception, match="choose one of"):
        gpu("tpu-v9")


def test_the_command_and_its_errors(tiny_model_dir, data, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name: {tiny_model_dir}}}\ndata: {{train: {data['sft']}, max_length: 64}}\n")
    assert main(["plan", str(config), "--no-probe", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fits"] and out["trainable_params"] > 0 and out["memory_mb"]["activations"] > 0
    assert main(["plan", str(config), "--set", "train.batchsize=4"]) == 2  # checked before anything loads
    assert "did you mean train.batch_size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", str(config), "--device", "tpu-v9"])
    assert exit_info.value.code == 2


def test_training_records_the_prediction_beside_the_outcome(tiny_model_dir, data, tmp_path):
    from tunelab.objectives import run

    cfg = run_config(tiny_model_dir, data, "sft", "lora", f"train.output_dir={tmp_path}", "train.run_name=planned",
                     "train.max_steps=2")
    summary = run(cfg)
    saved = json.loads((tmp_path / "planned" / "summary.json").read_text())
    assert saved["plan"]["steps"] == 2 and saved["plan"]["trainable_params"] == summary["trainable_params"]
    assert set(saved["plan_error"]) == {"peak_rss_mb", "train_runtime_s"}
    assert saved["plan_error"]["peak_rss_mb"] == pytest.approx(saved["plan"]["peak_mb"] / saved["peak_rss_mb"] - 1,
                                                               abs=0.002)
