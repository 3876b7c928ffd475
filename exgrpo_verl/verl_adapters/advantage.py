"""ExGRPO's advantage estimator, registered in verl under `algorithm.adv_estimator=exgrpo`.

verl's V1 trainer hands any estimator other than "grpo" to `ray_trainer.compute_advantage`, which calls
it with keyword arguments token_level_rewards, response_mask, config (the `algorithm` config section)
and index (the `uid` array), plus reward_baselines when the batch has them. Every row is its own
output there (single-turn), and the replayed trajectory is simply one more member of its group.
"""

import logging
from collections import Counter

import numpy as np
import torch

from exgrpo_verl.algorithm import group_advantage
from verl.trainer.ppo.core_algos import register_adv_est

ESTIMATOR_NAME = "exgrpo"

logger = logging.getLogger(__name__)


def compute_exgrpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config=None,
    epsilon: float = 1e-6,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative outcome advantage over all K members of a group (see algorithm.group_advantage).

    The score r_i is the row's summed token-level reward; A_i is broadcast over its response tokens.
    `config.norm_adv_by_std_in_grpo` selects the std division; it defaults to False (the release)
    only when the key is absent: verl's own ppo_trainer.yaml sets it True, so ExGRPO's config sets it.
    Rows without response tokens (verl's synthetic padding rows, which share one uid) take no part
    and get advantage 0. So does a row left alone in its group (its siblings' rollouts failed):
    with no baseline it carries no signal, and one lost rollout must not end a long run.
    Extra keyword arguments verl may pass (reward_baselines, ...) are not used.

    Returns:
        (advantages, returns), both (bsz, response_len); returns equal advantages, as in verl's GRPO.
    """
    norm_by_std = config.get("norm_adv_by_std_in_grpo", False) if config is not None else False
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        with_response = (response_mask.sum(dim=-1) > 0).nonzero().squeeze(-1).tolist()
        members = Counter(index[i] for i in with_response)
        rows = [i for i in with_response if members[index[i]] > 1]
        if len(rows) < len(with_response):
            logger.warning("exgrpo advantage: %d rows are alone in their group (lost rollouts?); their advantage is 0",
                           len(with_response) - len(rows))
        advantages = torch.zeros_like(scores)
        if rows:
            advantages[rows] = group_advantage(scores[rows], [index[i] for i in rows], norm_by_std=norm_by_std, eps=epsilon)
        advantages = advantages.unsqueeze(-1) * response_mask
    return advantages, advantages


def register() -> None:
    """Register the estimator under "exgrpo"; safe to call again (verl only rejects a different function)."""
    register_adv_est(ESTIMATOR_NAME)(compute_exgrpo_outcome_advantage)


register()  # on import: the plugin imports this module when verl loads the registry
