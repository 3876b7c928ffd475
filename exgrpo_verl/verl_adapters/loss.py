"""ExGRPO's actor loss for verl's worker: the replacement for `verl.workers.utils.losses.ppo_loss`.

verl's registered policy losses only see old/new log-probs, advantages and a mask, never which
rows are replayed, so ExGRPO replaces the worker's whole loss function instead:

    actor_rollout_wg.set_loss_fn(make_actor_loss_fn(actor_config, loss_config, replay_started=...))

The engine then calls `loss(model_output=..., data=micro_batch, dp_group=...)` for each micro-batch.
What the trainer must put in the rows (all per-row fields reach the micro-batch):
  is_replay      (bsz,) 1 for a replayed trajectory, 0 for a fresh rollout (absent: all fresh);
  old_log_probs  the step's recomputed log-probs on fresh rows, the *stored* behaviour
                 log-probs on replayed rows (the loss's importance weight w is taken against them).

Metric names (verl prefixes every actor metric with "actor/" if it does not start with it):
  actor/pg_loss, actor/entropy_loss, kl_loss, kl_coef  as verl's ppo_loss;
  actor/pg_clipfrac, actor/pg_clipfrac_lower, actor/ppo_kl  over fresh tokens only, aggregated as
      verl does (mean over micro-batches of each micro-batch's mean; a micro-batch without fresh
      tokens reports 0); the clip fractions are 0 while the on-policy clip is removed;
  exgrpo/replay_token_fraction, exgrpo/replay_importance_weight_sum_per_token,
  exgrpo/replay_shaped_weight_sum_per_token  exact per mini-batch, see `_per_response_token`;
      `replay_weight_means` turns the last two into the mean w and mean f(w) over replayed tokens.
"""

from functools import partial

import torch
from tensordict import TensorDict

from exgrpo_verl.algorithm import mixed_policy_token_loss, release_token_mean, release_token_sum
from exgrpo_verl.config import ExGRPOConfig, ExGRPOLossConfig
from exgrpo_verl.verl_adapters.grad_norm_guard import with_max_grad_norm
from verl.trainer.ppo.core_algos import agg_loss, kl_penalty
from verl.utils.metric import AggregationType, Metric
from verl.utils.torch_functional import masked_mean
from verl.workers.config import ActorConfig
from verl.workers.utils.padding import no_padding_2_padding

REPLAY_TOKEN_FRACTION = "exgrpo/replay_token_fraction"
REPLAY_WEIGHT_SUM = "exgrpo/replay_importance_weight_sum_per_token"
REPLAY_SHAPED_WEIGHT_SUM = "exgrpo/replay_shaped_weight_sum_per_token"
REPLAY_WEIGHT_MEAN = "exgrpo/replay_importance_weight_mean"
REPLAY_SHAPED_WEIGHT_MEAN = "exgrpo/replay_shaped_weight_mean"


def worker_loss_fn(actor_config: ActorConfig, settings: ExGRPOConfig, *, replay_started: bool) -> partial:
    """The loss the trainer sends the workers (set_loss_fn), for ExGRPO and its GRPO twin alike.

    GRPO (replay_ratio = 0) is ExGRPO minus replay: replay never starts, so it trains with the
    warm-up loss for good, with the same aggregation (exgrpo.loss.aggregation), clip rule
    (exgrpo.loss.warmup_dual_clip) and grad-norm skip (exgrpo.max_grad_norm). With verl's
    aggregation and the dual clip (the defaults) that loss is verl's ppo_loss (tests/test_exgrpo_loss.py).
    """
    loss_fn = make_actor_loss_fn(actor_config, settings.loss, replay_started=replay_started and settings.enabled)
    return with_max_grad_norm(loss_fn, settings.max_grad_norm)


def make_actor_loss_fn(actor_config: ActorConfig, loss_config: ExGRPOLossConfig, *, replay_started: bool) -> partial:
    """The worker loss for the current phase, ready for `actor_rollout_wg.set_loss_fn`.

    During warm-up (replay not started) fresh tokens use PPO's clip (with verl's dual clip unless
    loss_config.warmup_dual_clip is off); once replay has started the clip is removed, unless
    loss_config.clip_on_policy_after_start. A module-level function bound to plain values, so the
    partial pickles to the Ray workers.
    """
    if loss_config.aggregation == "release" and actor_config.loss_scale_factor is None:
        raise ValueError("exgrpo.loss.aggregation=release divides token sums by the maximum response length: set "
                         "actor_rollout_ref.actor.loss_scale_factor=${data.max_response_length}")
    return partial(
        exgrpo_actor_loss,
        config=actor_config,
        shaping_beta=loss_config.shaping_beta if loss_config.policy_shaping else None,
        clip_on_policy=not replay_started or loss_config.clip_on_policy_after_start,
        dual_clip=replay_started or loss_config.warmup_dual_clip,
        release_world_size=loss_config.release_world_size if loss_config.aggregation == "release" else None,
    )


def exgrpo_actor_loss(
    config: ActorConfig,
    model_output,
    data: TensorDict,
    dp_group=None,
    *,
    shaping_beta: float | None,
    clip_on_policy: bool,
    dual_clip: bool = True,
    release_world_size: int | None = None,
):
    """ExGRPO's mixed-policy actor loss on one micro-batch, in the stages of verl's ppo_loss:

    1. global-batch normalisation (`_global_batch_info`), as ppo_loss;
    2. policy term (`_policy_term`): `mixed_policy_token_loss`, PPO surrogate on fresh rows and
       -A f(w) on replayed rows, aggregated over the global batch;
    3. minus entropy_coeff * entropy, plus kl_loss_coef * KL(ref) when use_kl_loss (`_aggregate`).

    Aggregation is verl's agg_loss with config.loss_agg_mode, or with release_world_size = R the
    authors' release's: policy token sums x dp / (R L_max) and entropy token means x dp / R per
    micro-batch (algorithm.release_token_sum / release_token_mean), L_max = config.loss_scale_factor.

    Returns:
        (loss, metrics) as the engine expects.
    """
    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = model_output.get("entropy", None)
    loss_aggregation = _global_batch_info(config, data)
    fields = ["response_mask", "old_log_probs", "advantages"]
    fields += [key for key in ("rollout_is_weights", "ref_log_prob") if key in data.keys()]
    padded = data.select(*fields).to_padded_tensor()
    response_mask = padded["response_mask"].to(torch.bool)

    def aggregate(values: torch.Tensor, kind: str) -> torch.Tensor:
        return _aggregate(values, response_mask, kind, config, data["dp_size"], release_world_size)

    pg_loss, metrics = _policy_term(config, log_prob, padded, data, aggregate,
                                    shaping_beta=shaping_beta, clip_on_policy=clip_on_policy, dual_clip=dual_clip)
    metrics["actor/pg_loss"] = Metric(loss_aggregation, pg_loss)
    policy_loss = pg_loss
    if entropy is not None:
        entropy_loss = aggregate(no_padding_2_padding(entropy, data), "entropy")
        policy_loss = policy_loss - config.entropy_coeff * entropy_loss
        metrics["actor/entropy_loss"] = Metric(loss_aggregation, entropy_loss)
    if config.use_kl_loss:
        kl_loss = aggregate(kl_penalty(logprob=log_prob, ref_logprob=padded["ref_log_prob"], kl_penalty=config.kl_loss_type), "kl")
        policy_loss = policy_loss + config.kl_loss_coef * kl_loss
        metrics["kl_loss"] = Metric(loss_aggregation, kl_loss)
        metrics["kl_coef"] = config.kl_loss_coef
    return policy_loss, metrics


def _global_batch_info(config: ActorConfig, data: TensorDict) -> AggregationType:
    """Normalise over the global mini-batch, as ppo_loss does; with it, each micro-batch's loss is
    a partial sum, so loss metrics are SUM-aggregated over micro-batches (else MEAN)."""
    config.global_batch_info["dp_size"] = data["dp_size"]
    config.global_batch_info["batch_num_tokens"] = data["batch_num_tokens"]
    config.global_batch_info["global_batch_size"] = data["global_batch_size"]
    config.global_batch_info["loss_scale_factor"] = config.loss_scale_factor
    global_normalisation = (
        data["dp_size"] > 1
        or data["batch_num_tokens"] is not None
        or data["global_batch_size"] is not None
        or config.loss_scale_factor is not None
    )
    return AggregationType.SUM if global_normalisation else AggregationType.MEAN


def _aggregate(values, mask, kind: str, config: ActorConfig, dp_size: int, release_world_size: int | None) -> torch.Tensor:
    """One micro-batch's share of a loss term: verl's agg_loss, or the release's scale (see exgrpo_actor_loss)."""
    if release_world_size is None:
        return agg_loss(loss_mat=values, loss_mask=mask, loss_agg_mode=config.loss_agg_mode, **config.global_batch_info)
    if kind == "entropy":
        return release_token_mean(values, mask, dp_size=dp_size, release_world_size=release_world_size)
    return release_token_sum(values, mask, dp_size=dp_size, release_world_size=release_world_size,
                             max_response_length=config.loss_scale_factor)


def _is_replay(data: TensorDict, device) -> torch.Tensor:
    """The (bsz,) replay flags of the micro-batch (absent: every row is fresh)."""
    is_replay = data["is_replay"] if "is_replay" in data.keys() else torch.zeros(data.batch_size[0])
    if is_replay.shape != (data.batch_size[0],):
        raise ValueError(f"is_replay must have shape (bsz,) = ({data.batch_size[0]},), got {tuple(is_replay.shape)}")
    return is_replay.to(device=device, dtype=torch.bool)


def _policy_term(config: ActorConfig, log_prob, padded, data, aggregate, *, shaping_beta, clip_on_policy, dual_clip):
    """The aggregated policy loss and its metrics (clip fractions and ppo_kl over fresh tokens only).

    rollout_is_weights (verl's rollout correction), when present, multiply fresh tokens only: a
    replayed token's f(w) already corrects for the policy that generated it (and verl's weight
    for that row compares the stored log-probs, held as both rollout and old log-probs, with
    themselves).
    """
    response_mask = padded["response_mask"].to(torch.bool)
    is_replay = _is_replay(data, log_prob.device)
    replayed_tokens = response_mask & is_replay.unsqueeze(-1)
    fresh_tokens = response_mask & ~is_replay.unsqueeze(-1)
    per_token = mixed_policy_token_loss(
        log_prob,
        padded["old_log_probs"],
        padded["advantages"],
        is_replay,
        shaping_beta=shaping_beta,
        clip_on_policy=clip_on_policy,
        clip_ratio_low=config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio,
        clip_ratio_high=config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio,
        clip_ratio_c=config.clip_ratio_c if dual_clip else None,
    )
    pg_losses = per_token.loss
    if "rollout_is_weights" in padded.keys():
        pg_losses = torch.where(fresh_tokens, pg_losses * padded["rollout_is_weights"], pg_losses)
    metrics = {
        "actor/pg_clipfrac": Metric(AggregationType.MEAN, masked_mean(per_token.clipped.float(), fresh_tokens)),
        "actor/pg_clipfrac_lower": Metric(AggregationType.MEAN, masked_mean(per_token.clipped_lower.float(), fresh_tokens)),
        "actor/ppo_kl": Metric(AggregationType.MEAN, masked_mean(-per_token.log_ratio, fresh_tokens)),
        REPLAY_TOKEN_FRACTION: _per_response_token(replayed_tokens.float(), replayed_tokens, response_mask, data),
        REPLAY_WEIGHT_SUM: _per_response_token(per_token.ratio, replayed_tokens, response_mask, data),
        REPLAY_SHAPED_WEIGHT_SUM: _per_response_token(per_token.shaped_weight, replayed_tokens, response_mask, data),
    }
    return aggregate(pg_losses, "policy"), metrics


def _per_response_token(
    values: torch.Tensor, mask: torch.Tensor, response_mask: torch.Tensor, data: TensorDict
) -> Metric:
    """sum_{mask} values / (response tokens of the mini-batch), exact however the mini-batch is split.

    verl sums a SUM metric over micro-batches and averages it over dp ranks, so each micro-batch
    reports its masked sum divided by batch_num_tokens / dp_size (batch_num_tokens: the mini-batch's
    loss tokens over all dp ranks, i.e. its response tokens). A mean over replayed tokens cannot be
    made exact this way (no micro-batch knows the mini-batch's replayed-token count), hence the
    sum-per-token metrics and `replay_weight_means`. Without batch_num_tokens, the micro-batch
    normalises by its own response tokens and the metric averages over micro-batches.
    """
    masked_sum = (values.detach() * mask).sum()
    if data["batch_num_tokens"] is None:
        return Metric(AggregationType.MEAN, masked_sum / response_mask.sum())
    return Metric(AggregationType.SUM, masked_sum * data["dp_size"] / data["batch_num_tokens"])


def replay_weight_means(actor_metrics: dict, prefix: str = "actor/") -> dict[str, float]:
    """Mean w and mean f(w) over replayed tokens, from the reduced actor metrics of an update.

        mean w = (sum_{replayed} w / N_tokens) / (N_replayed / N_tokens)

    Call on the metrics verl's trainer reduced from `update_actor` (keys carry `prefix`). Exact per
    mini-batch; over several mini-batches the ratio of their averages. Empty when no token was
    replayed.
    """
    fraction = actor_metrics.get(prefix + REPLAY_TOKEN_FRACTION, 0.0)  # absent when no update ran
    if fraction <= 0:
        return {}
    return {
        prefix + REPLAY_WEIGHT_MEAN: actor_metrics[prefix + REPLAY_WEIGHT_SUM] / fraction,
        prefix + REPLAY_SHAPED_WEIGHT_MEAN: actor_metrics[prefix + REPLAY_SHAPED_WEIGHT_SUM] / fraction,
    }
