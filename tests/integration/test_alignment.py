"""Preference objectives on tiny models: rm, dpo (sigmoid, ipo, hinge), kto, orpo, simpo.

Each loss is checked against its formula on log-probabilities (or rewards) computed here
independently of trl; each objective trains end to end, resumes, and refuses bad data.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from tests.crash import SimulatedCrash, crash_at
from tests.jsonl import write_jsonl
from tunelab import load_run, train
from tunelab.config import load_config
from tunelab.errors import DataError
from tunelab.eval.preference import completion_logps, reward_scores
from tunelab.objectives import dpo, kto, orpo, simpo
from tunelab.training import RunRecord
from tunelab.training.alignment import build_trainer
from tunelab.training.trainer import latest_checkpoint


def arithmetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Questions with a right (chosen) and a wrong (rejected) answer."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = r.randint(0, 9), r.randint(0, 9)
        rows.append({"prompt": f"Q: {a}+{b}? A:", "chosen": f" {a + b}", "rejected": f" {a * b + 1}!"})
    return rows


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", arithmetic_pairs(24))


def settings(model_dir, data, out, objective, name, *extra) -> list[str]:
    return [f"model.name={model_dir}", f"data.train={data}", f"objective={objective}", f"train.output_dir={out}",
            f"train.run_name={name}", "train.batch_size=4", "train.lr=1e-3", "train.logging_steps=1",
            "train.precision=fp32", *extra]


def trainer_on_four_pairs(tmp_path, model_dir, objective: str, *extra):
    """A trainer on one batch of four pairs, with the LoRA B matrices moved off zero so the
    policy differs from its reference; returns (trainer, tokenizer, pairs)."""
    rows = arithmetic_pairs(4, seed=5)
    cfg = load_config(None, settings(model_dir, write_jsonl(tmp_path / "four.jsonl", rows), tmp_path / "runs",
                                     objective, "loss", "data.val_split=0", *extra))
    module = {"dpo": dpo, "kto": kto, "orpo": orpo, "simpo": simpo}[objective]
    trainer, tokenizer, _ = build_trainer(cfg, module.spec(cfg), RunRecord.create(cfg))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    trainer.model.eval()
    return trainer, tokenizer, rows


def logps(model, tokenizer, rows, side: str, average: bool = False) -> torch.Tensor:
    eos = tokenizer.eos_token
    out = completion_logps(model, tokenizer, [r["prompt"] for r in rows], [r[side] + eos for r in rows])
    if average:
        out = out / torch.tensor([completion_length(tokenizer, r, side) for r in rows], dtype=torch.float32)
    return out


def completion_length(tokenizer, row: dict, side: str) -> int:
    return len(tokenizer(row["prompt"] + row[side] + tokenizer.eos_token, add_special_tokens=False).input_ids) - \
        len(tokenizer(row["prompt"], add_special_tokens=False).input_ids)


def one_batch(trainer) -> dict:
    return next(iter(trainer.get_train_dataloader()))


# ---------------------------------------------------------------- losses against their formulas


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_matches_its_formula(loss, tmp_path, tiny_model_dir):
    beta = 0.5
    trainer, tok, rows = trainer_on_four_pairs(tmp_path, tiny_model_dir, "dpo", f"objective.loss={loss}",
                                               f"objective.beta={beta}")
    model = trainer.model
    with torch.no_grad():
        got = trainer.compute_loss(model, one_batch(trainer))
        pc, pr = logps(model, tok, rows, "chosen"), logps(model, tok, rows, "rejected")
        with model.disable_adapter():  # the reference: the base, adapter off
            rc, rr = logps(model, tok, rows, "chosen"), logps(model, tok, rows, "rejected")
    delta = (pc - rc) - (pr - rr)
    assert delta.abs().max() > 0.05  # the policy really differs from the reference
    if loss == "sigmoid":
        want = -F.logsigmoid(beta * delta).mean()
    elif loss == "hinge":
        want = torch.relu(1 - beta * delta).mean()
    else:  # IPO on per-token log-ratios: ((d_c / n_c - d_r / n_r) - 1 / (2 beta))^2
        nc = torch.tensor([completion_length(tok, r, "chosen") for r in rows], dtype=torch.float32)
        nr = torch.tensor([completion_length(tok, r, "rejected") for r in rows], dtype=torch.float32)
        want = (((pc - rc) / nc - (pr - rr) / nr) - 1 / (2 * beta)).pow(2).mean()
    torch.testing.assert_close(got.float(), want, rtol=1e-4, atol=1e-5)


def test_dpo_reference_is_the_base_with_the_adapter_off(tmp_path, tiny_model_dir):
    trainer, _, _ = trainer_on_four_pairs(tmp_path, tiny_model_dir, "dpo")
    assert trainer.ref_model is None  # no second model in memory
    assert list(trainer.model.peft_config) == ["default"]  # nor a copy of the adapter


def test_kto_loss_matches_its_formula_at_the_reference(tmp_path, tiny_model_dir):
    """Policy = reference: every log-ratio and the KL estimate are 0, so each desirable
    example costs w_d (1 - sigmoid(0)) and each undesirable one w_u (1 - sigmoid(0))."""
    trainer, _, _ = trainer_on_four_pairs(tmp_path, tiny_model_dir, "kto", "objective.desirable_weight=2.0",
                                          "objective.undesirable_weight=1.0")
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.zero_()
        batch = one_batch(trainer)
        got = trainer.compute_loss(trainer.model, batch)
    good = int(torch.as_tensor(batch["label"]).sum())
    bad = len(batch["label"]) - good
    want = (2.0 * 0.5 * good + 1.0 * 0.5 * bad) / (good + bad)
    assert got.item() == pytest.approx(want, abs=1e-5)


def test_orpo_loss_matches_its_formula(tmp_path, tiny_model_dir):
    """ORPO: -beta * log sigmoid(log odds(chosen) - log odds(rejected)) on mean token log-probs."""
    trainer, _, _ = trainer_on_four_pairs(tmp_path, tiny_model_dir, "orpo", "objective.beta=0.25")
    c, r = torch.tensor([-0.5, -2.0]), torch.tensor([-1.0, -0.2])
    log_odds = lambda lp: lp - torch.log1p(-torch.exp(lp))  # log(p / (1 - p))
    losses = trainer.odds_ratio_loss(c, r)[0]  # trl returns beta * log sigmoid(...), subtracted from the SFT loss
    torch.testing.assert_close(-losses, -0.25 * F.logsigmoid(log_odds(c) - log_odds(r)))


def test_simpo_loss_matches_its_formula(tmp_path, tiny_model_dir):
    """SimPO: -log sigmoid(beta * (mean log p(chosen) - mean log p(rejected)) - gamma)."""
    trainer, _, _ = trainer_on_four_pairs(tmp_path, tiny_model_dir, "simpo", "objective.beta=2.0",
                                          "objective.gamma=0.5")
    c, r = torch.tensor([-0.5, -2.0]), torch.tensor([-1.0, -0.2])
    losses = trainer.cpo_loss(c, r)[0]
    torch.testing.assert_close(losses, -F.logsigmoid(2.0 * (c - r) - 0.5))
    assert losses[0].item() == pytest.approx(-torch.log(torch.sigmoid(torch.tensor(0.5))).item())  # 2*0.5 - 0.5


def test_reward_model_loss_is_bradley_terry(tmp_path, tiny_model_dir):
    from trl import RewardConfig, RewardTrainer

    from tunelab.training import load_for_training
    from tunelab.training.library import make_library_trainer

    rows = arithmetic_pairs(4, seed=2)
    cfg = load_config(None, settings(tiny_model_dir, tmp_path / "unused.jsonl", tmp_path / "runs", "rm", "rm"))
    model, tok = load_for_training(cfg, "classify", num_labels=1)
    trainer = make_library_trainer(cfg, RewardTrainer, RewardConfig, model, tok, RunRecord.create(cfg), rows, [],
                                   None, args={"max_length": 64})
    model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(model, one_batch(trainer))
        chosen = reward_scores(model, tok, [r["prompt"] + r["chosen"] for r in rows])
        rejected = reward_scores(model, tok, [r["prompt"] + r["rejected"] for r in rows])
    torch.testing.assert_close(got.float(), -F.logsigmoid(chosen - rejected).mean(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("objective", ["rm", "dpo", "kto", "orpo", "simpo"])
def test_objective_trains_saves_and_reports(objective, pairs, tmp_path, tiny_model_dir):
    out = tmp_path / "runs"
    summary = train(load_config(None, settings(tiny_model_dir, pairs, out, objective, objective,
                                               "train.epochs=3", "data.val_split=0.25")))
    run = out / objective
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "loss.png", "adapter/adapter_config.json"):
        assert (run / name).is_file(), name
    assert summary["steps"] > 0 and summary["tokens_trained"] > 0 and summary["trainable_params"] > 0
    prefix = "" if objective == "rm" else "reward_"
    assert summary[f"{prefix}pairs"] == 6
    assert 0 <= summary[f"{prefix}accuracy_lo95"] <= summary[f"{prefix}accuracy"] <= summary[f"{prefix}accuracy_hi95"]
    losses = [row["loss"] for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in row]
    assert min(losses[-3:]) < losses[0]  # it learned something
    model, _ = load_run(run)
    if objective == "rm":
        assert model.config.num_labels == 1  # a one-output classifier, ready to be a reward


def test_dpo_moves_held_out_rewards_toward_chosen(pairs, tmp_path, tiny_model_dir):
    summary = train(load_config(None, settings(tiny_model_dir, pairs, tmp_path, "dpo", "dpo", "train.epochs=6",
                                               "data.val_split=0.25", "train.lr=3e-3")))
    assert summary["reward_margin"] > 0 and summary["reward_accuracy"] > 0.5


@pytest.mark.parametrize("objective", ["rm", "dpo", "kto", "orpo", "simpo"])
def test_resume_matches_an_uninterrupted_run(objective, pairs, tmp_path, tiny_model_dir, monkeypatch):
    common = ["train.max_steps=6", "train.save_steps=2", "train.save_total_limit=3", "data.val_split=0"]
    straight = train(load_config(None, settings(tiny_model_dir, pairs, tmp_path, objective, "straight", *common)))
    crash_at(monkeypatch, 5)
    with pytest.raises(SimulatedCrash):
        train(load_config(None, settings(tiny_model_dir, pairs, tmp_path, objective, "resumed", *common)))
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "resumed").name == "checkpoint-4"
    resumed = train(load_config(None, settings(tiny_model_dir, pairs, tmp_path, objective, "resumed", *common,
                                               "train.resume=true")))
    assert resumed["resumed_from"] == "checkpoint-4" and resumed["steps"] == 6
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)
    assert straight["steps"] == 6


def test_dpo_on_instruction_data_is_one_clear_error(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "Q?", "chosen": " yes"}] * 4)
    with pytest.raises(DataError, match="missing field 'rejected'.*objective dpo needs preference pairs"):
        train(load_config(None, settings(tiny_model_dir, data, tmp_path, "dpo", "bad")))


@pytest.mark.parametrize("objective, method", [
    ("dpo", "full"), ("dpo", "qlora"), ("rm", "full"), ("rm", "qlora"), ("kto", "full"), ("kto", "qlora"),
    ("orpo", "full"), ("orpo", "qlora"), ("simpo", "full"), ("simpo", "qlora"),
])
def test_objectives_combine_with_full_and_qlora(objective, method, pairs, tmp_path, tiny_model_dir):
    summary = train(load_config(None, settings(tiny_model_dir, pairs, tmp_path, objective, "run", f"method={method}",
                                               "train.max_steps=2", "data.val_split=0.25")))
    assert summary["steps"] == 2 and summary["trainable_params"] > 0
    assert (tmp_path / "run" / summary["artifact"]).is_dir()
    assert load_run(tmp_path / "run")[0] is not None
