"""`tunelab eval` end to end on tiny models: a run folder's base vs tuned, every task kind, the
harness bridge, the report files, and one clear error per kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.jsonl import write_jsonl
from tunelab import train
from tunelab.cli import main
from tunelab.config import load_config
from tunelab.eval import evaluate, load_eval_config
from tunelab.eval.config import TaskConfig
from tunelab.eval.harness import choice_task_yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    """A LoRA SFT run on the tiny model, with a held-out validation split of JSON answers."""
    out = tmp_path_factory.mktemp("runs")
    rows = [{"prompt": f"Make a record for item {i}", "completion": json.dumps({"id": i, "ok": i % 2 == 0})}
            for i in range(20)]
    data = write_jsonl(out / "train.jsonl", rows)
    train(load_config(None, [f"model.name={tiny_model_dir}", f"data.train={data}", "data.val_split=0.25",
                             f"train.output_dir={out}", "train.run_name=sft", "train.max_steps=3", "train.lr=1e-2",
                             "train.precision=fp32", "method=lora", "method.r=4"]))
    return out / "sft"


def test_run_folder_is_evaluated_base_vs_tuned_on_its_validation_split(sft_run, tmp_path, capsys):
    rc = main(["eval", str(sft_run), "--output-dir", str(tmp_path), "--name", "e", "--dtype", "fp32"])
    assert rc == 0, capsys.readouterr().err
    folder = tmp_path / "e"
    report = json.loads((folder / "report.json").read_text())
    assert report["models"] == ["base", "sft"]
    task = report["tasks"]["sft-validation"]
    assert task["kind"] == "generate" and task["n"] == 5  # round(20 * 0.25) held out, as in training
    for name in ("base", "sft"):
        figures = task["results"][name]
        assert {"exact_match", "f1", "rouge_l", "json_valid", "field_accuracy"} <= set(figures)
    assert set(task["diff"]["sft"]) >= {"exact_match", "f1"}
    assert report["config"]["run"] == str(sft_run)
    # the held-out records written for the report are the ones training held out
    held = [json.loads(x) for x in (folder / "data" / "sft-validation.jsonl").read_text().splitlines()]
    cfg = load_config(sft_run / "config.yaml")
    from tunelab.data.dataset import load_records, split_records

    _, validation, _ = split_records(load_records(cfg.data.train, cfg.data), cfg.data, cfg.train.seed)
    assert [h["messages"][-1]["content"] for h in held] == [v["messages"][-1]["content"] for v in validation]
    md = (folder / "report.md").read_text()
    assert "| metric | base | sft | Δ sft |" in md
    assert "data:image/png;base64," in (folder / "report.html").read_text()
    samples = [json.loads(x) for x in (folder / "samples" / "sft-validation.sft.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and {"prompt", "gold", "output"} <= set(samples[0])


def test_every_task_kind_from_the_example_config(tiny_model_dir, sft_run, tmp_path, monkeypatch):
    """examples/eval/compare.yaml with the tiny model standing in for the default, plus the tuned run."""
    monkeypatch.chdir(ROOT)
    models = [{"name": "base", "model": str(tiny_model_dir)}, {"name": "tuned", "adapter": str(sft_run)}]
    cfg = load_eval_config(ROOT / "examples" / "eval" / "compare.yaml", None,
                           {"models": models, "judge": {"model": str(tiny_model_dir), "max_new_tokens": 8},
                            "output_dir": str(tmp_path), "run_name": "all", "dtype": "fp32"})
    for task in cfg.tasks:
        task.limit = 4
        task.decoding.max_new_tokens = 8
    report = evaluate(cfg)
    tasks = report["tasks"]
    assert tasks["quiz"]["results"]["tuned"]["n"] == 4 and "acc_norm" in tasks["quiz"]["diff"]["tuned"]
    assert tasks["field_notes"]["results"]["base"]["perplexity"] > 1
    assert "numeric_accuracy" in tasks["arithmetic"]["results"]["base"]
    assert "label_accuracy" in tasks["reviews"]["results"]["tuned"]
    bias = tasks["bias"]["results"]["base"]
    assert bias["pairs"] == 4 and 0 <= bias["stereotype_share"] <= 1 and "categories" not in bias  # one category
    grades = tasks["helpfulness"]["results"]
    assert set(grades) == {"base", "tuned"} and grades["base"]["n"] == 4
    assert grades["base"]["invalid"] + sum(r is not None for r in grades["base"]["ratings"]) == 4


def test_pairwise_judge_compares_each_model_with_the_first(tiny_model_dir, sft_run, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Say {w}"} for w in ("hi", "yes", "no")])
    cfg = load_eval_config(base={
        "models": [{"name": "base", "model": str(tiny_model_dir)}, {"name": "tuned", "adapter": str(sft_run)}],
        "tasks": [{"name": "chat", "kind": "judge", "file": str(prompts), "decoding": {"max_new_tokens": 6}}],
        "judge": {"model": str(tiny_model_dir), "max_new_tokens": 6}, "output_dir": str(tmp_path)})
    result = evaluate(cfg)["tasks"]["chat"]["results"]["tuned"]
    assert result["n"] == 3 and result["win"] + result["tie"] + result["loss"] == 3
    assert {"win_rate_lo95", "win_rate_hi95", "position_consistency"} <= set(result)


def test_harness_bridge_agrees_with_the_same_choice_task(tiny_model_dir, tmp_path):
    rows = [{"text": t, "label": y} for t, y in [("a fine film", 1), ("dull", 0), ("loved it", 1), ("awful", 0),
                                                 ("so good", 1), ("not good", 0)]]
    data = write_jsonl(tmp_path / "s.jsonl", rows)
    task = TaskConfig(name="sst", kind="choice", file=str(data), template="{text}\nSentiment:",
                      choices=["negative", "positive"], gold_field="label")
    include = tmp_path / "harness_tasks"
    include.mkdir()
    (include / "tl_sst.yaml").write_text(choice_task_yaml(task, "tl_sst"))
    cfg = load_eval_config(base={"models": [{"name": "base", "model": str(tiny_model_dir)}],
                                 "tasks": [vars(task)], "harness": ["tl_sst"], "harness_include": str(include),
                                 "output_dir": str(tmp_path), "dtype": "fp32"})
    tasks = evaluate(cfg)["tasks"]
    ours, theirs = tasks["sst"]["results"]["base"], tasks["harness:tl_sst"]["results"]["base"]
    for metric in ("acc", "acc_norm", "acc_bytes"):
        assert ours[metric] == pytest.approx(theirs[metric])


def test_adapters_from_the_command_line_default_to_their_runs_base(sft_run, tmp_path, capsys):
    data = write_jsonl(tmp_path / "mc.jsonl", [{"context": "q", "choices": ["a", "b"], "gold": 0}] * 3)
    rc = main(["eval", "--adapter", f"lora={sft_run}", "--adapter", str(sft_run), "--tasks", f"{data}:choice",
               "--output-dir", str(tmp_path), "--name", "cli"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["models"] == ["base", "lora", "sft"]
    assert report["config"]["models"][0]["model"] == load_config(sft_run / "config.yaml").model.name
    results = report["tasks"]["mc"]["results"]
    assert results["lora"]["acc"] == results["sft"]["acc"]  # the same adapter under two names


def test_unknown_harness_task_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    rc = main(["eval", "--model", str(tiny_model_dir), "--harness", "no_such_task_xyz", "--output-dir", str(tmp_path)])
    assert rc == 2 and "no_such_task_xyz not found" in capsys.readouterr().err


def test_pretraining_run_is_evaluated_by_perplexity(tiny_model_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"line {i} of a small corpus about foxes and dogs" for i in range(80)) + "\n")
    train(load_config(None, [f"model.name={tiny_model_dir}", f"data.train={corpus}", "objective=pt",
                             f"train.output_dir={tmp_path}", "train.run_name=pt", "data.max_length=32",
                             "train.max_steps=2", "train.precision=fp32"]))
    report = evaluate(load_eval_config(base={"run": str(tmp_path / "pt"), "output_dir": str(tmp_path)}))
    task = report["tasks"]["pt-validation"]
    assert task["kind"] == "perplexity"
    assert task["results"]["pt"]["perplexity"] > 1 and "bits_per_byte" in task["diff"]["pt"]


# ---------------------------------------------------------------- bad input: one clear message each


def test_model_that_cannot_load(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    data = write_jsonl(tmp_path / "mc.jsonl", [{"context": "q", "choices": ["a", "b"], "gold": 0}])
    for model in (str(tmp_path / "missing"), str(broken)):
        rc = main(["eval", "--model", model, "--tasks", f"{data}:choice", "--output-dir", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("error:") and Path(model).name in err and "Traceback" not in err


@pytest.mark.parametrize("rows,needle", [
    ([{"context": "q", "choices": ["a", "b"], "gold": 5}], "mc.jsonl:1: gold index 5 is out of range"),
    ([{"context": "q", "choices": ["a", "b"]}], "mc.jsonl:1: choice task 'mc' needs a 'gold' field"),
    ([], "mc.jsonl: the file is empty"),
])
def test_bad_task_file_fails_before_any_model_loads(tmp_path, capsys, rows, needle):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the model does not exist either: the data error must come first
    rc = main(["eval", "--model", str(tmp_path / "no-model"), "--tasks", f"{data}:choice",
               "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err


def test_existing_report_is_not_overwritten(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "mc.jsonl", [{"context": "q", "choices": ["a", "b"], "gold": 0}])
    args = ["eval", "--model", str(tiny_model_dir), "--tasks", f"{data}", "--output-dir", str(tmp_path), "--name", "r"]
    assert main(args) == 0
    assert main(args) == 2 and "already there" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_pairwise_judge_needs_two_models(tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    rc = main(["eval", "--model", str(tiny_model_dir), "--tasks", f"{prompts}:judge", "--judge", str(tiny_model_dir),
               "--output-dir", str(tmp_path)])
    assert rc == 2 and "give at least two models" in capsys.readouterr().err


def test_bad_gold_answer_is_found_before_generating(tmp_path, capsys):
    data = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "answer": "#### 4"}, {"prompt": "b", "answer": "7"},
                                              {"prompt": "c", "answer": "none"}])
    rc = main(["eval", "--model", str(tmp_path / "no-model"), "--tasks", f"{data}:generate:numeric",
               "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "g.jsonl:3" in err and "numeric" in err, err


def test_a_late_failure_keeps_the_figures_already_measured(tiny_model_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "mc.jsonl", [{"context": "q", "choices": ["a", "b"], "gold": 0}] * 2)
    rc = main(["eval", "--model", str(tiny_model_dir), "--model", str(tmp_path / "gone"), "--tasks", str(data),
               "--output-dir", str(tmp_path), "--name", "late"])
    assert rc == 2 and "gone" in capsys.readouterr().err
    report = json.loads((tmp_path / "late" / "report.json").read_text())
    first = report["models"][0]
    assert report["complete"] is False and report["tasks"]["mc"]["results"][first]["n"] == 2
    # an unfinished report does not block running again under the same name
    assert main(["eval", "--model", str(tiny_model_dir), "--tasks", str(data), "--output-dir", str(tmp_path),
                 "--name", "late"]) == 0


def test_task_specs_on_the_command_line(tmp_path):
    from tunelab.cli import _task_spec

    args = {}  # the --limit / --max-new-tokens ... given: none
    assert _task_spec(r"C:\data\qa.jsonl:generate:exact_match+f1", args) == {
        "file": r"C:\data\qa.jsonl", "kind": "generate", "metrics": ["exact_match", "f1"]}
    assert _task_spec("p.jsonl:judge:single", args)["mode"] == "single"
    endings = write_jsonl(tmp_path / "h.jsonl", [{"ctx": "c", "endings": ["a", "b"], "gold": 0}])
    assert _task_spec(str(endings), args) == {"file": str(endings), "kind": "choice", "choices_field": "endings"}


def test_the_prompting_example_config(tiny_model_dir, tiny_embedder_dir, tmp_path, monkeypatch):
    """examples/eval/prompting.yaml: zero-shot, few-shot (random, similar), chain-of-thought with votes."""
    monkeypatch.chdir(ROOT)
    cfg = load_eval_config(ROOT / "examples" / "eval" / "prompting.yaml", None,
                           {"models": [{"name": "base", "model": str(tiny_model_dir)}], "output_dir": str(tmp_path),
                            "run_name": "prompting", "dtype": "fp32"})
    for task in cfg.tasks:
        task.limit, task.decoding.max_new_tokens, task.fewshot_embedder = 4, 8, str(tiny_embedder_dir)
    tasks = evaluate(cfg)["tasks"]
    assert set(tasks) == {"reviews_zero_shot", "reviews_4shot_random", "reviews_4shot_similar", "arithmetic_cot_sc"}
    for name in ("reviews_zero_shot", "reviews_4shot_random", "reviews_4shot_similar"):
        assert tasks[name]["results"]["base"]["n"] == 4 and "label_accuracy" in tasks[name]["results"]["base"]
    for name, turns in (("reviews_zero_shot", 1), ("reviews_4shot_similar", 9)):  # 4 solved examples, then the question
        (path,) = (tmp_path / "prompting" / "samples").glob(f"{name}.*")
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == 4 and all(len(r["prompt"]) == turns if turns > 1 else isinstance(r["prompt"], str)
                                      for r in rows)
    voted = tasks["arithmetic_cot_sc"]["results"]["base"]
    assert voted["n"] == 4 and "numeric_accuracy" in voted and "answered" in voted
