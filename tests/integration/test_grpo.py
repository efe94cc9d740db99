"""GRPO on tiny models: the clipped group-relative loss on hand-computed values, rewards
named in the config (built-in, a file's function, a reward model), resume, and errors."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tests.crash import SimulatedCrash, crash_at
from tests.jsonl import write_jsonl
from tunelab import train
from tunelab.config import load_config
from tunelab.errors import ConfigError, DataError
from tunelab.training.trainer import latest_checkpoint


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    r = random.Random(0)
    rows = []
    for _ in range(20):
        a, b = r.randint(1, 9), r.randint(1, 9)
        rows.append({"question": f"What is {a}+{b}?", "answer": f"{a}+{b}={a + b}\n#### {a + b}"})
    return write_jsonl(tmp_path_factory.mktemp("gsm") / "q.jsonl", rows)


def settings(model_dir, data, out, name, *extra) -> list[str]:
    return [f"model.name={model_dir}", f"data.train={data}", "objective=grpo", f"train.output_dir={out}",
            f"train.run_name={name}", "data.columns={question: prompt}", "train.batch_size=4", "train.lr=1e-3",
            "train.logging_steps=1", "train.precision=fp32", "objective.num_generations=4",
            "objective.max_completion_length=8", "objective.eval_prompts=4", *extra]


def test_clipped_group_loss_on_hand_computed_values(questions, tmp_path, tiny_model_dir):
    """Two completions (2 and 3 tokens) with advantages +1 and -0.5. Sampled at half the
    current probability, every ratio is 2: clipped to 1.2 where the advantage is positive,
    kept at 2 where it is negative (the pessimistic side); DAPO divides by all 5 tokens:
    loss = -(1.2 * 1 * 2 + 2 * (-0.5) * 3) / 5 = 0.12. At ratio 1: -(1 * 2 - 0.5 * 3) / 5 = -0.1."""
    from trl import GRPOConfig

    from tunelab.objectives.grpo import ComputeDtypeGRPOTrainer
    from tunelab.training import RunRecord, load_for_training
    from tunelab.training.library import make_library_trainer

    cfg = load_config(None, settings(tiny_model_dir, questions, tmp_path, "loss"))
    model, tok = load_for_training(cfg, "causal_lm")
    trainer = make_library_trainer(cfg, ComputeDtypeGRPOTrainer, GRPOConfig, model, tok, RunRecord.create(cfg),
                                   [{"prompt": "x"}] * 4, [], None, args={"num_generations": 4, "beta": 0.0},
                                   reward_funcs=[lambda prompts, completions, **kw: [0.0] * len(completions)])
    model.eval()
    prompt = torch.tensor([[10, 11, 12], [13, 14, 15]])
    completion = torch.tensor([[20, 21, 0], [22, 23, 24]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, completion], 1)).logits[:, 2:-1]  # positions predicting the completion
        current = torch.log_softmax(logits.float(), -1).gather(-1, completion[..., None])[..., 0]
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": mask, "advantages": torch.tensor([1.0, -0.5]), "num_items_in_batch": torch.tensor(5.0)}
    with torch.no_grad():
        at_one = trainer._compute_loss(model, inputs)
        clipped = trainer._compute_loss(model, {**inputs, "old_per_token_logps": current - math.log(2)})
    assert at_one.item() == pytest.approx(-0.1, abs=1e-5)
    assert clipped.item() == pytest.approx(0.12, abs=1e-5)


def test_grpo_trains_with_named_rewards_and_reports_before_after(questions, tmp_path, tiny_model_dir,
                                                                  tiny_reward_model_dir):
    (tmp_path / "mine.py").write_text("def short(prompts, completions, **kw):\n"
                                      "    return [-len(str(c)) / 10 for c in completions]\n")
    summary = train(load_config(None, settings(
        tiny_model_dir, questions, tmp_path, "grpo", "train.max_steps=2", "data.val_split=0.2",
        f"objective.rewards=[format, exact_answer, {tmp_path / 'mine.py'}:short, {tiny_reward_model_dir}]",
        "objective.reward_weights=[1.0, 1.0, 0.5, 0.1]")))
    run = tmp_path / "grpo"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "adapter/adapter_config.json"):
        assert (run / name).is_file(), name
    assert summary["steps"] == 2 and summary["tokens_trained"] > 0 and summary["eval_prompts"] == 4
    names = ["format", "exact_answer", f"{tmp_path / 'mine.py'}:short", str(tiny_reward_model_dir)]
    assert list(summary["rewards_before"]) == names and list(summary["rewards_after"]) == names
    assert 0 <= summary["rewards_after"]["format"] <= 1
    assert summary["rewards_after"][names[2]] <= 0  # the file's function really scored the answers


def test_grpo_resumes_from_its_checkpoint(questions, tmp_path, tiny_model_dir, monkeypatch):
    common = ["train.max_steps=4", "train.save_steps=2", "data.val_split=0"]
    train(load_config(None, settings(tiny_model_dir, questions, tmp_path, "straight", *common)))
    crash_at(monkeypatch, 3)
    with pytest.raises(SimulatedCrash):
        train(load_config(None, settings(tiny_model_dir, questions, tmp_path, "resumed", *common)))
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-2"
    summary = train(load_config(None, settings(tiny_model_dir, questions, tmp_path, "resumed", *common,
                                               "train.resume=true")))
    assert summary["resumed_from"] == "checkpoint-2" and summary["steps"] == 4


def test_grpo_bad_settings_and_data_are_clear(questions, tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="multiple of objective.num_generations"):
        train(load_config(None, settings(tiny_model_dir, questions, tmp_path, "a", "train.batch_size=6")))
    with pytest.raises(ConfigError, match="not a built-in reward"):
        train(load_config(None, settings(tiny_model_dir, questions, tmp_path, "b", "objective.rewards=[fromat]")))
    no_prompt = write_jsonl(tmp_path / "np.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match=r"np\.jsonl:1.*no text 'prompt' field.*data.columns"):
        train(load_config(None, settings(tiny_model_dir, no_prompt, tmp_path, "c")))


@pytest.mark.parametrize("method", ["full", "qlora"])
def test_grpo_combines_with_full_and_qlora(method, questions, tmp_path, tiny_model_dir):
    summary = train(load_config(None, settings(tiny_model_dir, questions, tmp_path, "run", f"method={method}",
                                               "train.max_steps=1", "data.val_split=0.2")))
    assert summary["steps"] == 1 and (tmp_path / "run" / summary["artifact"]).is_dir()


def test_grpo_kl_reference_is_the_base_with_the_adapter_off(questions, tmp_path, tiny_model_dir):
    from trl import GRPOConfig

    from tunelab.objectives.grpo import ComputeDtypeGRPOTrainer
    from tunelab.training import RunRecord, load_for_training
    from tunelab.training.library import make_library_trainer

    cfg = load_config(None, settings(tiny_model_dir, questions, tmp_path, "ref", "objective.beta=0.1"))
    model, tok = load_for_training(cfg, "causal_lm")
    trainer = make_library_trainer(cfg, ComputeDtypeGRPOTrainer, GRPOConfig, model, tok, RunRecord.create(cfg),
                                   [{"prompt": "x"}] * 4, [], None, args={"num_generations": 4, "beta": 0.1},
                                   reward_funcs=[lambda prompts, completions, **kw: [0.0] * len(completions)])
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
