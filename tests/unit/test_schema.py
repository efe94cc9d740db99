"""The whole schema walked: every field refuses a wrong type and a value outside its words or bounds at
load, naming its dotted key (exit code 2); an option of another method or objective is refused; a misspelt
key gets the right suggestion; every shipped example validates against the JSON Schema."""

from __future__ import annotations

import typing
from pathlib import Path

import annotated_types
import jsonschema
import pytest
import yaml

from tunelab.cli import main
from tunelab.config import validate
from tunelab.config.options import literal_values, models_in, plain_type
from tunelab.config.schemas import KINDS, json_schema, schema_class
from tunelab.errors import ConfigError
from tunelab.methods import METHODS
from tunelab.objectives import OBJECTIVES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# the least a config of each kind needs before one field is spoiled
BASE = {"eval": {"harness": ["hellaswag"]}, "generate": {"generate": {"input": "in.jsonl", "output": "out.jsonl"}}}
# where a list of option groups or an optional group is filled to reach its fields
FILL = {"tasks": [{"file": "qa.jsonl", "kind": "generate"}], "judge": {"model": "judge-model"}}


def bad_values(field) -> list:
    """A wrong type, and (where the field has them) a word outside its set and values outside its bounds."""
    tp = plain_type(field.annotation)
    words = literal_values(field.annotation)
    out = []
    if words is not None:
        out.append(["a", "list"] if isinstance(words[0], str) else "not-a-word")
        out.append("no-such-word" if isinstance(words[0], str) else -12345)
    elif tp is bool:
        out.append("maybe")
    elif tp in (int, float):
        out.append("many")
    elif tp is str:
        out.append(["a", "list"])
    elif typing.get_origin(tp) in (list, dict):
        out.append(5)
    elif models_in(tp):
        out.append(5)
    else:  # a union such as `list[str] | str`: a mapping is neither
        out.append({"a": 1})
    for bound in field.metadata:
        if isinstance(bound, annotated_types.Ge):
            out.append(bound.ge - 1)
        elif isinstance(bound, annotated_types.Gt):
            out.append(bound.gt - (1 if tp is int else 0))
        elif isinstance(bound, annotated_types.Le):
            out.append(bound.le + 1)
        elif isinstance(bound, annotated_types.Lt):
            out.append(bound.lt + (1 if tp is int else 0))
    return out


def walk(cls, key: list, build):
    """(dotted key, raw config with that one field spoiled) for every field under `cls`;
    build(parts relative to cls, value) makes the raw config."""
    for name, field in cls.model_fields.items():
        if name == "name" and literal_values(field.annotation):
            continue  # the discriminator: tested by unknown method / objective names
        groups = models_in(field.annotation)
        here = [*key, name]
        for value in bad_values(field):
            yield _dotted(here), build([name], value)
        if groups and name in FILL:
            filled = FILL[name]
            if isinstance(filled, list):
                yield from walk(groups[0], [*here, 0], lambda p, v, n=name, f=filled: build(
                    [n], [{**f[0], **_nested(p, v)}]))
            else:
                yield from walk(groups[0], here, lambda p, v, n=name, f=filled: build([n], {**f, **_nested(p, v)}))
        elif len(groups) == 1 and typing.get_origin(plain_type(field.annotation)) is None:
            yield from walk(groups[0], here, lambda p, v, n=name: build([n, *p], v))


def _nested(parts, value):
    out = value
    for p in reversed(parts):
        out = {p: out}
    return out


def _dotted(parts) -> str:
    text = ""
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else p)
    return text


def cases():
    for kind in KINDS:
        if kind == "run":
            for section in ("model", "data", "train"):
                cls = schema_class("run").model_fields[section].annotation
                for key, raw in walk(cls, [section], lambda p, v, s=section: _nested([s, *p], v)):
                    yield pytest.param("run", key, raw, id=f"run-{key}-{raw!r}"[:90])
            for table, kind_key in ((METHODS, "method"), (OBJECTIVES, "objective")):
                for name, entry in table.items():
                    for key, raw in walk(entry.config, [kind_key], lambda p, v, n=name, k=kind_key: {
                            k: {"name": n, **_nested(p, v)}}):
                        yield pytest.param("run", key, raw, id=f"{name}-{key}-{raw!r}"[:90])
            continue
        for key, raw in walk(schema_class(kind), [], lambda p, v: _nested(p, v)):
            yield pytest.param(kind, key, {**BASE.get(kind, {}), **raw}, id=f"{kind}-{key}-{raw!r}"[:90])


@pytest.mark.parametrize("kind, key, raw", list(cases()))
def test_every_field_refuses_a_bad_value_naming_its_key(kind, key, raw):
    with pytest.raises(ConfigError) as info:
        validate(schema_class(kind), raw, "config.yaml")
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith("config.yaml: ") and f"{key}" in message, message


def test_the_walk_covers_every_option_of_every_method_and_objective():
    walked = {(key, raw[key.split(".")[0]].get("name")) for kind, key, raw in (c.values for c in cases())
              if kind == "run" and key.split(".")[0] in ("method", "objective")}
    for table, section in ((METHODS, "method"), (OBJECTIVES, "objective")):
        for entry in table.values():
            for name in entry.config.model_fields:
                assert name == "name" or (f"{section}.{name}", entry.name) in walked, (entry.name, name)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_an_option_of_another_method_is_refused(method):
    own = set(METHODS[method].config.model_fields)
    other, option = next((m, o) for m in sorted(METHODS) for o in METHODS[m].config.model_fields if o not in own)
    with pytest.raises(ConfigError, match=rf"method\.{option}: unknown key for {method}"):
        validate(schema_class("run"), {"method": {"name": method, option: 1}})


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_an_option_of_another_objective_is_refused(objective):
    own = set(OBJECTIVES[objective].config.model_fields)
    other, option = next((m, o) for m in sorted(OBJECTIVES) for o in OBJECTIVES[m].config.model_fields
                         if o not in own)
    with pytest.raises(ConfigError, match=rf"objective\.{option}: unknown key for {objective}"):
        validate(schema_class("run"), {"objective": {"name": objective, option: 1}})


@pytest.mark.parametrize("kind, raw, suggestion", [
    ("run", {"train": {"learning_rat": 1e-4}}, "did you mean train.lr?"),
    ("run", {"train": {"learning_rate": 1e-4}}, "did you mean train.lr?"),
    ("run", {"train": {"num_train_epochs": 2}}, "did you mean train.epochs?"),
    ("run", {"data": {"max_lenght": 512}}, "did you mean data.max_length?"),
    ("run", {"method": {"name": "lora", "lora_alpha": 16}}, "did you mean method.alpha?"),
    ("run", {"method": "lorra"}, "did you mean lora?"),
    ("run", {"train": {"precision": "bf61"}}, "did you mean bf16?"),
    ("eval", {"tasks": [{"file": "a.jsonl", "num_fewshots": 2}]}, "did you mean tasks[0].num_fewshot?"),
    ("serve", {"server": {"max_concurent": 2}}, "did you mean server.max_concurrent?"),
])
def test_misspelt_keys_and_words_get_a_suggestion(kind, raw, suggestion):
    with pytest.raises(ConfigError, match=suggestion.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
                       .replace("?", r"\?")):
        validate(schema_class(kind), raw)


def test_a_bad_value_on_the_command_line_exits_2_before_any_model_loads(capsys):
    assert main(["config", "show", "--set", "train.learning_rat=1"]) == 2
    assert "train.learning_rat: unknown key; did you mean train.lr?" in capsys.readouterr().err
    assert main(["generate", "--input", "a.jsonl", "--output", "b.jsonl", "--top-p", "2"]) == 2
    assert "top_p: got 2.0" in capsys.readouterr().err


def _examples(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml"))


@pytest.mark.parametrize("path", _examples(EXAMPLES), ids=lambda p: p.name)
def test_run_examples_validate_against_the_json_schema(path):
    jsonschema.Draft202012Validator(json_schema("run")).validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", _examples(EXAMPLES / "eval"), ids=lambda p: p.name)
def test_eval_examples_validate_against_the_json_schema(path):
    jsonschema.Draft202012Validator(json_schema("eval")).validate(yaml.safe_load(path.read_text()))


def test_the_json_schema_refuses_what_tunelab_refuses():
    validator = jsonschema.Draft202012Validator(json_schema("run"))
    assert not list(validator.iter_errors({"method": "lora", "objective": {"name": "dpo", "beta": 0.2}}))
    for bad in ({"train": {"learning_rate": 1}}, {"method": {"name": "lora", "rr": 2}}, {"method": "lorra"},
                {"train": {"precision": "bf61"}}, {"method": {"name": "lora", "r": 0}}):
        assert list(validator.iter_errors(bad)), bad


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_json_schema(kind):
    schema = json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]


def test_config_new_writes_a_commented_config_that_loads_as_asked(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    assert main(["config", "new", "--objective", "dpo", "--method", "qlora", "-o", str(path)]) == 0
    text = path.read_text()
    assert "# yaml-language-server: $schema=" in text and "quant_type: nf4  # 4-bit number format" in text
    assert "(one of: sigmoid, ipo, hinge)" in text
    from tunelab.config import load_config

    cfg = load_config(path)
    assert cfg.objective_name == "dpo" and cfg.method_name == "qlora" and cfg.objective.beta == 0.1
    assert main(["config", "new", "-o", str(path)]) == 2  # never overwrites without --force
    assert "already exists" in capsys.readouterr().err


def test_config_show_marks_defaults(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 1.0e-4}\nmethod: {name: lora, r: 8}\n")
    assert main(["config", "show", str(path), "--set", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    lines = {line.strip().split(":")[0]: line for line in out.splitlines() if ":" in line}
    assert "# default" not in lines["lr"] and "# default" not in lines["epochs"] and "# default" not in lines["r"]
    assert lines["batch_size"].endswith("# default") and lines["alpha"].endswith("# default")


def test_config_schema_command_and_the_editor_example(tmp_path):
    import json

    for kind in ("run", "eval"):
        out = tmp_path / f"tunelab-{kind}.schema.json"
        assert main(["config", "schema", kind, "-o", str(out)]) == 0
        assert json.loads(out.read_text()) == json_schema(kind)
    settings = json.loads((EXAMPLES / "editor" / "vscode-settings.json").read_text())["yaml.schemas"]
    assert {Path(name).name for name in settings} == {"tunelab-run.schema.json", "tunelab-eval.schema.json"}
    for name, globs in settings.items():  # every shipped config is covered by the schema of its kind
        covered = {p for g in globs for p in (EXAMPLES.parent).glob(g)}
        kind = "eval" if "eval" in name else "run"
        assert covered >= set(_examples(EXAMPLES / "eval" if kind == "eval" else EXAMPLES))


def test_a_command_reads_its_yaml_sections_with_flags_over_them(tmp_path):
    from tunelab.cli import build_parser
    from tunelab.config.schemas import from_command_line

    path = tmp_path / "chat.yaml"
    path.write_text("decoding: {top_p: 0.9, temperature: 0.2}\nchat: {system: Be brief.}\n")
    args = build_parser().parse_args(["chat", "--config", str(path), "--temperature", "0.5"])
    opts = from_command_line("chat", args)
    assert opts.decoding.temperature == 0.5 and opts.decoding.top_p == 0.9  # the flag wins; the file fills the rest
    assert opts.decoding.max_new_tokens == 512 and opts.model.max_batch_size == 1  # chat's own defaults
    assert opts.chat.system == "Be brief."
    path.write_text("decoding: {temprature: 0.2}\n")
    with pytest.raises(ConfigError, match=rf"{path}: decoding.temprature: unknown key; did you mean "
                                          r"decoding.temperature\?"):
        from_command_line("chat", build_parser().parse_args(["chat", "--config", str(path)]))
    args = build_parser().parse_args(["generate", "--output", "o.jsonl"])
    with pytest.raises(ConfigError, match=r"generate.input: required, and not given \(JSONL"):
        from_command_line("generate", args)
