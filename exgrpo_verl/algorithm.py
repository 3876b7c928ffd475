"""ExGRPO's math: small pure torch functions (no verl, no Ray), each with its equation.

Notation, per response token t of row i:
  logp_theta  log pi_theta(y_t | x, y_<t) under the policy being trained (has gradients),
  logp_old    the same under the policy that started this step (fresh, on-policy rows),
  logp_stored the log-prob stored with a replayed trajectory when it was collected: the
              probability under its behaviour policy (replayed rows).
The trainer passes logp_old for fresh rows and logp_stored for replayed rows in one tensor,
`old_log_prob`, so one ratio exp(logp_theta - old_log_prob) serves both kinds of rows.
"""

from collections.abc import Hashable, Sequence
from typing import NamedTuple

import numpy as np
import torch

# Bound on |logp_theta - logp_ref| before exponentiating. exp(20) ~ 4.9e8 stays far below the
# float32/bfloat16 maximum (~3.4e38), so neither a ratio nor A * ratio can overflow, and torch.where
# never meets an inf in the branch it discards (inf * 0 would turn the gradient into NaN).
# verl's vanilla PPO loss clamps at the same bound, so on-policy ratios equal verl's exactly.
# The clamp cuts the gradient outside the bound; for the shaped replay term that gradient,
# beta * w / (w + beta)^2, is already below 1e-7 there (about beta / w for w = e^20, w / beta for
# w = e^-20), so nothing of substance is lost.
MAX_ABS_LOG_RATIO = 20.0


def group_advantage(
    scores: torch.Tensor, group_ids: Sequence[Hashable], *, norm_by_std: bool, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO's group-relative advantage over all members of a group, replayed trajectory included.

        A_i = r_i - mean_{j in G(i)} r_j                                  (norm_by_std=False)
        A_i = (r_i - mean_{j in G(i)} r_j) / (std_{j in G(i)} r_j + eps)  (norm_by_std=True)

    G(i) is the set of rows sharing row i's group id; std is the sample standard deviation
    (divisor |G| - 1), as in verl's GRPO. ExGRPO's release uses norm_by_std=False.

    A group of one raises ValueError: every ExGRPO group has K >= 2 members, and a singleton (for
    instance a replayed trajectory whose fresh siblings were lost) has no baseline. verl's GRPO would
    silently give it mean 0 and std 1, i.e. its raw reward as advantage.

    Args:
        scores: (n,) float, the outcome reward r_i of each row.
        group_ids: n hashable group ids (verl's `uid` array).
    Returns:
        (n,) advantages, same dtype as scores.
    """
    if len(group_ids) != scores.shape[0]:
        raise ValueError(f"group_advantage: {len(group_ids)} group ids for {scores.shape[0]} scores")
    group_index: dict[Hashable, int] = {}
    group_of_row = torch.tensor(
        [group_index.setdefault(g, len(group_index)) for g in group_ids], dtype=torch.long, device=scores.device
    )
    group_size = torch.bincount(group_of_row, minlength=len(group_index))
    if (group_size < 2).any():
        singletons = [g for g, k in group_index.items() if group_size[k] < 2]
        raise ValueError(f"group_advantage: every group needs at least 2 members; groups of one: {singletons[:5]}")

    def group_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(group_index), dtype=values.dtype, device=values.device).index_add_(
            0, group_of_row, values
        )

    group_mean = group_sum(scores) / group_size
    advantages = scores - group_mean[group_of_row]
    if norm_by_std:
        group_std = (group_sum(advantages**2) / (group_size - 1)).sqrt()
        advantages = advantages / (group_std[group_of_row] + eps)
    return advantages


def fresh_rows_mean_advantage(fresh_rewards: np.ndarray, joined_rewards: np.ndarray) -> float:
    """The mean advantage a group's fresh rows carry once stored trajectories share their baseline
    (before any std division):

        mean_i (r_i - r̄) over the fresh rows i,   r̄ the mean over fresh and joined rows
        = mean(r_fresh) - r̄

    Zero for a group of fresh rows only (advantages sum to zero); negative when a stored success
    joins fresh rows that succeed less often than it: the fresh rows are then pushed down on net,
    while the replayed row's push up is damped by its importance weight f(w)."""
    fresh = np.asarray(fresh_rewards, dtype=np.float64)
    everything = np.concatenate([fresh, np.asarray(joined_rewards, dtype=np.float64)])
    return float(fresh.mean() - everything.mean()) if fresh.size else 0.0


def importance_weight(log_prob: torch.Tensor, reference_log_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token importance ratio against reference log-probs, computed without overflow.

        log w = clamp(logp_theta - logp_ref, -MAX_ABS_LOG_RATIO, MAX_ABS_LOG_RATIO)
        w     = exp(log w)

    With logp_ref = logp_stored this is ExGRPO's w for replayed tokens; with logp_ref = logp_old it is
    PPO's ratio r. See MAX_ABS_LOG_RATIO for why the bound is 20.

    Returns:
        (w, log w), both shaped like log_prob.
    """
    log_w = torch.clamp(log_prob - reference_log_prob, min=-MAX_ABS_LOG_RATIO, max=MAX_ABS_LOG_RATIO)
    return torch.exp(log_w), log_w


def shaped_weight(w: torch.Tensor, beta: float) -> torch.Tensor:
    """ExGRPO's policy shaping of the importance weight (LUFFY's shaping applied to w).

        f(w) = w / (w + beta),   beta > 0

    df/dw = beta / (w + beta)^2, so d f(w) / d logp_theta = beta * w / (w + beta)^2: tokens the policy
    already likes (large w) are damped, unlikely ones (small w) are boosted relative to plain w.
    """
    return w / (w + beta)


class ClippedSurrogate(NamedTuple):
    loss: torch.Tensor  # per-token loss
    clipped: torch.Tensor  # bool: the (1 - eps_low, 1 + eps_high) clip is active
    clipped_lower: torch.Tensor  # bool: A < 0 and the dual clip -A * c is active


def ppo_clipped_surrogate(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float | None,
) -> ClippedSurrogate:
    """PPO's clipped surrogate with dual clip, per token, as verl's `compute_policy_loss_vanilla`.

        L_clip = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))
        L      = L_clip                 if A >= 0
        L      = min(L_clip, -A c)      if A < 0     (dual clip, c > 1: bounds the loss of a very
                                                      large ratio on a negative advantage)
    clip_ratio_c None: L = L_clip everywhere (the plain clip, as the release's warm-up).
    """
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 for dual-clip PPO, got {clip_ratio_c}")
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    single_clip = torch.maximum(unclipped, clipped)
    if clip_ratio_c is None:
        return ClippedSurrogate(loss=single_clip, clipped=clipped > unclipped, clipped_lower=torch.zeros_like(clipped, dtype=torch.bool))
    dual_clip_bound = -advantages * clip_ratio_c
    negative_advantage = advantages < 0
    loss = torch.where(negative_advantage, torch.minimum(single_clip, dual_clip_bound), single_clip)
    return ClippedSurrogate(
        loss=loss,
        clipped=clipped > unclipped,
        clipped_lower=(single_clip > dual_clip_bound) & negative_advantage,
    )


class MixedPolicyTokenLoss(NamedTuple):
    loss: torch.Tensor  # (bsz, T) per-token loss, to be aggregated by the caller
    log_ratio: torch.Tensor  # (bsz, T) clamped logp_theta - old_log_prob
    ratio: torch.Tensor  # (bsz, T) r on on-policy rows, w on replayed rows
    shaped_weight: torch.Tensor  # (bsz, T) f(w); meaningful on replayed rows only
    clipped: torch.Tensor  # (bsz, T) bool, on-policy tokens whose PPO clip is active; False elsewhere
    clipped_lower: torch.Tensor  # (bsz, T) bool, on-policy tokens capped by the dual clip; False elsewhere


def mixed_policy_token_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    is_replay: torch.Tensor,
    *,
    shaping_beta: float | None,
    clip_on_policy: bool,
    clip_ratio_low: float,
    clip_ratio_high: float,
    clip_ratio_c: float | None,
) -> MixedPolicyTokenLoss:
    """Per-token loss of ExGRPO's mixed-policy objective.

    Fresh rows (is_replay = 0), r = exp(logp_theta - logp_old):
        L = PPO clipped surrogate (see ppo_clipped_surrogate)   if clip_on_policy
        L = -A r                                                otherwise (release: once replay starts)
    Replayed rows (is_replay = 1), w = exp(logp_theta - logp_stored):
        L = -A f(w),  f(w) = w / (w + beta),  never clipped
        L = -A w                                  when shaping_beta is None (the "no shaping" ablation)

    Args:
        log_prob: (bsz, T) logp_theta.
        old_log_prob: (bsz, T) logp_old on fresh rows, logp_stored on replayed rows.
        advantages: (bsz, T) per-token advantages.
        is_replay: (bsz,) bool, which rows are replayed experience.
    Returns:
        MixedPolicyTokenLoss; padding positions are not masked (the caller aggregates with its mask).
    """
    ratio, log_ratio = importance_weight(log_prob, old_log_prob)
    replayed = is_replay.to(torch.bool).unsqueeze(-1).expand_as(ratio)

    if clip_on_policy:
        surrogate = ppo_clipped_surrogate(ratio, advantages, clip_ratio_low, clip_ratio_high, clip_ratio_c)
        on_policy_loss = surrogate.loss
        clipped = surrogate.clipped & ~replayed
        clipped_lower = surrogate.clipped_lower & ~replayed
    else:
        on_policy_loss = -advantages * ratio
        clipped = clipped_lower = torch.zeros_like(replayed)

    shaped = ratio if shaping_beta is None else shaped_weight(ratio, shaping_beta)
    loss = torch.where(replayed, -advantages * shaped, on_policy_loss)
    return MixedPolicyTokenLoss(
        loss=loss,
        log_ratio=log_ratio,
        ratio=ratio,
        shaped_weight=shaped,
        clipped=clipped,
        clipped_lower=clipped_lower,
    )


def release_token_sum(
    loss_mat: torch.Tensor, mask: torch.Tensor, *, dp_size: int, release_world_size: int, max_response_length: int
) -> torch.Tensor:
    """One micro-batch's policy loss at the authors' release's gradient scale.

        L_mb = dp / (R L_max) * sum_{i,t in mb} m_it l_it

    The release sums a micro-batch's token losses and divides by L_max (8192), sums micro-batches
    and averages gradients over its R = 8 ranks. verl's engine also sums micro-batches and FSDP
    averages over our dp ranks, so the factor dp / R gives every token of the mini-batch the
    release's weight 1 / (R L_max), whatever our dp size (equal to the release at dp = R).
    """
    return (loss_mat * mask).sum() * dp_size / (release_world_size * max_response_length)


def release_token_mean(values: torch.Tensor, mask: torch.Tensor, *, dp_size: int, release_world_size: int) -> torch.Tensor:
    """One micro-batch's entropy at the release's scale: its token mean, per micro-batch.

        H_mb = dp / R * sum_{i,t in mb} m_it H_it / sum_{i,t in mb} m_it     (0 for an empty micro-batch)

    The release adds -c H_mb (c = 0.001) to every micro-batch's loss, not normalised like the
    policy term; dp / R keeps its rank average as the release's (see release_token_sum).
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1) * dp_size / release_world_size


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean over the response tokens:  s_i = sum_t m_it v_it / sum_t m_it.

    Padding positions (m_it = 0) never count, whatever the row length; an empty row gives 0.
    """
    mask = mask.to(values.dtype)
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def trajectory_selection_score(metric: str, entropy: torch.Tensor, log_prob: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The score ExGRPO minimises to pick which stored trajectory of a question to replay,
    under the current policy (temperature 1):

        "entropy":     H_i   = mean_t H(pi_theta(. | x, y_<t))          (the paper's criterion)
        "entropy_sum": S_i   = sum_t H(pi_theta(. | x, y_<t))           (the release's, in effect)
        "perplexity":  PPL_i = exp(-mean_t log pi_theta(y_t | x, y_<t))

    Means are over the response tokens only. The release's mask made its score, in effect, the
    summed entropy, which favours short trajectories; "entropy_sum" reproduces it.
    """
    score = _SELECTION_SCORES.get(metric)
    if score is None:
        raise ValueError(f"trajectory_selection_score: metric must be one of {', '.join(_SELECTION_SCORES)}, got {metric!r}")
    return score(entropy, log_prob, mask)


def _entropy_sum(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (entropy * mask.to(entropy.dtype)).sum(-1)


# One scorer per forward-pass metric of exgrpo_verl.experience.config.SELECTION_METRICS (a test
# checks the two agree).
_SELECTION_SCORES = {
    "entropy": lambda entropy, log_prob, mask: token_mean(entropy, mask),
    "entropy_sum": lambda entropy, log_prob, mask: _entropy_sum(entropy, mask),
    "perplexity": lambda entropy, log_prob, mask: torch.exp(-token_mean(log_prob, mask)),
}
