"""Config: YAML + --set overrides build typed options; every mistake names its key (and file)."""

from __future__ import annotations

import pytest
import yaml

from tunelab.config import RunConfig, load_config, parse_overrides, write_yaml, to_dict
from tunelab.errors import ConfigError
from tunelab.methods import METHODS
from tunelab.objectives import OBJECTIVES

YAML = """\
model:
  name: ./my-model
data:
  train: data/train.jsonl
  max_length: 256
  packing: true
train:
  lr: 1e-4          # YAML 1.1 alone would read this as a string
  batch_size: 4
  epochs: 2         # an int where a float is expected is fine
method:
  name: lora
  r: 4
objective: sft
"""


def config_file(tmp_path, text=YAML, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    return str(info.value)


def test_load_yaml(tmp_path):
    cfg = load_config(config_file(tmp_path))
    assert cfg.model.name == "./my-model" and cfg.model.trust_remote_code is False
    assert cfg.data.train == "data/train.jsonl" and cfg.data.max_length == 256 and cfg.data.packing is True
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 2.0 and isinstance(cfg.train.epochs, float)
    assert cfg.train.batch_size == 4
    assert isinstance(cfg.method, METHODS["lora"].config) and cfg.method.r == 4
    assert isinstance(cfg.objective, OBJECTIVES["sft"].config)
    assert cfg.method_name == "lora" and cfg.objective_name == "sft"


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == load_config(None, [])
    assert isinstance(cfg.method, METHODS["lora"].config) and isinstance(cfg.objective, OBJECTIVES["sft"].config)
    assert cfg.train.lr == 2e-4 and cfg.data.format == "auto"


def test_set_overrides(tmp_path):
    cfg = load_config(config_file(tmp_path), ["train.lr=3e-5", "method.r=8", "data.system_prompt=Be brief."])
    assert cfg.train.lr == 3e-5
    assert cfg.method.r == 8 and cfg.method.name == "lora"
    assert cfg.data.system_prompt == "Be brief."
    assert cfg.data.max_length == 256  # untouched keys keep the file's values


def test_set_overrides_without_a_file():
    cfg = load_config(None, ["train.lr=1e-4", "method.r=8", "train.resume=true", "data.limit=100"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.method, METHODS["lora"].config) and cfg.method.r == 8  # the default method, tuned
    assert cfg.train.resume is True and cfg.data.limit == 100


def test_method_by_name_string(tmp_path):
    cfg = load_config(config_file(tmp_path), ["method=freeze"])
    assert isinstance(cfg.method, METHODS["freeze"].config)
    assert cfg.method_name == "freeze"
    cfg = load_config(None, ["method=freeze", "method.last_n_layers=1"])
    assert isinstance(cfg.method, METHODS["freeze"].config) and cfg.method.last_n_layers == 1


def test_option_of_another_method_is_refused(tmp_path):
    message = config_error(config_file(tmp_path), ["method=freeze", "method.r=8"])
    assert "method.r: unknown key for freeze" in message and "last_n_layers" in message


def test_parse_overrides_builds_a_nested_mapping():
    assert parse_overrides(["train.lr=1e-4", "train.seed=7", "method=freeze", "data.train=a=b.jsonl"]) == {
        "train": {"lr": 1e-4, "seed": 7}, "method": "freeze", "data": {"train": "a=b.jsonl"}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


@pytest.mark.parametrize("text, key", [
    ("train:\n  lr: 1e-4\n  learning_rate: 0.1\n", "train.learning_rate"),
    ("datta:\n  train: x.jsonl\n", "datta"),
    ("method:\n  name: lora\n  rank: 8\n", "method.rank"),
])
def test_unknown_key_names_key_and_file(tmp_path, text, key):
    path = config_file(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: ")
    assert f"{key}: unknown key" in message
    assert "valid keys" in message


def test_unknown_key_from_set():
    message = config_error(None, ["train.bogus=1"])
    assert "train.bogus: unknown key" in message and "lr" in message


@pytest.mark.parametrize("override, key, expected", [
    ("train.batch_size=lots", "train.batch_size", "valid integer"),
    ("train.lr=fast", "train.lr", "valid number"),
    ("train.resume=maybe", "train.resume", "valid boolean"),
    ("data.packing=3", "data.packing", "valid boolean"),
    ("train.batch_size=2.5", "train.batch_size", "integer"),
    ("data.limit=many", "data.limit", "valid integer"),  # an optional field
    ("train.run_name=[a, b]", "train.run_name", "valid string"),
    ("method.r=eight", "method.r", "valid integer"),
    ("train=3", "train", "valid dictionary"),
])
def test_wrong_type_names_the_key(override, key, expected):
    message = config_error(None, [override])
    assert f"{key}: " in message and expected in message


def test_wrong_type_in_a_file_names_file_and_key(tmp_path):
    path = config_file(tmp_path, "train:\n  batch_size: lots\n")
    message = config_error(path)
    assert message.startswith(f"{path}: train.batch_size: got 'lots'; input should be a valid integer")


def test_unknown_method_lists_the_valid_ones():
    message = config_error(None, ["method=lorra"])
    assert "'lorra'" in message
    for name in METHODS:
        assert name in message
    message = config_error(None, ["objective=sfft"])
    assert "'sfft'" in message and "sft" in message


def test_bad_files(tmp_path):
    assert "not found" in config_error(tmp_path / "missing.yaml")
    assert "not valid YAML" in config_error(config_file(tmp_path, "train: [unclosed\n"))
    assert "mapping" in config_error(config_file(tmp_path, "- a list\n- of things\n"))
    assert load_config(config_file(tmp_path, "")) == load_config()  # an empty file is all defaults


def test_to_dict_and_write_yaml_round_trip(tmp_path):
    cfg = load_config(config_file(tmp_path), ["method=freeze", "method.last_n_layers=1", "train.lr=1e-5",
                                              "data.validation=null"])
    plain = to_dict(cfg)
    assert plain["method"] == {"name": "freeze", "last_n_layers": 1, "train_head": True, "train_final_norm": True}
    assert plain["objective"] == {"name": "sft"}
    assert plain["train"]["lr"] == 1e-5 and plain["data"]["validation"] is None
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # only plain YAML types

    saved = tmp_path / "out" / "config.yaml"
    saved.parent.mkdir()
    write_yaml(cfg, saved)
    again = load_config(saved)
    assert again == cfg
    assert again.train.model_dump() == cfg.train.model_dump()


def test_round_trip_of_lora_list_options(tmp_path):
    cfg = load_config(None, ["method.target_modules=[q_proj, v_proj]", "method.modules_to_save=[lm_head]"])
    assert cfg.method.target_modules == ["q_proj", "v_proj"]
    write_yaml(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_resolved_config_is_a_run_config():
    cfg = load_config()
    assert isinstance(cfg, RunConfig)
    assert load_config(None, base=to_dict(cfg)) == cfg  # a resolved dict resolves to the same config


def test_set_text_that_looks_like_a_mapping_stays_text():
    tree = parse_overrides(["data.prompt_template=Sentiment of: {text}", "data.label_names={0: negative, 1: pos}"])
    assert tree["data"]["prompt_template"] == "Sentiment of: {text}"
    assert tree["data"]["label_names"] == {0: "negative", 1: "pos"}
    cfg = load_config(None, ["data.label_names={0: negative, 1: positive}"])
    assert cfg.data.label_names == {"0": "negative", "1": "positive"}  # keys as the labels print
