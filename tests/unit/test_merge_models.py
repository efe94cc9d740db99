"""`tunelab merge`: mergekit merges, run folders as models, LoRA adapter merges (peft), mixtures of
experts (mergekit-moe), the checks made before anything heavy, and outputs never left half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.jsonl import write_jsonl
from tunelab.compress.merge import merge, merge_kind
from tunelab.errors import ConfigError, ModelError
from tunelab.models import load_run, save_tiny

IDS = torch.tensor([[1, 70, 71, 72, 73, 2], [1, 80, 81, 82, 83, 84]])


def perturbed(base: Path, folder: Path, seed: int, scale: float = 0.02) -> Path:
    """A "fine-tune" of `base`: every weight moved a little, saved as its own model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny base, two fine-tunes of it, one with another hidden size and one with a larger vocabulary."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("merge-models")
    base = save_tiny(root / "base")
    wide_vocab = root / "wide-vocab"
    model = AutoModelForCausalLM.from_pretrained(str(base))
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    tokenizer.add_tokens([f"<extra{i}>" for i in range(8)])
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(str(wide_vocab))
    tokenizer.save_pretrained(str(wide_vocab))
    return {"base": base, "ft1": perturbed(base, root / "ft1", 1), "ft2": perturbed(base, root / "ft2", 2),
            "narrow": save_tiny(root / "narrow", hidden=32), "wide_vocab": wide_vocab}


@pytest.fixture(scope="module")
def runs(models, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA runs on the tiny base (other data, other seed)."""
    from tunelab.config import load_config
    from tunelab.objectives import run

    root = tmp_path_factory.mktemp("merge-runs")
    words = ["cat", "dog", "sun", "red", "box", "cup", "pen", "map"]
    repeat = write_jsonl(root / "repeat.jsonl", [{"instruction": f"Repeat {w}", "output": w} for w in words])
    spell = write_jsonl(root / "spell.jsonl",
                        [{"instruction": f"Spell {w}", "output": " ".join(w.upper())} for w in words])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test thread setting
    try:
        for name, data, seed in (("a", repeat, 42), ("b", spell, 7)):
            run(load_config(None, [f"model.name={models['base']}", f"data.train={data}", "data.val_split=0",
                                   "method=lora", f"train.output_dir={root}", f"train.run_name={name}",
                                   "train.precision=fp32", "train.batch_size=4", "train.max_steps=3",
                                   "train.lr=1e-2", f"train.seed={seed}", "train.logging_steps=1"]))
    finally:
        torch.set_num_threads(threads)
    return {"a": root / "a", "b": root / "b"}


def write(folder: Path, config: dict, name: str = "merge.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    return model.eval()(input_ids=IDS).logits


def state(folder: Path) -> dict[str, torch.Tensor]:
    return load(folder).state_dict()


def kit_config(method: str, models: list, **extra) -> dict:
    return {"merge_method": method, "models": models, "dtype": "float32", **extra}


# ---------------------------------------------------------------- mergekit merges


def test_linear_half_and_half_is_the_average(models, tmp_path):
    config = write(tmp_path, kit_config("linear", [{"model": str(models["ft1"]), "parameters": {"weight": 0.5}},
                                                 {"model": str(models["ft2"]), "parameters": {"weight": 0.5}}]))
    out = merge(config, tmp_path / "out")
    assert out == tmp_path / "out" and (out / "tokenizer.json").is_file() and (out / "mergekit_config.yml").is_file()
    one, two, merged = state(models["ft1"]), state(models["ft2"]), state(out)
    assert set(merged) == set(one)
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, (one[name] + two[name]) / 2, rtol=0, atol=1e-6, msg=name)
    assert not list(tmp_path.glob("out.*")), "no staging or scratch folder is left beside the output"


def test_slerp_at_zero_is_the_first_model(models, tmp_path):
    config = write(tmp_path, kit_config("slerp", [{"model": str(models["ft1"])}, {"model": str(models["ft2"])}],
                                      base_model=str(models["ft1"]), parameters={"t": 0.0}))
    merged, first = state(merge(config, tmp_path / "out")), state(models["ft1"])
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, first[name], rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "dare_ties"])
def test_task_vector_methods_give_loadable_finite_models(models, tmp_path, method):
    params = {"weight": 0.5, **({"density": 0.5} if method != "task_arithmetic" else {})}
    config = write(tmp_path, kit_config(method, [{"model": str(models["ft1"]), "parameters": params},
                                               {"model": str(models["ft2"]), "parameters": params}],
                                      base_model=str(models["base"])))
    out = merge(config, tmp_path / "out", dtype="bf16")
    model = load(out)
    assert torch.isfinite(logits(model)).all()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    base = state(models["base"])
    assert any(not torch.equal(t, base[n]) for n, t in model.state_dict().items())


def test_a_run_folder_stands_for_a_model(models, runs, tmp_path):
    """runs/a (a LoRA run) is written merged into its base first: all weight on it gives the run's answers."""
    config = write(tmp_path, kit_config("linear", [{"model": str(runs["a"]), "parameters": {"weight": 1.0}},
                                                 {"model": str(models["ft1"]), "parameters": {"weight": 0.0}}]))
    out = merge(config, tmp_path / "out")
    torch.testing.assert_close(logits(load(out)), logits(load_run(runs["a"])[0]), rtol=0, atol=1e-4)
    assert not list(tmp_path.glob("out.inputs-*")), "the run's exported folder is removed afterwards"


def test_an_alias_stands_for_its_folder(models, tmp_path, monkeypatch):
    from tunelab.models import hub

    monkeypatch.setitem(hub.ALIASES, "tiny-ft1", hub.Alias("tiny-ft1", "tiny_ft1", "model", "nothing to install"))
    monkeypatch.setattr(hub, "alias_file", lambda alias: models["ft1"])  # the packaged folder of the alias
    config = write(tmp_path, kit_config("slerp", [{"model": "tiny-ft1"}, {"model": str(models["ft2"])}],
                                        base_model="tiny-ft1", parameters={"t": 0.0}))
    merged, first = state(merge(config, tmp_path / "out")), state(models["ft1"])
    for name, tensor in merged.items():
        torch.testing.assert_close(tensor, first[name], rtol=0, atol=1e-6, msg=name)


# ---------------------------------------------------------------- adapter merges (peft)


def test_adapter_linear_merge_is_a_run_that_loads(runs, tmp_path):
    config = write(tmp_path, {"adapters": {"repeat": str(runs["a"]), "spell": str(runs["b"])},
                              "weights": [0.5, 0.5], "combination_type": "linear"})
    assert merge_kind(yaml.safe_load(config.read_text())) == "adapters"
    out = merge(config, tmp_path / "out")
    assert (out / "config.yaml").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    merged = logits(load_run(out)[0])
    alone = {name: logits(load_run(run)[0]) for name, run in runs.items()}
    assert torch.isfinite(merged).all()
    for name, each in alone.items():
        assert not torch.allclose(merged, each, atol=1e-4), f"the merge answers like {name} alone"


def test_adapter_cat_merge_is_exact(runs, tmp_path):
    """cat stacks the adapters' factors: all weight on one gives exactly that adapter."""
    config = write(tmp_path, {"adapters": [{"run": str(runs["a"]), "weight": 1.0},
                                           {"run": str(runs["b"]), "weight": 0.0}]})
    out = merge(config, tmp_path / "out")
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 32  # two rank-16 adapters side by side
    torch.testing.assert_close(logits(load_run(out)[0]), logits(load_run(runs["a"])[0]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("combination", ["ties", "dare_ties", "svd"])
def test_adapter_merges_of_other_combinations_run(runs, tmp_path, combination):
    config = write(tmp_path, {"adapters": [str(runs["a"]), str(runs["b"])], "combination_type": combination,
                              **({"density": 0.5} if combination != "svd" else {})})
    assert torch.isfinite(logits(load_run(merge(config, tmp_path / "out"))[0])).all()


def test_adapter_merge_refuses_bad_settings(runs, tmp_path):
    with pytest.raises(ConfigError, match="density"):
        merge(write(tmp_path, {"adapters": [str(runs["a"]), str(runs["b"])], "combination_type": "ties"}),
              tmp_path / "out")
    with pytest.raises(ConfigError, match="3 weights for 2 adapters"):
        merge(write(tmp_path, {"adapters": [str(runs["a"]), str(runs["b"])], "weights": [1, 1, 1]}), tmp_path / "out")
    with pytest.raises(ModelError, match=r"adapters\.b: .*nowhere"):
        merge(write(tmp_path, {"adapters": {"a": str(runs["a"]), "b": str(tmp_path / "nowhere")}}), tmp_path / "out")
    with pytest.raises(ConfigError, match="dtyp.*did you mean dtype"):
        merge(write(tmp_path, {"adapters": [str(runs["a"])]}), tmp_path / "out", dtyp="bf16")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- mixture of experts (mergekit-moe)


@pytest.mark.parametrize("gate_mode", ["hidden", "random"])
def test_moe_from_two_fine_tunes_loads_and_generates(models, tmp_path, gate_mode):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = write(tmp_path, {"base_model": str(models["base"]), "gate_mode": gate_mode, "dtype": "float32",
                              "experts": [{"source_model": str(models["ft1"]), "positive_prompts": ["repeat a word"]},
                                          {"source_model": str(models["ft2"]), "positive_prompts": ["spell it out"]}]})
    assert merge_kind(yaml.safe_load(config.read_text())) == "moe"
    out = merge(config, tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    assert type(model).__name__ == "MixtralForCausalLM" and model.config.num_local_experts == 2
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.pad_token == AutoTokenizer.from_pretrained(str(models["base"])).pad_token  # the base's, as is
    prompt = tokenizer("Hello", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4


def test_moe_of_two_lora_runs(models, runs, tmp_path):
    """Runs as experts are written merged first; the experts' MLPs are then the runs' merged MLPs."""
    config = write(tmp_path, {"base_model": str(models["base"]), "gate_mode": "cheap_embed",
                              "experts": [{"source_model": str(runs["a"]), "positive_prompts": ["Repeat cat"]},
                                          {"source_model": str(runs["b"]), "positive_prompts": ["Spell dog"]}]})
    out = merge(config, tmp_path / "out")
    moe = load(out).state_dict()
    run_a = load_run(runs["a"])[0].merge_and_unload().state_dict()
    gate, up = run_a["model.layers.0.mlp.gate_proj.weight"], run_a["model.layers.0.mlp.up_proj.weight"]
    torch.testing.assert_close(moe["model.layers.0.mlp.experts.gate_up_proj"][0], torch.cat([gate, up]),
                               rtol=0, atol=1e-6)
    assert torch.isfinite(logits(load(out))).all()


def test_moe_refusals_are_config_errors(models, tmp_path):
    experts = [{"source_model": str(models["ft1"]), "positive_prompts": ["a"]},
               {"source_model": str(models["ft2"]), "positive_prompts": ["a"]}]
    with pytest.raises(ConfigError, match="gate_mode: unknown 'hiden'.*did you mean hidden"):
        merge(write(tmp_path, {"base_model": str(models["base"]), "gate_mode": "hiden", "experts": experts}),
              tmp_path / "out")
    with pytest.raises(ConfigError, match="mergekit-moe refused it: .*identical"):  # its own check, not an exit
        merge(write(tmp_path, {"base_model": str(models["base"]), "experts": experts}), tmp_path / "out")
    with pytest.raises(ModelError, match="hidden_size"):
        merge(write(tmp_path, {"base_model": str(models["base"]), "gate_mode": "random",
                               "experts": [*experts[:1], {"source_model": str(models["narrow"])}]}), tmp_path / "out")


# ---------------------------------------------------------------- checks before anything heavy


def test_models_of_other_sizes_or_vocabularies_are_refused_naming_both(models, tmp_path):
    for odd, field in (("narrow", "hidden_size"), ("wide_vocab", "vocab_size")):
        config = write(tmp_path, kit_config("linear", [{"model": str(models["ft1"]), "parameters": {"weight": 0.5}},
                                                     {"model": str(models[odd]), "parameters": {"weight": 0.5}}]))
        with pytest.raises(ModelError) as e:
            merge(config, tmp_path / "out")
        message = str(e.value)
        assert field in message and str(models["ft1"]) in message and str(models[odd]) in message
        assert "models[0].model" in message and "models[1].model" in message


def test_same_size_but_other_tokens_is_refused(models, tmp_path):
    import shutil

    swapped = shutil.copytree(models["ft2"], tmp_path / "swapped")
    tokenizer = json.loads((swapped / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]  # the same size, two ids meaning other tokens
    (swapped / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = write(tmp_path, kit_config("linear", [{"model": str(models["ft1"]), "parameters": {"weight": 0.5}},
                                                   {"model": str(swapped), "parameters": {"weight": 0.5}}]))
    with pytest.raises(ModelError, match="tokenizers with other tokens.*tokenizer_source: union"):
        merge(config, tmp_path / "out")


def test_unknown_method_missing_model_and_bad_inputs(models, tmp_path):
    two = [{"model": str(models["ft1"]), "parameters": {"weight": 0.5}},
           {"model": str(models["ft2"]), "parameters": {"weight": 0.5}}]
    with pytest.raises(ConfigError, match=r"merge_method: unknown 'lineer' \(did you mean linear\?\).*dare_ties"):
        merge(write(tmp_path, kit_config("lineer", two)), tmp_path / "out")
    with pytest.raises(ModelError, match=r"models\[1\]\.model: .*missing-model"):
        merge(write(tmp_path, kit_config("linear", [two[0], {**two[1], "model": str(tmp_path / "missing-model")}])),
              tmp_path / "out")
    with pytest.raises(ConfigError, match="ties works on differences from a base: set base_model"):
        merge(write(tmp_path, kit_config("ties", two)), tmp_path / "out")
    with pytest.raises(ConfigError, match="slerp needs parameter t"):
        merge(write(tmp_path, kit_config("slerp", two, base_model=str(models["ft1"]))), tmp_path / "out")
    with pytest.raises(ConfigError, match="unknown key 'base_modle'.*did you mean base_model"):
        merge(write(tmp_path, kit_config("linear", two, base_modle=str(models["ft1"]))), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_yaml_of_no_known_kind_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a merge config .*merge_method.*experts.*adapters"):
        merge(write(tmp_path, {"model": {"name": "x"}, "train": {}}), tmp_path / "out")
    with pytest.raises(ConfigError, match="one kind"):
        merge_kind({"merge_method": "linear", "adapters": ["runs/a"]})
    assert merge_kind({"merge_method": "linear", "models": []}) == "mergekit"


# ---------------------------------------------------------------- no half-written output


def test_a_failure_midway_leaves_no_output_and_keeps_an_existing_one(models, tmp_path, monkeypatch):
    import mergekit.merge

    def crash(config, out_path, options, config_source=None):
        Path(out_path, "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed halfway")

    config = write(tmp_path, kit_config("linear", [{"model": str(models["ft1"]), "parameters": {"weight": 0.5}},
                                                 {"model": str(models["ft2"]), "parameters": {"weight": 0.5}}]))
    monkeypatch.setattr(mergekit.merge, "run_merge", crash)
    with pytest.raises(RuntimeError, match="halfway"):
        merge(config, tmp_path / "new")
    assert not (tmp_path / "new").exists()

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists.*--force"):
        merge(config, existing)
    with pytest.raises(RuntimeError, match="halfway"):
        merge(config, existing, force=True)
    assert [p.name for p in existing.iterdir()] == ["keep.txt"] and (existing / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "merge.yaml"], "no staging folder is left"

    monkeypatch.undo()
    merge(config, existing, force=True)  # a complete merge replaces it
    assert (existing / "model.safetensors").is_file() and not (existing / "keep.txt").exists()
