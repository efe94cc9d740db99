"""Several adapters on one base model: load_adapters, switching and disabling them, the
refusal of non-peft results, and `tunelab generate --adapter NAME=RUN --use NAME`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.jsonl import write_jsonl
from tunelab.config import load_config
from tunelab.errors import ModelError
from tunelab.models import load_adapters, load_run
from tunelab.objectives import run

IDS = torch.tensor([[1, 70, 71, 72, 73, 2], [1, 80, 81, 82, 83, 84]])


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA runs (other data, other seed), one IA3 run and one bottleneck-adapter run."""
    root = tmp_path_factory.mktemp("multi")
    words = ["cat", "dog", "sun", "red", "box", "cup", "pen", "map"]
    repeat = write_jsonl(root / "repeat.jsonl", [{"instruction": f"Repeat {w}", "output": w} for w in words])
    spell = write_jsonl(root / "spell.jsonl",
                        [{"instruction": f"Spell {w}", "output": " ".join(w.upper())} for w in words])
    out = root / "runs"
    plan = {"a": (repeat, "lora", []), "b": (spell, "lora", ["train.seed=7"]), "c": (repeat, "ia3", []),
            "bottleneck": (repeat, "adapter", [])}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test thread setting; tiny models want one
    try:
        for name, (data, method, extra) in plan.items():
            run(load_config(None, [f"model.name={tiny_model_dir}", f"data.train={data}", "data.val_split=0",
                                   f"method={method}", f"train.output_dir={out}", f"train.run_name={name}",
                                   "train.precision=fp32", "train.batch_size=4", "train.max_steps=3",
                                   "train.lr=1e-2", "train.logging_steps=1", *extra]))
    finally:
        torch.set_num_threads(threads)
    return {name: out / name for name in plan}


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model.eval()(input_ids=IDS).logits


@pytest.fixture(scope="module")
def alone(runs) -> dict[str, torch.Tensor]:
    """Each peft run's logits, loaded on its own with load_run."""
    return {name: logits(load_run(runs[name])[0]) for name in ("a", "b", "c")}


@pytest.fixture(scope="module")
def base_logits(tiny_model_dir) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return logits(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32))


def check_switching(model, alone: dict, base_logits: torch.Tensor, names: list[str]) -> None:
    for name in names:
        model.set_adapter(name)
        torch.testing.assert_close(logits(model), alone[name], rtol=0, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")
    with model.disable_adapter():
        assert torch.equal(logits(model), base_logits)


def test_two_lora_adapters_switch_and_disable(runs, alone, base_logits):
    model, tokenizer = load_adapters({"a": runs["a"], "b": runs["b"]})
    assert set(model.peft_config) == {"a", "b"}
    assert model.active_adapter == "a"  # the first one given
    torch.testing.assert_close(logits(model), alone["a"], rtol=0, atol=1e-6)
    assert not torch.allclose(alone["a"], alone["b"], atol=1e-4)  # the two runs learned different things
    assert not torch.allclose(alone["a"], base_logits, atol=1e-4)
    check_switching(model, alone, base_logits, ["a", "b"])
    check_switching(model, alone, base_logits, ["b", "a"])  # switching back and forth is stateless
    assert tokenizer.pad_token is not None


def test_an_ia3_adapter_loads_alone(runs, alone, base_logits):
    model, _ = load_adapters({"c": runs["c"]})
    check_switching(model, alone, base_logits, ["c"])


def test_lora_and_ia3_adapters_on_one_base_work_or_are_refused_by_name(runs, alone, base_logits):
    try:
        model, _ = load_adapters({"a": runs["a"], "b": runs["b"], "c": runs["c"]})
    except ModelError as e:  # refusing the mix is acceptable when the message names the adapter
        assert "adapter c" in str(e)
        return
    check_switching(model, alone, base_logits, ["a", "b", "c"])


def test_a_bottleneck_adapter_is_refused_by_name(runs):
    with pytest.raises(ModelError, match=r"adapter bottleneck .*not a peft adapter"):
        load_adapters({"a": runs["a"], "bottleneck": runs["bottleneck"]})


def test_no_adapters_is_an_error():
    with pytest.raises(ModelError):
        load_adapters({})


# ---------------------------------------------------------------- the CLI


@pytest.fixture
def prompts(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Repeat cat"}, {"prompt": "Spell dog"},
                                                    {"prompt": "Repeat a longer word"}])


def generate_argv(runs, tiny_model_dir, prompts: Path, out: Path, use: str) -> list[str]:
    return ["generate", "--adapter", f"a={runs['a']}", "--adapter", f"b={runs['b']}", "--use", use,
            "--input", str(prompts), "--output", str(out), "--model", str(tiny_model_dir), "--max-new-tokens", "5"]


def test_cli_generates_with_the_chosen_adapter(runs, tiny_model_dir, prompts, tmp_path, capsys):
    from tunelab.cli import main
    from tunelab.infer import DecodingConfig, generate
    from tunelab.models import load_run
    from tunelab.hardware import compute_dtype

    out = tmp_path / "out.jsonl"
    assert main(generate_argv(runs, tiny_model_dir, prompts, out, "b")) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Repeat cat", "Spell dog", "Repeat a longer word"]
    model, tok = load_run(runs["b"], base=str(tiny_model_dir), dtype=compute_dtype("auto"))
    alone = generate(model, tok, [r["prompt"] for r in rows], DecodingConfig(max_new_tokens=5))
    assert [r["output"] for r in rows] == alone  # the answers are adapter b's
    assert "wrote 3 generations" in capsys.readouterr().out


def test_cli_unknown_adapter_name_exits_2(runs, tiny_model_dir, prompts, tmp_path, capsys):
    from tunelab.cli import main

    out = tmp_path / "out.jsonl"
    assert main(generate_argv(runs, tiny_model_dir, prompts, out, "zzz")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "zzz" in err
    assert not out.exists()
