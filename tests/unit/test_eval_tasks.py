"""Eval task files and configs: few-shot contexts, and one clear error for each kind of bad input."""

import json

import pytest

from tunelab.errors import ConfigError, DataError
from tunelab.eval.config import TaskConfig, load_eval_config
from tunelab.eval.harness import choice_task_yaml
from tunelab.eval.tasks import bias_pairs, choice_questions, perplexity_documents, prompted


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _choice_file(tmp_path, n=5):
    return _jsonl(tmp_path / "mc.jsonl", [{"q": f"question {i}", "choices": ["a", "b", "c"], "gold": i % 3}
                                          for i in range(n)])


def test_zero_and_few_shot_contexts(tmp_path):
    task = TaskConfig(name="mc", file=_choice_file(tmp_path), template="{q}\nAnswer:")
    q = choice_questions(task)
    assert q[1].context == "question 1\nAnswer:" and q[1].endings == [" a", " b", " c"] and q[1].gold == 1
    assert q[1].lengths == ["a", "b", "c"]
    task = TaskConfig(name="mc", file=task.file, template="{q}\nAnswer:", num_fewshot=2, description="Quiz.\n\n")
    shots = choice_questions(task)
    for i, question in enumerate(shots):
        head, *examples = question.context.split("\n\n")
        assert head == "Quiz." and len(examples) == 3 and examples[-1] == f"question {i}\nAnswer:"
        assert f"question {i}\n" not in "\n\n".join(examples[:-1])  # never its own answer as an example
        for example in examples[:-1]:  # "question k\nAnswer: <gold of k>"
            k = int(example.split()[1])
            assert example.endswith(f"Answer: {'abc'[k % 3]}")


def test_gold_as_text_and_shared_choices(tmp_path):
    f = _jsonl(tmp_path / "s.jsonl", [{"text": "great", "label": "positive"}, {"text": "bad", "label": 0}])
    q = choice_questions(TaskConfig(name="s", file=f, template="{text}", choices=["negative", "positive"],
                                    gold_field="label"))
    assert [x.gold for x in q] == [1, 0]


@pytest.mark.parametrize("row,needle", [
    ({"q": "x", "choices": ["a", "b"], "gold": 2}, "gold index 2 is out of range: this record has 2 choices"),
    ({"q": "x", "choices": ["a", "b"]}, "needs a 'gold' field"),
    ({"q": "x", "choices": ["a"], "gold": 0}, "'choices' list of at least two"),
    ({"q": "x", "choices": ["a", "b"], "gold": "c"}, "gold answer 'c' is not one of the choices"),
    ({"question": "x", "choices": ["a", "b"], "gold": 0}, "the template uses {q} but the record has no field 'q'"),
])
def test_bad_choice_records_name_the_line_and_field(tmp_path, row, needle):
    f = _jsonl(tmp_path / "bad.jsonl", [{"q": "fine", "choices": ["a", "b"], "gold": 0}, row])
    with pytest.raises(DataError) as e:
        choice_questions(TaskConfig(name="mc", file=f, template="{q}"))
    assert "bad.jsonl:2" in str(e.value) and needle in str(e.value)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        choice_questions(TaskConfig(name="e", file=str(tmp_path / "empty.jsonl")))
    with pytest.raises(DataError, match="file not found"):
        perplexity_documents(TaskConfig(name="p", kind="perplexity", file=str(tmp_path / "nope.txt")))
    (tmp_path / "blank.txt").write_text("   \n\n")
    with pytest.raises(DataError, match="no non-empty text"):
        perplexity_documents(TaskConfig(name="p", kind="perplexity", file=str(tmp_path / "blank.txt")))


def test_too_many_shots_is_an_error(tmp_path):
    with pytest.raises(DataError, match="num_fewshot=5 but only 3 examples"):
        choice_questions(TaskConfig(name="mc", file=_choice_file(tmp_path, 3), template="{q}", num_fewshot=5))


def test_generation_prompts_from_templates_fields_and_conversations(tmp_path):
    f = _jsonl(tmp_path / "g.jsonl", [
        {"question": "2+2?", "answer": "4"},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{\"a\": 1}"}]},
    ])
    p = prompted(TaskConfig(name="g", kind="generate", file=f, template="Q: {question}", limit=1), need_gold=True)
    assert p.prompts == ["Q: 2+2?"] and p.golds == ["4"]
    f2 = _jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": "{\"a\": 1}"}]}])
    p = prompted(TaskConfig(name="c", kind="generate", file=f2, metrics=["json"]), need_gold=True)
    assert p.prompts == [[{"role": "user", "content": "hi"}]] and p.golds == [{"a": 1}]
    with pytest.raises(DataError, match=r"g.jsonl:1: task 'g' needs a 'prompt' text field"):
        prompted(TaskConfig(name="g", kind="generate", file=f, answer_field="answer"), need_gold=True)


def test_missing_gold_answer(tmp_path):
    f = _jsonl(tmp_path / "g.jsonl", [{"prompt": "2+2?"}])
    with pytest.raises(DataError, match=r"g.jsonl:1: task 'g' needs a gold answer in 'answer'"):
        prompted(TaskConfig(name="g", kind="generate", file=f), need_gold=True)
    assert prompted(TaskConfig(name="g", kind="judge", file=f), need_gold=False).golds == [None]


def test_bias_pairs_need_both_sentences(tmp_path):
    f = _jsonl(tmp_path / "b.jsonl", [{"stereotyped": "A said she", "other": "A said he", "category": "g"},
                                      {"stereotyped": "B", "other": ""}])
    with pytest.raises(DataError, match=r"b.jsonl:2: bias task 'b' needs two non-empty sentences"):
        bias_pairs(TaskConfig(name="b", kind="bias", file=f))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"tasks\[0\].kind: 'mcq' is not allowed; choose one of perplexity, choice"):
        load_eval_config(base={"tasks": [{"file": "x.jsonl", "kind": "mcq"}]})
    with pytest.raises(ConfigError, match="a judge task needs a judge"):
        load_eval_config(base={"tasks": [{"file": "x.jsonl", "kind": "judge"}]})
    with pytest.raises(ConfigError, match="two tasks share a name"):
        load_eval_config(base={"tasks": [{"file": "a/x.jsonl"}, {"file": "b/x.jsonl"}]})
    with pytest.raises(ConfigError, match=r"tasks\[0\].windw: unknown key; did you mean tasks\[0\].window"):
        load_eval_config(base={"tasks": [{"file": "x.txt", "kind": "perplexity", "windw": 3}]})
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        load_eval_config(base={})
    cfg_file = tmp_path / "e.yaml"
    cfg_file.write_text("tasks: [{file: x.jsonl}]\nmodels: [{name: a, model: m}]\n")
    cfg = load_eval_config(cfg_file, ["batch_size=4"])
    assert cfg.batch_size == 4 and cfg.tasks[0].name == "x" and cfg.models[0].model == "m"


def test_harness_yaml_of_a_choice_task(tmp_path):
    import yaml

    task = TaskConfig(name="s", file=str(tmp_path / "s.jsonl"), template="{sentence}\nSentiment:",
                      choices=["negative", "positive"], gold_field="label", columns={"text": "sentence"})
    spec = yaml.safe_load(choice_task_yaml(task, "tl_s"))
    assert spec["doc_to_text"] == "{{text}}\nSentiment:"  # the file's own field name
    assert spec["doc_to_choice"] == ["negative", "positive"] and spec["doc_to_target"] == "label"
    assert spec["target_delimiter"] == " " and spec["output_type"] == "multiple_choice"
    assert spec["dataset_kwargs"]["data_files"]["test"].endswith("s.jsonl")


def test_a_conversations_answer_never_leaks_into_its_prompt(tmp_path):
    turns = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    f = _jsonl(tmp_path / "c.jsonl", [{"messages": turns, "answer": "four"}, {"messages": turns}])
    p = prompted(TaskConfig(name="c", kind="generate", file=f), need_gold=True)
    assert p.prompts == [turns[:1], turns[:1]] and p.golds == ["four", "4"]
    for bad, needle in [(["hi"], "non-empty list of {role, content} turns"), ([], "non-empty list"),
                        ([{"role": "assistant", "content": "x"}], "no turn before the answer")]:
        f = _jsonl(tmp_path / "b.jsonl", [{"messages": bad, "answer": "x"}])
        with pytest.raises(DataError, match=r"b.jsonl:1: .*" + needle.replace("{", r"\{").replace("}", r"\}")):
            prompted(TaskConfig(name="b", kind="generate", file=f), need_gold=True)
    with pytest.raises(DataError, match="chat: false"):
        prompted(TaskConfig(name="c", kind="generate", file=str(tmp_path / "c.jsonl"), chat=False), need_gold=True)


def test_json_metric_needs_json_gold_records(tmp_path):
    f = _jsonl(tmp_path / "j.jsonl", [{"prompt": "a", "answer": "{\"x\": 1}"}, {"prompt": "b", "answer": "plain"}])
    with pytest.raises(DataError, match=r"j.jsonl:2: task 'j': metric json needs a JSON object"):
        prompted(TaskConfig(name="j", kind="generate", file=f, metrics=["json"]), need_gold=True)


def test_templates_take_plain_field_names_only(tmp_path):
    f = _choice_file(tmp_path)
    with pytest.raises(DataError, match=r"\{q.upper\} is not a field name"):
        choice_questions(TaskConfig(name="mc", file=f, template="{q.upper}"))


def test_integral_float_gold_and_few_shot_pool_beyond_the_limit(tmp_path):
    f = _jsonl(tmp_path / "mc.jsonl", [{"q": f"question {i}", "choices": ["a", "b"], "gold": float(i % 2)}
                                       for i in range(6)])
    q = choice_questions(TaskConfig(name="mc", file=f, template="{q}", limit=2, num_fewshot=3))
    assert len(q) == 2 and [x.gold for x in q] == [0, 1]
    assert all(x.context.count("question") == 4 for x in q)  # 3 shots from the whole file + the question
