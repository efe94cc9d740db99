"""The distillation loss on hand-computed values: forward and reverse KL, temperature,
masking, cross-entropy mixing, and the option checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunelab.errors import ConfigError
from tunelab.objectives.distill import (
    Config,
    distillation_loss,
    token_kl,
)

# Vocabulary of 3, two positions; the second position is masked (label -100).
STUDENT = np.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]])
TEACHER = np.array([[2.0, 0.0, -1.0], [1.0, 1.0, 1.0]])
LABELS = np.array([0, -100])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) in nats."""
    return float(np.sum(p * (np.log(p) - np.log(q))))


def loss(temperature=1.0, direction="forward", ce_weight=0.0, labels=LABELS, num_items=None):
    value, parts = distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(labels),
                                     temperature, direction, ce_weight, num_items=num_items)
    return float(value), {k: float(v) for k, v in parts.items()}


def test_forward_kl_is_teacher_against_student_on_labelled_positions():
    expected = kl(softmax(TEACHER[0]), softmax(STUDENT[0]))  # the masked second position does not count
    value, parts = loss(temperature=1.0, direction="forward")
    assert value == pytest.approx(expected, rel=1e-6)
    assert parts["kl"] == pytest.approx(expected, rel=1e-6)


def test_reverse_kl_is_student_against_teacher():
    expected = kl(softmax(STUDENT[0]), softmax(TEACHER[0]))
    value, parts = loss(temperature=1.0, direction="reverse")
    assert value == pytest.approx(expected, rel=1e-6)
    assert parts["kl"] == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(kl(softmax(TEACHER[0]), softmax(STUDENT[0])), rel=1e-3)  # KL is not symmetric


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_temperature_softens_both_and_scales_by_its_square(direction):
    t = 2.0
    p, q = softmax(TEACHER[0] / t), softmax(STUDENT[0] / t)
    softened = kl(p, q) if direction == "forward" else kl(q, p)
    value, parts = loss(temperature=t, direction=direction)
    assert parts["kl"] == pytest.approx(softened, rel=1e-6)  # logged without the T^2
    assert value == pytest.approx(t**2 * softened, rel=1e-6)


def test_masking_averages_over_labelled_positions_only():
    both = np.array([0, 2])
    expected = (kl(softmax(TEACHER[0]), softmax(STUDENT[0])) + kl(softmax(TEACHER[1]), softmax(STUDENT[1]))) / 2
    assert loss(labels=both)[0] == pytest.approx(expected, rel=1e-6)
    # Changing the logits at a masked position changes nothing.
    student = torch.tensor(STUDENT)
    student[1] = torch.tensor([9.0, -9.0, 0.0])
    moved, _ = distillation_loss(student, torch.tensor(TEACHER), torch.tensor(LABELS), 1.0)
    assert float(moved) == pytest.approx(loss()[0], rel=1e-6)


def test_cross_entropy_mixes_in_by_its_weight():
    t, w = 2.0, 0.25
    softened = kl(softmax(TEACHER[0] / t), softmax(STUDENT[0] / t))
    ce = -float(np.log(softmax(STUDENT[0])[0]))  # hard label 0, at temperature 1
    value, parts = loss(temperature=t, ce_weight=w)
    assert parts["ce"] == pytest.approx(ce, rel=1e-6)
    assert value == pytest.approx((1 - w) * t**2 * softened + w * ce, rel=1e-6)
    assert loss(temperature=t, ce_weight=1.0)[0] == pytest.approx(ce, rel=1e-6)


def test_num_items_divides_the_sum_for_gradient_accumulation():
    one, _ = loss()
    assert loss(num_items=4)[0] == pytest.approx(one / 4, rel=1e-6)  # one labelled token, four in the whole batch


def test_batched_shapes_and_gradient_flow_to_the_student_only():
    student = torch.tensor(STUDENT, dtype=torch.float32).unsqueeze(0).requires_grad_()  # (1, 2, 3)
    teacher = torch.tensor(TEACHER, dtype=torch.float32).unsqueeze(0).requires_grad_()
    value, _ = distillation_loss(student, teacher, torch.tensor(LABELS).unsqueeze(0), 2.0, "reverse", 0.5)
    value.backward()
    assert student.grad is not None and student.grad[0, 1].abs().sum() == 0  # masked position: no gradient
    assert teacher.grad is None


def test_identical_distributions_have_zero_kl():
    z = torch.tensor(STUDENT)
    assert float(token_kl(z, z, 2.0, "forward").abs().max()) < 1e-7
    assert float(token_kl(z, z + 3.0, 1.0, "reverse").abs().max()) < 1e-6  # a constant shift is the same distribution


@pytest.mark.parametrize("key,value,message", [
    ("temperature", 0.0, "temperature"),
    ("kl", "sideways", "kl"),
    ("ce_weight", 1.5, "ce_weight"),
    ("ce_weight", -0.1, "ce_weight"),
])
def test_bad_options_name_their_key(key, value, message):
    from tunelab.config import validate

    with pytest.raises(ConfigError, match=message):
        validate(Config, {key: value}, "objective")
