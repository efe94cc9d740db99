"""The prompting route: templates, few-shot selection (random and by similarity), chain-of-thought
answer extraction, self-consistency voting, and its use from eval and `tunelab generate` on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.jsonl import read_jsonl, write_jsonl
from tunelab.errors import ConfigError, DataError
from tunelab.infer import DecodingConfig
from tunelab.prompting import (
    Example,
    FewShotSelector,
    PromptingConfig,
    Result,
    answer,
    build_prompts,
    extract_answer,
    load_template,
    majority_vote,
    self_consistency,
)

POOL = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(8)]


# ---------------------------------------------------------------- templates


def test_builtin_inline_and_file_templates_render_records(tmp_path):
    assert load_template("qa").render({"question": "Who?"}) == "Question: Who?\nAnswer:"
    classify = load_template("classify", labels=["positive", "negative"])
    assert classify.header() == ("Classify the text as one of these labels: positive, negative. "
                                 "Reply with the label only.")
    assert classify.answer_kind == "choice"
    assert load_template("{a} and {b}").render({"a": 1, "b": "x", "c": 3}) == "1 and x"
    f = tmp_path / "t.yaml"
    f.write_text("base: qa\ninput: 'Q: {q}'\n")
    t = load_template(str(f))
    assert (t.name, t.render({"q": "why"}), t.instruction) == ("t", "Q: why\nAnswer:", load_template("qa").instruction)


@pytest.mark.parametrize("spec, kwargs, needle", [
    ("classify", {}, "template 'classify' needs labels"),
    ("extract", {}, "template 'extract' needs keys"),
    ("quiz", {}, "'quiz' is neither a built-in"),
    ("{0} x", {}, "{0} in '{0} x' is not a field name"),
    ("{a", {}, "is not a valid format string"),
    ("missing.yaml", {}, "missing.yaml: file not found"),
])
def test_template_errors_say_what_and_how_to_fix(spec, kwargs, needle):
    with pytest.raises(ConfigError) as e:
        load_template(spec, **kwargs)
    assert needle in str(e.value)


def test_template_file_with_an_unknown_key_and_a_record_without_the_field(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("inptu: '{q}'\n")
    with pytest.raises(ConfigError, match=r"t.yaml: unknown key 'inptu'"):
        load_template(str(f))
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "a"}, {"text": "b"}])
    from tunelab.data.readers import read_records

    with pytest.raises(DataError, match=r"q.jsonl:2: template 'qa' reads the field 'question'.*fields here: text"):
        build_prompts(PromptingConfig(template="qa"), list(read_records(data)))


# ---------------------------------------------------------------- few-shot selection


def _pool(n=8):
    return [Example(f"q{i}", f"a{i}", f"pool.jsonl:{i + 1}") for i in range(n)]


def test_random_selection_is_seeded_per_question_and_never_the_question():
    selector = FewShotSelector(_pool(), k=3, seed=7)
    picks = selector.select([f"q{i}" for i in range(8)] * 3)
    for i, shots in enumerate(picks):
        assert len(shots) == 3 and len({s.input for s in shots}) == 3
        assert f"q{i % 8}" not in [s.input for s in shots]  # never the question itself
    assert picks[:8] == picks[8:16]  # the same question gets the same examples wherever it is asked
    assert FewShotSelector(_pool(), k=3, seed=7).select(["zz", "q0"])[1] == picks[0]  # whatever else is asked
    other = FewShotSelector(_pool(), k=3, seed=8).select([f"q{i}" for i in range(8)])
    assert other != picks[:8]
    with pytest.raises(DataError, match="k=3 examples asked for but only 2 differ from the question"):
        FewShotSelector(_pool(3), k=3).select(["q1"])


class FakeEmbedder:
    """Known vectors: text 'v<angle>' is the unit vector at that angle in degrees."""

    def __init__(self):
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        angles = np.radians([float(t.split(":")[0][1:]) for t in texts])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1) * 3.0  # not unit: the selector normalises


def test_similar_selection_picks_the_nearest_most_similar_last():
    pool = [Example(f"v{a}", f"out{a}") for a in (0, 10, 50, 90, 170, 200, 31)]
    embedder = FakeEmbedder()
    selector = FewShotSelector(pool, k=3, select="similar", embedder=embedder)
    shots = selector.select(["v40:query", "v180:query", "v10"])
    assert [s.input for s in shots[0]] == ["v10", "v50", "v31"]  # cosine 10 < 31 < 50 degrees away: nearest last
    assert [s.input for s in shots[1]] == ["v90", "v200", "v170"]  # 90, 20 and 10 degrees away
    assert [s.input for s in shots[2]] == ["v50", "v31", "v0"]  # v10 is the question itself: skipped
    assert embedder.calls == 2  # the pool once, the questions in one batch


def test_similar_selection_with_a_tiny_sentence_transformer(tmp_path):
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunelab.models.hub import embedder_folder

    tok = AutoTokenizer.from_pretrained(str(embedder_folder("all-minilm-l6-v2")))
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128))
    bert.save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    word = models.Transformer(str(tmp_path / "bert"), max_seq_length=64)
    SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension(), "mean")]).save(
        str(tmp_path / "st"))
    pool_file = write_jsonl(tmp_path / "pool.jsonl", POOL)
    cfg = PromptingConfig(template="qa", fewshot_file=str(pool_file), answer_field="answer", num_fewshot=2,
                          fewshot_select="similar", fewshot_embedder=str(tmp_path / "st"))
    queries = [{"question": "What is 3 plus 3?"}, {"question": "How tall is a tree?"}]
    prompts = build_prompts(cfg, queries)
    # the nearest two by the same model's own cosine similarity, computed independently
    model = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    inputs = [f"Question: {r['question']}\nAnswer:" for r in POOL]
    pool_vectors = model.encode(inputs, normalize_embeddings=True)
    for query, prompt in zip(queries, prompts):
        text = f"Question: {query['question']}\nAnswer:"
        scores = pool_vectors @ model.encode([text], normalize_embeddings=True)[0]
        ranked = [inputs[i] for i in np.argsort(-scores) if inputs[i] != text][:2]
        shown = [m["content"] for m in prompt if m["role"] == "user"][:-1]
        assert shown[0].endswith(ranked[1]) and shown[1] == ranked[0]  # most similar last
        assert shown[0].startswith(load_template("qa").instruction)  # the instruction opens the first turn


# ---------------------------------------------------------------- prompt layout


def test_chat_and_text_few_shot_with_chain_of_thought(tmp_path):
    pool_file = write_jsonl(tmp_path / "pool.jsonl", POOL)
    cfg = PromptingConfig(template="math", fewshot_file=str(pool_file), answer_field="answer", num_fewshot=2, cot=True)
    [messages] = build_prompts(cfg, [{"question": "What is 9 plus 9?"}])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert all(m["content"].startswith("The answer is ") for m in messages[1::2])  # the format asked for, shown
    assert messages[-1]["content"].startswith("Problem: What is 9 plus 9?\nAnswer:")
    assert messages[-1]["content"].endswith('as "The answer is X."')
    gsm = write_jsonl(tmp_path / "gsm.jsonl", [{**r, "answer": f"{r['answer']} apples\n#### {r['answer']}"}
                                               for r in POOL])
    text_cfg = PromptingConfig(template="math", fewshot_file=str(gsm), answer_field="answer", num_fewshot=3, cot=True,
                               chat=False)
    [text] = build_prompts(text_cfg, ["Problem: What is 9 plus 9?\nAnswer:"])
    assert text.count("####") == 3 + 1  # three solved examples kept as written, and the request for "#### X"
    assert text.startswith("Solve the math problem.") and text.endswith("Problem: What is 9 plus 9?\nAnswer:")
    from tunelab.prompting.pipeline import stop_strings

    assert stop_strings(text_cfg) == ["\n\nProblem:"]  # a base model stops before writing the next example
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 9 plus 9?"}]
    [m] = build_prompts(PromptingConfig(fewshot_file=str(pool_file), prompt_field="question", answer_field="answer",
                                        num_fewshot=1), [convo])
    assert [x["role"] for x in m] == ["system", "user", "assistant", "user"] and m[-1] == convo[-1]


def test_config_errors_name_the_key(tmp_path):
    for options, needle in [({"fewshot_select": "nearest"}, "fewshot_select: 'nearest' is not allowed"),
                            ({"self_consistency": 0}, "self_consistency: got 0"),
                            ({"answer_kind": "choice"}, "choices: answer_kind choice needs"),
                            ({"answer_kind": "bool"}, "answer_kind: 'bool'"),
                            ({"k": 2}, "k: unknown key; did you mean num_fewshot?")]:
        with pytest.raises(ConfigError, match=needle.replace("?", r"\?")):
            PromptingConfig(**options)
    with pytest.raises(ConfigError, match="fewshot_file: num_fewshot=2 examples need a file"):
        build_prompts(PromptingConfig(num_fewshot=2), ["hi"])
    bad = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    with pytest.raises(DataError, match=r"pool.jsonl:2: a few-shot example needs its answer in a 'completion'"):
        build_prompts(PromptingConfig(fewshot_file=str(bad), num_fewshot=1), ["hi"])


# ---------------------------------------------------------------- answers and votes


@pytest.mark.parametrize("text, kind, choices, expected", [
    ("3 + 4 = 7, so the answer is 7.", "number", None, "7"),
    ("She pays $1,200 in all.\n#### 1,200", "number", None, "1200"),
    ("Half of it: $\\boxed{0.50}$", "number", None, "0.5"),
    ("I had 3, then 5, finally 12 remain", "number", None, "12"),
    ("The answer is 4. Wait, the answer is 5", "number", None, "5"),
    ("no digits here", "number", None, None),
    ("Reasoning...\nThe answer is **Paris**.", "text", None, "Paris"),
    ("Final Answer: $\\boxed{\\frac{1}{2}}$", "text", None, "\\frac{1}{2}"),
    ("The answer isn't obvious", "text", None, None),
    ("just words", "text", None, None),
    ("positive at first, but overall negative", "choice", ["positive", "negative"], "negative"),
    ("The answer is: not good. (good would be wrong)", "choice", ["good", "not good"], "not good"),
    ("Answer: B, since A is wrong", "choice", ["A", "B"], "B"),
    ("nothing matches", "choice", ["yes", "no"], None),
])
def test_extract_answer(text, kind, choices, expected):
    assert extract_answer(text, kind, choices) == expected


def test_majority_vote_counts_equal_answers_together_and_ties_go_to_the_first_seen():
    assert majority_vote(["7", "8", "8", None, "7"]) == ("7", {"7": 2, "8": 2})
    assert majority_vote(["Paris", "paris.", "The Paris", "Rome"]) == ("Paris", {"Paris": 3, "Rome": 1})
    assert majority_vote(["b", "a", "a"]) == ("a", {"b": 1, "a": 2})
    assert majority_vote([None, None]) == (None, {})


@pytest.fixture
def tiny_engine():
    from tunelab.infer.backends.transformers import TransformersEngine
    from tunelab.models import tiny_llama

    model, tok = tiny_llama(init_std=0.5)
    engine = TransformersEngine(model.eval(), tok, max_batch_size=8)
    yield engine
    engine.close()


def _spy(monkeypatch):
    """Record each engine generate call's requests."""
    import tunelab.infer.engine as engine_module

    calls, real = [], engine_module.generate
    monkeypatch.setattr(engine_module, "generate", lambda engine, requests: calls.append(requests) or real(engine,
                                                                                                          requests))
    return calls


def test_self_consistency_samples_n_with_distinct_seeds_in_one_batch(tiny_engine, monkeypatch):
    calls = _spy(monkeypatch)
    decoding = DecodingConfig(max_new_tokens=6, ignore_eos=True)
    votes = self_consistency(tiny_engine, ["a", "hello"], n=3, kind="text", decoding=decoding,
                             extract=lambda t: t.strip() or None)
    [requests] = calls  # all 2 x 3 samples through one generate call
    assert len(requests) == 6 and len({r.params.seed for r in requests}) == 6
    assert {r.params.temperature for r in requests} == {0.7}
    assert [r.prompt for r in requests] == ["a"] * 3 + ["hello"] * 3
    for v in votes:
        assert len(v.samples) == 3 and sum(v.votes.values()) == 3 and v.answer in v.votes
    assert len({s for v in votes for s in v.samples}) > 1  # sampled paths differ
    again = self_consistency(tiny_engine, ["a", "hello"], n=3, kind="text", decoding=decoding,
                             extract=lambda t: t.strip() or None)
    assert [v.samples for v in again] == [v.samples for v in votes]  # seeded: a rerun gives the same votes


def test_answer_reads_final_answers_from_model_and_tokenizer_pair():
    from tunelab.models import tiny_llama

    model, tok = tiny_llama(init_std=0.5)
    model.train()
    cfg = PromptingConfig(self_consistency=2, answer_kind="text")
    results = answer((model, tok), ["x", "y", "z"], cfg, DecodingConfig(max_new_tokens=5, ignore_eos=True))
    assert len(results) == 3 and all(isinstance(r, Result) and len(r.samples) == 2 for r in results)
    assert all(r.answer == majority_vote([s.strip() or None for s in r.samples])[0] for r in results)
    assert model.training  # put back as it was
    greedy = answer((model, tok), ["x"], PromptingConfig(), DecodingConfig(max_new_tokens=5))
    assert greedy[0].votes is None and greedy[0].answer == greedy[0].text


# ---------------------------------------------------------------- eval and the command line


def _qa_file(tmp_path):
    return write_jsonl(tmp_path / "qa.jsonl", [{"question": f"What is {i} plus 1?", "answer": i + 1} for i in range(6)])


def test_eval_generate_task_with_few_shot_and_chain_of_thought(tiny_model_dir, tmp_path):
    from tunelab.eval import evaluate, load_eval_config

    task = {"file": str(_qa_file(tmp_path)), "kind": "generate", "template": "{question}", "metrics": ["numeric"],
            "num_fewshot": 2, "cot": True, "decoding": {"max_new_tokens": 6}}
    cfg = load_eval_config(base={"models": [{"name": "tiny", "model": str(tiny_model_dir)}], "tasks": [task],
                                 "output_dir": str(tmp_path), "run_name": "e", "dtype": "fp32"})
    figures = evaluate(cfg)["tasks"]["qa"]["results"]["tiny"]
    assert figures["n"] == 6 and "numeric_accuracy" in figures and 0 <= figures["answered"] <= 1
    rows = read_jsonl(tmp_path / "e" / "samples" / "qa.tiny.jsonl")
    for row in rows:
        question = row["prompt"][-1]["content"].split("\n\n")[0]
        shots = [m["content"] for m in row["prompt"][:-1:2]]
        assert len(shots) == 2 and question not in shots  # two examples, never the question itself
        assert "answer" in row and "output" in row
    with pytest.raises(ConfigError, match=r"tasks\[0\].cot: applies to generate tasks only"):
        load_eval_config(base={"tasks": [{"file": "x.jsonl", "kind": "choice", "cot": True}]})
    with pytest.raises(ConfigError, match=r"tasks\[0\].num_fewshot: few-shot examples apply to choice and generate"):
        load_eval_config(base={"tasks": [{"file": "x.txt", "kind": "perplexity", "num_fewshot": 1}]})


def test_eval_scores_the_extracted_answer_not_the_reasoning(tmp_path, monkeypatch):
    from rich.console import Console

    import tunelab.prompting
    from tunelab.eval.config import TaskConfig
    from tunelab.eval.runner import prepare, run_task

    def fake_answer(target, prompts, cfg, decoding, **kw):
        return [Result(f"{i} + 1 makes {i + 1}, so the answer is {i + 1}.", str(i + 1), None, [], "stop")
                for i in range(len(prompts))]

    monkeypatch.setattr(tunelab.prompting, "answer", fake_answer)
    task = TaskConfig(name="qa", kind="generate", file=str(_qa_file(tmp_path)), template="{question}",
                      metrics=["exact_match"], cot=True)
    figures, rows = run_task(None, None, prepare(task), 4, Console(quiet=True))
    assert figures["exact_match"] == 1.0 and figures["answered"] == 1.0
    assert rows[0] == {"output": "0 + 1 makes 1, so the answer is 1.", "answer": "1"}


def test_generate_command_with_few_shot_cot_and_self_consistency(tiny_model_dir, tmp_path, monkeypatch):
    from tunelab.cli import main

    calls = _spy(monkeypatch)
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": r["question"], "completion": r["answer"]} for r in POOL])
    questions = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "What is 9 plus 9?", "id": 1},
                                                   {"prompt": POOL[0]["question"], "id": 2}])
    out = tmp_path / "out.jsonl"
    rc = main(["generate", "--model", str(tiny_model_dir), "--input", str(questions), "--output", str(out),
               "--fewshot", str(pool), "--k", "2", "--cot", "--self-consistency", "3", "--answer-kind", "number",
               "--max-new-tokens", "6", "--dtype", "fp32"])
    assert rc == 0
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == [1, 2]
    for row in rows:
        assert {"output", "answer", "votes", "finish_reason"} <= set(row)
        assert sum(row["votes"].values()) <= 3 and (row["answer"] is None or row["answer"] in row["votes"])
    [requests] = calls
    assert len(requests) == 6 and len({r.params.seed for r in requests}) == 6
    assert {r.params.temperature for r in requests} == {0.7}
    second = requests[3].prompt  # the second question is in the pool: never shown as its own example
    assert len(second) == 5 and POOL[0]["question"] not in [m["content"] for m in second[:-1]]
    assert second[-1]["content"].startswith(POOL[0]["question"]) and "The answer is X" in second[-1]["content"]
    assert main(["generate", "--model", str(tiny_model_dir), "--input", str(questions), "--output", str(out),
                 "--k", "2"]) == 2
    assert json.loads(out.read_text().splitlines()[0])["id"] == 1  # a refused run leaves the output as it was
