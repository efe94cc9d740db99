"""PPO's pieces on hand-worked values: GAE, the KL penalty, the clipped losses, whitening, masks."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.objectives.ppo import (
    gae,
    kl_estimate,
    per_token_rewards,
    policy_loss,
    prompt_indices,
    response_mask,
    tokenize_prompts,
    value_loss,
    whiten,
)


def t(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_gae_matches_a_hand_worked_example():
    # gamma = 1, lam = 0.5; row 0 has three real tokens, row 1 two (its third column is padding).
    # Row 0: rewards (0, 0, 1), values (0.5, 0.2, 0.4)
    #   delta_2 = 1 + 0   - 0.4 =  0.6   A_2 = 0.6
    #   delta_1 = 0 + 0.4 - 0.2 =  0.2   A_1 = 0.2 + 0.5 * 0.6 = 0.5
    #   delta_0 = 0 + 0.2 - 0.5 = -0.3   A_0 = -0.3 + 0.5 * 0.5 = -0.05
    #   returns = A + V = (0.45, 0.7, 1.0)
    # Row 1: rewards (0, 1, pad), values (0.5, 0.2, pad): the answer ends at t = 1, so nothing
    # after it counts: delta_1 = 1 - 0.2 = 0.8 = A_1; A_0 = (0.2 - 0.5) + 0.5 * 0.8 = 0.1
    rewards = t([0, 0, 1], [0, 1, 5])
    values = t([0.5, 0.2, 0.4], [0.5, 0.2, 9])
    mask = t([1, 1, 1], [1, 1, 0])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(advantages, t([-0.05, 0.5, 0.6], [0.1, 0.8, 0]))
    torch.testing.assert_close(returns, t([0.45, 0.7, 1.0], [0.6, 1.0, 0]))


def test_gae_with_lam_1_is_the_discounted_return_minus_the_value():
    rewards, values, mask = t([0, 0, 1]), t([0, 0, 0]), t([1, 1, 1])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    torch.testing.assert_close(advantages, t([0.81, 0.9, 1.0]))
    torch.testing.assert_close(returns, advantages)


def test_per_token_rewards_penalise_kl_and_add_the_score_at_the_last_real_token():
    logprobs = t([-1.0, -2.0, -0.5], [-1.0, -1.0, -3.0])
    ref = t([-1.5, -1.0, -0.5], [-1.0, -2.0, -9.0])
    mask = t([1, 1, 1], [1, 1, 0])
    rewards = per_token_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    # row 0: -0.1 * (0.5, -1, 0) + score 2 at t = 2; row 1: -0.1 * (0, 1) + score -1 at t = 1, padding 0
    torch.testing.assert_close(rewards, t([-0.05, 0.1, 2.0], [0.0, -1.1, 0.0]))


def test_kl_estimates():
    logprobs, ref, mask = t([-1.0, -2.0, -0.3]), t([-1.5, -1.0, -7.0]), t([1, 1, 0])
    torch.testing.assert_close(kl_estimate(logprobs, ref, mask, "k1"), torch.tensor([0.5 - 1.0]))
    # k3 per token: (ref/pi - 1) - log(ref/pi) with log(ref/pi) = -0.5 and 1.0
    k3 = (math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0)
    torch.testing.assert_close(kl_estimate(logprobs, ref, mask, "k3"), torch.tensor([k3]))
    assert kl_estimate(logprobs, logprobs, mask, "k3").item() == 0.0


def test_policy_loss_value_and_clipfrac():
    old = torch.zeros(1, 4)
    # ratios 1.5, 0.5, 1.1, 0.5 against advantages +1, -1, +2, +1
    new = torch.log(t([1.5, 0.5, 1.1, 0.5]))
    advantages = t([1.0, -1.0, 2.0, 1.0])
    loss, stats = policy_loss(new, old, advantages, torch.ones(1, 4), clip=0.2)
    # per token max(-A r, -A clip(r)): (-1.2, 0.8, -2.2, -0.5)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2 - 0.5) / 4)
    assert stats["clipfrac"].item() == pytest.approx(0.5)


def test_policy_gradient_is_zero_where_the_ratio_is_clipped_on_the_pessimistic_side():
    old = torch.zeros(4)
    # token 0: A > 0 and ratio 1.5 > 1.2: clipped, no push further up
    # token 1: A < 0 and ratio 0.5 < 0.8: clipped, no push further down
    # token 2: A > 0 but ratio 0.5 (moved the wrong way): unclipped, gradient pulls it back
    # token 3: A < 0 and ratio 1.5 (moved the wrong way): unclipped
    logprobs = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.5])).requires_grad_(True)
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, _ = policy_loss(logprobs.unsqueeze(0), old.unsqueeze(0), advantages.unsqueeze(0), torch.ones(1, 4), 0.2)
    loss.backward()
    grad = logprobs.grad
    assert grad[0] == 0 and grad[1] == 0
    assert grad[2] < 0 and grad[3] > 0  # descent raises token 2's probability and lowers token 3's
    torch.testing.assert_close(grad[2:], torch.tensor([-0.5 / 4, 1.5 / 4]))


def test_masked_positions_add_nothing_to_the_losses():
    mask = t([1, 0])
    loss, _ = policy_loss(t([0.3, 50.0]), t([0.0, 0.0]), t([1.0, 100.0]), mask, 0.2)
    assert loss.item() == pytest.approx(-1.2)  # ratio e^0.3 = 1.35 clipped to 1.2
    vloss, _ = value_loss(t([1.0, 50.0]), t([1.0, 0.0]), t([2.0, -50.0]), mask, 0.2)
    assert vloss.item() == pytest.approx(0.5)


def test_value_loss_is_clipped_around_the_old_value():
    # token 0: new value 1.0 moved 1.0 from old 0.0 toward the return 2.0: clipped to 0.2 -> loss (0.2 - 2)^2
    # token 1: new value 0.1 stays inside the clip: plain (0.1 - 2)^2
    # token 2: new 3.0 overshoots the return 2.0, clipped 0.2 is further: the larger (clipped) loss counts
    values, old, returns, mask = t([1.0, 0.1, 3.0]), t([0.0, 0.0, 0.0]), t([2.0, 2.0, 2.0]), t([1, 1, 1])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    expected = 0.5 * ((0.2 - 2) ** 2 + (0.1 - 2) ** 2 + (0.2 - 2) ** 2) / 3
    assert loss.item() == pytest.approx(expected)
    assert stats["value_clipfrac"].item() == pytest.approx(2 / 3)


def test_whiten_gives_mean_0_variance_1_over_real_tokens_and_leaves_padding_0():
    x = t([1.0, 2.0, 3.0], [4.0, 100.0, -7.0])
    mask = t([1, 1, 1], [1, 0, 0])
    w = whiten(x, mask)
    # real values 1, 2, 3, 4: mean 2.5, variance 1.25
    torch.testing.assert_close(w, t([-1.5, -0.5, 0.5], [1.5, 0, 0]) / math.sqrt(1.25))
    assert w[mask.bool()].mean().abs() < 1e-6


def test_response_mask_keeps_tokens_up_to_and_including_the_first_eos():
    eos = [2, 7]
    response = torch.tensor([[5, 6, 2, 5, 2], [5, 5, 5, 5, 5], [7, 0, 0, 0, 0]])
    torch.testing.assert_close(response_mask(response, eos), t([1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]))


def test_prompt_order_covers_every_prompt_once_per_pass_and_repeats_by_iteration():
    first_pass = prompt_indices(1, 4, 10, seed=3) + prompt_indices(2, 4, 10, seed=3) + prompt_indices(3, 4, 10, 3)[:2]
    assert sorted(first_pass) == list(range(10))
    assert prompt_indices(2, 4, 10, seed=3) == prompt_indices(2, 4, 10, seed=3)
    assert prompt_indices(1, 4, 10, seed=3) != prompt_indices(1, 4, 10, seed=4)


def test_prompts_keep_their_end_and_a_leading_bos_when_truncated():
    class Tok:
        bos_token_id = 1

        def __call__(self, texts):
            return {"input_ids": [[int(c) for c in t] for t in texts]}

    rows, truncated = tokenize_prompts(["123456", "234567", "12"], Tok(), max_length=4)
    assert rows == [[1, 4, 5, 6], [4, 5, 6, 7], [1, 2]] and truncated == 2
