"""Curation: text repair, quality rules, PII masking, duplicates and contamination, and their commands."""

from __future__ import annotations

import json
import random

import pytest

from tunelab.cli import main
from tunelab.data.curate.clean import CleanConfig, Cleaner, clean_file, failed_rule, mask_pii, repair
from tunelab.data.curate.decontaminate import DecontaminateConfig, find_contamination, overlap_warning
from tunelab.data.curate.dedup import DedupConfig, dedup_files, find_duplicates
from tunelab.errors import ConfigError

PROSE = ("The river runs through the old town and past the mill, where the miller has worked with his family for "
         "many years. In spring the water is high and fast, and in the summer it is slow and warm enough to swim.")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _edit(text: str, share: float, seed: int) -> str:
    rng, words = random.Random(seed), text.split()
    for _ in range(max(1, round(share * len(words)))):
        i = rng.randrange(len(words) - 1)
        op = rng.choice(("swap", "insert", "delete", "recase"))
        if op == "swap":
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == "insert":
            words.insert(i, rng.choice(("very", "quite", "bright", "stone")))
        elif op == "delete":
            del words[i]
        else:
            words[i] = words[i].upper()
    return " ".join(words)


def test_repair_fixes_mojibake_controls_and_whitespace():
    assert repair("The cafÃ©\x00 is   open\t\ttoday.  \r\n\n\n\nYes\u200b.") == "The café is open today.\n\nYes."


def test_pii_is_masked_and_order_numbers_are_not():
    text = ("Mail ana.b+x@mail.example.org, call +1 415-555-0134 or (020) 7946 0958, host 192.168.1.20, "
            "card 4111 1111 1111 1111, order 1234 5678 9012 3456.")
    assert mask_pii(text) == ("Mail <EMAIL>, call <PHONE> or <PHONE>, host <IP>, card <CARD>, "
                              "order 1234 5678 9012 3456.")


@pytest.mark.parametrize("text, rule", [
    ("", "empty"),
    ("Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopic", "mean_word_length"),
    ("# one # two # three # four # five # six", "symbol_ratio"),
    ("12 34 56 78 -- ++ == ** %% hi", "alpha_words"),
    (" ".join(f"qz{i} vbn{i} krt{i}" for i in range(10)), "stop_words"),
    ("Buy now and save.\nBuy now and save.\nBuy now and save.\nIt is here.", "duplicate_lines"),
    ("the cat the cat the cat the cat the cat the cat sat on a mat in the sun", "top_ngram"),
])
def test_each_default_rule_names_itself(text, rule):
    assert failed_rule(text, CleanConfig().rules()) == rule
    assert failed_rule(PROSE, CleanConfig().rules()) is None


def test_presets_and_explicit_options():
    short = "Paris is the capital of France."
    assert failed_rule(short, CleanConfig().rules()) is None
    assert failed_rule(short, CleanConfig(preset="gopher").rules()) == "min_words"  # documents of 50+ words
    assert failed_rule(short, CleanConfig(preset="gopher", min_words=3).rules()) is None  # an option over the preset
    assert failed_rule("Lorem ipsum dolor sit. Amet is fine. Yes it is.", CleanConfig(preset="c4").rules()) == "c4_page"
    assert failed_rule("One sentence only.", CleanConfig(preset="c4").rules()) == "min_sentences"


def test_chat_records_are_judged_by_their_answers_and_kept_or_dropped_whole():
    cleaner = Cleaner(CleanConfig())
    junk_question = {"messages": [{"role": "user", "content": "zxq " * 40}, {"role": "assistant", "content": PROSE}]}
    assert cleaner(junk_question)[1] is None
    junk_answer = {"instruction": PROSE, "output": "Subscribe to our newsletter\nCookie policy | Terms of use"}
    assert cleaner(junk_answer)[1] == "empty"  # every answer line was boilerplate


def test_language_identification_keeps_the_languages_asked_for():
    cleaner = Cleaner(CleanConfig(languages=["en"]))
    assert cleaner({"text": PROSE})[1] is None
    french = ("La rivière traverse la vieille ville et passe devant le moulin, où le meunier travaille depuis des "
              "années.")
    assert cleaner({"text": french})[1] == "language"


def test_clean_file_keeps_writes_the_dropped_with_their_rule_and_workers_agree(tmp_path):
    rows = [{"text": PROSE}, {"text": "Cookie policy | Terms of use"}, {"text": "caf\u00c3\u00a9 " + PROSE},
            {"text": "Buy now.\nBuy now.\nBuy now."}]
    source = _write(tmp_path / "in.jsonl", rows)
    summary = clean_file(source, tmp_path / "out.jsonl", CleanConfig())
    assert summary["kept"] == 2 and summary["dropped"] == {"empty": 1, "duplicate_lines": 1}
    assert _read(tmp_path / "out.jsonl")[1]["text"].startswith("café ")
    dropped = _read(tmp_path / "out.dropped.jsonl")
    assert [(d["rule"], d["where"]) for d in dropped] == [("empty", f"{source}:2"), ("duplicate_lines", f"{source}:4")]
    assert dropped[0]["record"] == rows[1]  # the original record: nothing the user had is lost
    clean_file(source, tmp_path / "two.jsonl", CleanConfig(), workers=2)
    assert _read(tmp_path / "two.jsonl") == _read(tmp_path / "out.jsonl")
    with pytest.raises(ConfigError, match="already exists"):
        clean_file(source, tmp_path / "out.jsonl", CleanConfig())
    with pytest.raises(ConfigError, match="is also an input"):
        clean_file(source, source, CleanConfig(), force=True)


def test_exact_and_near_duplicates_cluster_and_distinct_texts_do_not():
    other = ("A quiet lake lies north of the hills, with pine woods on every side and a narrow road that "
             "climbs to a farm where goats graze in the morning.")
    texts = [PROSE, PROSE.upper().replace(",", ""), _edit(PROSE, 0.10, 1), other, _edit(other, 0.05, 2)]
    found = find_duplicates(texts, DedupConfig())
    assert sorted(map(sorted, found.clusters)) == [[0, 1, 2], [3, 4]]
    assert found.reasons[1] == "exact" and found.reasons[2] == "near"
    assert find_duplicates([PROSE, other], DedupConfig()).clusters == []
    assert find_duplicates(["Say the word number 1.", "Say the word number 2."], DedupConfig()).clusters == []


def test_the_kept_record_is_the_longest_the_first_or_from_the_earliest_file():
    texts = [PROSE, PROSE + " And more."]
    assert find_duplicates(texts, DedupConfig()).clusters == [[1, 0]]
    assert find_duplicates(texts, DedupConfig(keep="first")).clusters == [[0, 1]]
    assert find_duplicates(texts, DedupConfig(), sources=[1, 0]).clusters == [[1, 0]]
    assert find_duplicates(texts[::-1], DedupConfig(), sources=[1, 0]).clusters == [[1, 0]]


def test_semantic_duplicates_join_by_embedding_cosine():
    vectors = {"a": [1.0, 0.0], "b": [0.99, 0.05], "c": [0.0, 1.0]}
    found = find_duplicates(["a", "b", "c"], DedupConfig(exact=False, near=False, semantic=True),
                            embed=lambda texts: [vectors[t] for t in texts])
    assert found.clusters == [[0, 1]] and found.reasons[1] == "semantic"


def test_dedup_across_files_keeps_validation_and_writes_clusters(tmp_path):
    validation = _write(tmp_path / "validation.jsonl", [{"text": PROSE}])
    train = _write(tmp_path / "train.jsonl", [{"text": _edit(PROSE, 0.05, 3) + " Extra words here."},
                                              {"text": "Something else entirely, about boats and the sea."}])
    summary = dedup_files([validation, train], tmp_path / "out", DedupConfig())
    assert summary["kept"] == 2 and summary["removed"] == {"near": 1}
    assert _read(tmp_path / "out" / "validation.jsonl") == [{"text": PROSE}]
    assert len(_read(tmp_path / "out" / "train.jsonl")) == 1
    cluster = _read(tmp_path / "out" / "clusters.jsonl")[0]
    assert cluster["kept"] == f"{validation}:1" and cluster["removed"] == [{"where": f"{train}:1", "why": "near"}]


def test_decontamination_finds_every_planted_copy_and_nothing_else(tmp_path):
    items = [f"Question {k}: how many apples does the farmer named Kim {k} keep after selling half of the crop at "
             f"the market on day {k}?" for k in range(20)]
    evaluation = [({"question": q, "answer": str(k)}, f"eval.jsonl:{k + 1}") for k, q in enumerate(items)]
    rng = random.Random(0)
    train = [{"text": f"{PROSE} Record {i}."} for i in range(200)]
    planted = rng.sample(range(200), 6)
    for n, i in enumerate(planted):  # a copy inside a longer record, re-cased
        train[i] = {"prompt": "Solve this. " + items[n * 3].upper(), "completion": "Half of them."}
    found = find_contamination(train, evaluation)
    assert sorted(found.hits) == sorted(planted)
    assert found.items == {f"eval.jsonl:{n * 3 + 1}": [i] for n, i in enumerate(planted)}
    assert not find_contamination(train[:0] + [{"text": PROSE}] * 5, evaluation).hits


def test_short_evaluation_items_match_whole_and_tiny_ones_are_skipped():
    evaluation = [({"q": "Name the largest planet in our solar system."}, "e:1"), ({"q": "Two plus two?"}, "e:2")]
    train = [{"text": "Quiz: name the largest planet in our solar system. Jupiter."}, {"text": "Two plus two? Four."}]
    assert find_contamination(train, evaluation, DecontaminateConfig()).items == {"e:1": [0]}


def test_the_data_commands(tmp_path, capsys):
    eval_rows = [{"question": f"Which river runs through the old town and past the mill number {k}?"} for k in
                 range(3)]
    evaluation = _write(tmp_path / "eval.jsonl", eval_rows)
    train = _write(tmp_path / "train.jsonl", [{"instruction": "Say", "output": PROSE},
                                              {"instruction": "Say", "output": PROSE},
                                              {"instruction": eval_rows[1]["question"], "output": "The river."}])
    assert main(["data", "dedup", str(train), "--output", str(tmp_path / "d.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == {"exact": 1}
    out = tmp_path / "x.jsonl"
    assert main(["data", "decontaminate", str(train), "--against", str(evaluation), "-o", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["contaminated_items"] == {f"{evaluation}:2": [f"{train}:3"]} and report["kept"] == 2
    assert main(["data", "clean", str(train), str(tmp_path / "c.jsonl"), "--pii", "--min-words", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["dropped"] == {"min_words": 1}
    assert main(["data", "clean", str(train), str(tmp_path / "c.jsonl")]) == 2
    assert "already exists" in capsys.readouterr().err
    warning = overlap_warning(train, evaluation)
    assert "1 test item(s)" in warning and "tunelab data decontaminate" in warning
    assert overlap_warning(evaluation, _write(tmp_path / "none.jsonl", [{"text": PROSE}])) is None


def test_eval_warns_when_a_task_file_overlaps_a_runs_training_file(tmp_path):
    from tunelab.eval.config import EvalConfig
    from tunelab.eval.runner import _overlaps

    question = "Which river runs through the old town and past the mill where the miller has worked for years?"
    train = _write(tmp_path / "train.jsonl", [{"prompt": question, "completion": "The Avon."}])
    clean = _write(tmp_path / "clean.jsonl", [{"prompt": "What is the capital of France, the country?", "answer": "x"}])
    quoted = _write(tmp_path / "quoted.jsonl", [{"prompt": question, "answer": "The Avon."}])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"data: {{train: {train}}}\n")
    tasks = [{"file": str(clean), "kind": "generate"}, {"file": str(quoted), "kind": "generate"}]
    cfg = EvalConfig.load({"models": [{"model": "tiny"}, {"model": "tiny", "adapter": str(run)}], "tasks": tasks})
    warnings = _overlaps(cfg)
    assert len(warnings) == 1 and str(quoted) in warnings[0] and str(train) in warnings[0]


def test_equal_keys_group_and_a_bucket_pairs_each_record_with_its_group():
    import numpy as np

    from tunelab.data.curate.dedup import bucket_pairs, runs

    keys = np.array([5, 3, 5, 1, 3, 3, 9], dtype=np.uint64)
    assert sorted(g.tolist() for g in runs(keys)) == [[0, 2], [1, 4, 5]]
    assert sorted(g.tolist() for g in runs(np.array([[1, 2], [1, 3], [1, 2]], dtype=np.uint64))) == [[0, 2]]
    a, b = np.arange(100, dtype=np.uint64), np.arange(100, 200, dtype=np.uint64)
    near_a = a.copy()
    near_a[:5] += 1000  # 95% of the signature shared
    sigs = np.stack([a, b, near_a, a, b])
    assert bucket_pairs([0, 1, 2, 3, 4], sigs, 0.7) == [(0, 2), (0, 3), (1, 4)]  # each against one of its group
