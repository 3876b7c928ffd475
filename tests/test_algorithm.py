"""ExGRPO's math (exgrpo_verl/algorithm.py) against hand-computed values, autograd and finite differences."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exgrpo_verl.algorithm import (
    MAX_ABS_LOG_RATIO,
    fresh_rows_mean_advantage,
    group_advantage,
    importance_weight,
    mixed_policy_token_loss,
    ppo_clipped_surrogate,
    shaped_weight,
)

# Two interleaved groups of K = 4: "a" has 2/4 successes, "b" has 3/4.
SCORES = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
GROUPS = ["a", "b", "a", "b", "a", "b", "a", "b"]


def test_group_advantage_subtracts_the_group_mean():
    # a: mean 0.5 -> +-0.5; b: mean 0.75 -> 0.25 or -0.75
    expected = torch.tensor([0.5, 0.25, -0.5, 0.25, -0.5, 0.25, 0.5, -0.75])
    torch.testing.assert_close(group_advantage(SCORES, GROUPS, norm_by_std=False), expected)


def test_group_advantage_divides_by_the_sample_std():
    # a: std = sqrt(4 * 0.25 / 3) = 1/sqrt(3); b: std = sqrt((3 * 0.0625 + 0.5625) / 3) = 0.5
    eps = 1e-6
    std_a, std_b = 1 / math.sqrt(3), 0.5
    expected = torch.tensor(
        [
            0.5 / (std_a + eps),
            0.25 / (std_b + eps),
            -0.5 / (std_a + eps),
            0.25 / (std_b + eps),
            -0.5 / (std_a + eps),
            0.25 / (std_b + eps),
            0.5 / (std_a + eps),
            -0.75 / (std_b + eps),
        ]
    )
    torch.testing.assert_close(group_advantage(SCORES, GROUPS, norm_by_std=True, eps=eps), expected)


def test_group_advantage_of_a_uniform_group_is_zero_with_and_without_std():
    scores = torch.tensor([1.0, 1.0, 1.0])
    for norm_by_std in (False, True):
        assert torch.equal(group_advantage(scores, ["g"] * 3, norm_by_std=norm_by_std), torch.zeros(3))


def test_fresh_rows_mean_advantage_is_their_share_of_the_group_advantage():
    """Equal to the mean of group_advantage over the fresh rows (no std), zero without joined rows."""
    fresh, joined = np.array([0.0, 1.0, 0.0, 0.0]), np.array([1.0])
    advantages = group_advantage(torch.tensor(np.concatenate([fresh, joined])), ["g"] * 5, norm_by_std=False)
    assert fresh_rows_mean_advantage(fresh, joined) == pytest.approx(float(advantages[:4].mean()))
    assert fresh_rows_mean_advantage(fresh, joined) == pytest.approx(0.25 - 0.4)
    assert fresh_rows_mean_advantage(fresh, np.array([])) == 0.0
    assert fresh_rows_mean_advantage(np.array([1.0, 1.0]), joined) == 0.0  # already all solved: no push down


def test_group_advantage_rejects_a_group_of_one():
    with pytest.raises(ValueError, match="groups of one: \\['lonely'\\]"):
        group_advantage(torch.tensor([1.0, 0.0, 1.0]), ["g", "g", "lonely"], norm_by_std=False)


def test_group_advantage_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="2 group ids for 3 scores"):
        group_advantage(torch.tensor([1.0, 0.0, 1.0]), ["g", "g"], norm_by_std=False)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0.0, 1.0])), min_size=2, max_size=24))
def test_group_advantages_sum_to_zero_within_each_group(rows):
    group_ids = [g for g, _ in rows]
    if min(group_ids.count(g) for g in group_ids) < 2:
        group_ids = [0] * len(rows)  # keep every group at least two strong
    scores = torch.tensor([r for _, r in rows], dtype=torch.float64)
    advantages = group_advantage(scores, group_ids, norm_by_std=False)
    for g in set(group_ids):
        members = torch.tensor([gid == g for gid in group_ids])
        assert abs(advantages[members].sum().item()) < 1e-12


def test_importance_weight_hand_values():
    w, log_w = importance_weight(torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0]))
    torch.testing.assert_close(log_w, torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(w, torch.tensor([math.exp(0.5), math.exp(-1.0)]))


def test_importance_weight_clamps_extreme_log_differences():
    log_prob = torch.tensor([0.0, -1e4, -3.0], requires_grad=True)
    stored = torch.tensor([-1e4, 0.0, -3.0])
    w, log_w = importance_weight(log_prob, stored)
    assert torch.equal(log_w.detach(), torch.tensor([MAX_ABS_LOG_RATIO, -MAX_ABS_LOG_RATIO, 0.0]))
    assert torch.isfinite(w).all()
    w.sum().backward()
    assert torch.isfinite(log_prob.grad).all()


def test_shaped_weight_hand_values():
    w = torch.tensor([0.1, 1.0, 9.9])
    torch.testing.assert_close(shaped_weight(w, beta=0.1), torch.tensor([0.5, 1.0 / 1.1, 0.99]))


def test_replayed_gradient_is_beta_w_over_w_plus_beta_squared():
    """d f(w) / d logp_theta = beta * w / (w + beta)^2, by autograd and by central differences (float64)."""
    beta = 0.1
    stored = torch.tensor([-2.0, -0.7, -3.1, -0.05], dtype=torch.float64)
    log_prob = torch.tensor([-2.5, -0.2, -1.0, -0.05], dtype=torch.float64, requires_grad=True)

    def f_of_w(lp):
        w, _ = importance_weight(lp, stored)
        return shaped_weight(w, beta)

    f_of_w(log_prob).sum().backward()
    w = torch.exp(log_prob.detach() - stored)
    expected = beta * w / (w + beta) ** 2
    torch.testing.assert_close(log_prob.grad, expected, rtol=1e-12, atol=0)

    h = 1e-6
    step = torch.eye(4, dtype=torch.float64) * h
    finite_diff = torch.stack(
        [(f_of_w(log_prob.detach() + step[i]) - f_of_w(log_prob.detach() - step[i]))[i] / (2 * h) for i in range(4)]
    )
    torch.testing.assert_close(finite_diff, expected, rtol=1e-7, atol=0)


def test_ppo_clipped_surrogate_hand_values():
    # eps_low = eps_high = 0.2, dual clip c = 3
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5, 5.0, 2.0])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, 0.0])
    out = ppo_clipped_surrogate(ratio, adv, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0)
    # A>0, r>1+eps: -1.2 (clipped); A>0, r<1-eps: -0.5; A<0, r>1+eps: 1.5; A<0, r<1-eps: 0.8 (clipped);
    # A<0, r=5: max(5, 1.2) = 5 capped by the dual clip at 3; A=0: 0
    torch.testing.assert_close(out.loss, torch.tensor([-1.2, -0.5, 1.5, 0.8, 3.0, 0.0]))
    assert out.clipped.tolist() == [True, False, False, True, False, False]
    assert out.clipped_lower.tolist() == [False, False, False, False, True, False]


def test_ppo_clipped_surrogate_uses_separate_low_and_high_clip():
    ratio = torch.tensor([1.25, 0.75])
    adv = torch.tensor([1.0, -1.0])
    out = ppo_clipped_surrogate(ratio, adv, clip_ratio_low=0.1, clip_ratio_high=0.28, clip_ratio_c=3.0)
    # 1.25 < 1.28: not clipped; 0.75 < 0.9: clipped to 0.9, loss max(0.75, 0.9)
    torch.testing.assert_close(out.loss, torch.tensor([-1.25, 0.9]))
    assert out.clipped.tolist() == [False, True]


def test_ppo_clipped_surrogate_rejects_dual_clip_at_or_below_one():
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_clipped_surrogate(torch.ones(1), torch.ones(1), 0.2, 0.2, clip_ratio_c=1.0)


def _mixed(log_prob, old_log_prob, advantages, is_replay, clip_on_policy, beta=0.1):
    return mixed_policy_token_loss(
        log_prob,
        old_log_prob,
        advantages,
        is_replay,
        shaping_beta=beta,
        clip_on_policy=clip_on_policy,
        clip_ratio_low=0.2,
        clip_ratio_high=0.2,
        clip_ratio_c=3.0,
    )


# Row 0 fresh, row 1 replayed; both with ratio e^1 on token 0 and e^-1 on token 1.
LOG_RATIOS = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
OLD = torch.tensor([[-2.0, -1.0], [-3.0, -0.5]])
ADV = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
IS_REPLAY = torch.tensor([0, 1])


def test_mixed_loss_replayed_rows_use_shaped_weight_and_fresh_rows_the_clip():
    out = _mixed(OLD + LOG_RATIOS, OLD, ADV, IS_REPLAY, clip_on_policy=True)
    e, beta = math.e, 0.1
    expected = torch.tensor(
        [
            [-0.5 * 1.2, -0.5 * math.exp(-1.0)],  # fresh: e clipped to 1.2; e^-1 < 0.8 but A > 0 keeps it
            [-0.5 * e / (e + beta), -0.5 * math.exp(-1.0) / (math.exp(-1.0) + beta)],  # replayed: -A f(w)
        ]
    )
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.ratio, torch.exp(LOG_RATIOS))
    assert out.clipped.tolist() == [[True, False], [False, False]]  # never on replayed rows


def test_mixed_loss_without_shaping_weights_replayed_tokens_by_plain_unclipped_w():
    out = _mixed(OLD + LOG_RATIOS, OLD, ADV, IS_REPLAY, clip_on_policy=True, beta=None)
    torch.testing.assert_close(out.loss[1], -0.5 * torch.exp(LOG_RATIOS[1]))  # e^1 is not clipped to 1.2
    torch.testing.assert_close(out.loss[0], torch.tensor([-0.5 * 1.2, -0.5 * math.exp(-1.0)]))  # fresh unchanged


def test_mixed_loss_without_on_policy_clip_is_minus_advantage_times_ratio():
    out = _mixed(OLD + LOG_RATIOS, OLD, ADV, IS_REPLAY, clip_on_policy=False)
    torch.testing.assert_close(out.loss[0], -0.5 * torch.exp(LOG_RATIOS[0]))
    torch.testing.assert_close(out.loss[1], _mixed(OLD + LOG_RATIOS, OLD, ADV, IS_REPLAY, clip_on_policy=True).loss[1])
    assert not out.clipped.any() and not out.clipped_lower.any()


def test_mixed_loss_gradient_on_replayed_tokens_matches_the_shaping_formula():
    beta = 0.1
    old = OLD.to(torch.float64)
    log_prob = (old + LOG_RATIOS.to(torch.float64)).requires_grad_()
    adv = torch.tensor([[0.5, 0.5], [0.75, -0.25]], dtype=torch.float64)
    out = _mixed(log_prob, old, adv, IS_REPLAY, clip_on_policy=True, beta=beta)
    out.loss.sum().backward()
    w = torch.exp(log_prob.detach()[1] - old[1])
    torch.testing.assert_close(log_prob.grad[1], -adv[1] * beta * w / (w + beta) ** 2, rtol=1e-12, atol=0)
    # fresh row: token 0 is clipped (no gradient), token 1 is -A r (gradient -A r)
    torch.testing.assert_close(log_prob.grad[0], torch.tensor([0.0, -0.5 * math.exp(-1.0)], dtype=torch.float64))


@pytest.mark.parametrize("clip_on_policy", [True, False])
def test_mixed_loss_stays_finite_for_extreme_log_prob_differences(clip_on_policy):
    old = torch.tensor([[-1e4, 0.0, -5.0], [-1e4, 0.0, -5.0]])
    log_prob = torch.tensor([[0.0, -1e4, -5.0], [0.0, -1e4, -5.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
    out = _mixed(log_prob, old, adv, IS_REPLAY, clip_on_policy=clip_on_policy)
    assert torch.isfinite(out.loss).all()
    out.loss.sum().backward()
    assert torch.isfinite(log_prob.grad).all()


def test_the_releases_summed_entropy_score_favours_short_trajectories():
    from exgrpo_verl.algorithm import trajectory_selection_score

    entropy = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.9, 0.9, 0.0, 0.0]])  # row 1: shorter but less confident
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    torch.testing.assert_close(trajectory_selection_score("entropy_sum", entropy, entropy, mask), torch.tensor([2.0, 1.8]))
    torch.testing.assert_close(trajectory_selection_score("entropy", entropy, entropy, mask), torch.tensor([0.5, 0.9]))


def test_plain_clip_without_the_dual_clip():
    ratio, advantages = torch.tensor([5.0, 5.0]), torch.tensor([-1.0, 1.0])
    dual = ppo_clipped_surrogate(ratio, advantages, 0.2, 0.2, clip_ratio_c=3.0)
    plain = ppo_clipped_surrogate(ratio, advantages, 0.2, 0.2, clip_ratio_c=None)
    torch.testing.assert_close(dual.loss, torch.tensor([3.0, -1.2]))  # -A * 3 capped by the dual clip
    torch.testing.assert_close(plain.loss, torch.tensor([5.0, -1.2]))  # without it, -A * r = 5
    assert dual.clipped_lower.tolist() == [True, False] and not plain.clipped_lower.any()
