"""ExGRPO's worker loss and advantage estimator against verl's own ppo_loss / GRPO on engine-shaped batches.

A micro-batch is built as FSDPEngineWithLMHead.forward_step hands it to the loss: jagged nested
tensors per row (prompts, responses, input_ids over prompt + response; response-only response_mask,
old_log_probs, advantages, ...), the per-row flag is_replay as a (bsz,) tensor, and the meta keys
dp_size / batch_num_tokens / global_batch_size. The model output holds log-probs (and entropy) over
the whole sequence, shifted by one: the log-prob of response token t sits at position prompt_len - 1 + t.
"""

import math
import pickle

import numpy as np
import pytest
import torch

from exgrpo_verl.verl_adapters.advantage import ESTIMATOR_NAME, compute_exgrpo_outcome_advantage, register
from exgrpo_verl.verl_adapters.loss import (
    REPLAY_SHAPED_WEIGHT_MEAN,
    REPLAY_TOKEN_FRACTION,
    REPLAY_WEIGHT_MEAN,
    ExGRPOLossConfig,
    exgrpo_actor_loss,
    make_actor_loss_fn,
    replay_weight_means,
)
from verl.protocol import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
from verl.utils import tensordict_utils as tu
from verl.utils.metric import Metric
from verl.utils.py_functional import append_to_dict, rename_dict
from verl.workers.config import ActorConfig
from verl.workers.utils.losses import ppo_loss

LOSS_AGG_MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def _jagged(tensors):
    return torch.nested.as_nested_tensor(tensors, layout=torch.jagged)


def make_micro_batch(
    prompt_lens,
    log_ratios,
    advantages,
    *,
    is_replay=None,
    dp_size=1,
    batch_num_tokens=None,
    global_batch_size=None,
    rollout_is_weights=None,
    with_ref=False,
    seed=0,
):
    """(model_output, data) for one micro-batch; log_ratios[i] = logp_theta - old_log_probs on row i's response."""
    g = torch.Generator().manual_seed(seed)
    response_lens = [len(r) for r in log_ratios]
    old_log_probs = [-2.0 * torch.rand(n, generator=g) for n in response_lens]
    current = [old + torch.tensor(r, dtype=torch.float32) for old, r in zip(old_log_probs, log_ratios)]

    def over_sequence(response_values):  # place response values at the engine's shifted positions
        seqs = []
        for p, values in zip(prompt_lens, response_values):
            seq = torch.rand(p + len(values), generator=g)  # positions the loss must ignore
            seq[p - 1 : p - 1 + len(values)] = values
            seqs.append(seq)
        return seqs

    log_prob_seqs = over_sequence(current)
    offsets = torch.tensor([0] + [len(s) for s in log_prob_seqs]).cumsum(0)
    log_prob_values = torch.cat(log_prob_seqs).requires_grad_()
    model_output = {
        "log_probs": torch.nested.nested_tensor_from_jagged(log_prob_values, offsets),
        "entropy": _jagged(over_sequence([torch.rand(n, generator=g) for n in response_lens])),
    }

    prompts = [torch.randint(0, 100, (p,), generator=g) for p in prompt_lens]
    responses = [torch.randint(0, 100, (n,), generator=g) for n in response_lens]
    fields = {
        "prompts": _jagged(prompts),
        "responses": _jagged(responses),
        "input_ids": _jagged([torch.cat(pr) for pr in zip(prompts, responses)]),
        "response_mask": _jagged([torch.ones(n, dtype=torch.int64) for n in response_lens]),
        "old_log_probs": _jagged(old_log_probs),
        "advantages": _jagged([torch.full((n,), float(a)) for n, a in zip(response_lens, advantages)]),
    }
    if is_replay is not None:
        fields["is_replay"] = torch.tensor(is_replay)
    if rollout_is_weights is not None:
        fields["rollout_is_weights"] = _jagged(
            [torch.full((n,), float(w)) for n, w in zip(response_lens, rollout_is_weights)]
        )
    if with_ref:
        fields["ref_log_prob"] = _jagged([lp - 0.3 * torch.rand(lp.shape, generator=g) for lp in current])
    data = tu.get_tensordict(
        fields,
        non_tensor_dict={
            "dp_size": dp_size,
            "batch_num_tokens": batch_num_tokens,
            "global_batch_size": global_batch_size,
        },
    )
    return model_output, data


def actor_config(loss_agg_mode="token-mean", **overrides):
    settings = dict(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=4,
        loss_agg_mode=loss_agg_mode,
        clip_ratio_low=0.2,
        clip_ratio_high=0.28,
        entropy_coeff=0.01,
        use_kl_loss=True,
        kl_loss_coef=0.05,
    )
    settings.update(overrides)
    return ActorConfig(**settings)


def random_fresh_batch(seed, **kwargs):
    """Five fresh rows with ratios up to e^+-2, so PPO's clip and dual clip both trigger."""
    g = torch.Generator().manual_seed(seed)
    response_lens = [3, 5, 1, 4, 6]
    log_ratios = [(4 * torch.rand(n, generator=g) - 2).tolist() for n in response_lens]
    log_ratios[1][0] = 1.5  # ratio 4.5 > c = 3 on a negative advantage: the dual clip binds
    advantages = [0.8, -1.2, 0.3, -0.5, 1.1]
    return make_micro_batch([2, 4, 3, 1, 5], log_ratios, advantages, seed=seed, **kwargs)


GLOBAL_INFO = {
    "local": dict(dp_size=1, batch_num_tokens=None, global_batch_size=None),
    "global": dict(dp_size=2, batch_num_tokens=41, global_batch_size=12, rollout_is_weights=[0.5, 1.0, 1.5, 2.0, 0.0]),
}


@pytest.mark.parametrize("info", GLOBAL_INFO)
@pytest.mark.parametrize("loss_agg_mode", LOSS_AGG_MODES)
def test_without_replayed_rows_the_loss_is_verls_vanilla_ppo_loss(loss_agg_mode, info):
    config = actor_config(loss_agg_mode)
    assert config.policy_loss.loss_mode == "vanilla"

    model_output, data = random_fresh_batch(seed=1, is_replay=[0, 0, 0, 0, 0], with_ref=True, **GLOBAL_INFO[info])
    verl_loss, verl_metrics = ppo_loss(config, model_output, data)
    (verl_grad,) = torch.autograd.grad(verl_loss, model_output["log_probs"])

    model_output, data = random_fresh_batch(seed=1, is_replay=[0, 0, 0, 0, 0], with_ref=True, **GLOBAL_INFO[info])
    loss, metrics = exgrpo_actor_loss(config, model_output, data, shaping_beta=0.1, clip_on_policy=True)
    (grad,) = torch.autograd.grad(loss, model_output["log_probs"])

    torch.testing.assert_close(loss, verl_loss)
    torch.testing.assert_close(grad.values(), verl_grad.values())
    compared = ["actor/pg_loss", "actor/pg_clipfrac", "actor/pg_clipfrac_lower", "actor/ppo_kl", "actor/entropy_loss"]
    for key in compared + ["kl_loss"]:
        assert metrics[key].aggregation == verl_metrics[key].aggregation, key
        assert metrics[key].aggregate() == pytest.approx(verl_metrics[key].aggregate(), rel=1e-6, abs=1e-7), key
    assert metrics["kl_coef"] == verl_metrics["kl_coef"]
    assert metrics["actor/pg_clipfrac"].aggregate() > 0 and metrics["actor/pg_clipfrac_lower"].aggregate() > 0
    assert metrics[REPLAY_TOKEN_FRACTION].aggregate() == 0


def test_missing_is_replay_means_every_row_is_fresh():
    config = actor_config()
    loss_with_flag, _ = exgrpo_actor_loss(
        config, *random_fresh_batch(seed=2, is_replay=[0] * 5, with_ref=True), shaping_beta=0.1, clip_on_policy=False
    )
    loss_without, _ = exgrpo_actor_loss(
        config, *random_fresh_batch(seed=2, with_ref=True), shaping_beta=0.1, clip_on_policy=False
    )
    torch.testing.assert_close(loss_with_flag, loss_without)


def test_is_replay_of_the_wrong_shape_is_rejected():
    model_output, data = random_fresh_batch(seed=2)
    data["is_replay"] = torch.zeros(5, 1)
    with pytest.raises(ValueError, match="is_replay must have shape"):
        exgrpo_actor_loss(actor_config(), model_output, data, shaping_beta=0.1, clip_on_policy=True)


# Row 0 fresh with A = 0 (contributes nothing), rows 1 and 2 replayed; the last log-ratio is clamped to 20.
REPLAY_LOG_RATIOS = [[0.4, -0.3, 0.9], [0.3, -1.0], [2.0, -0.5, 0.0, 25.0]]
REPLAY_ADVANTAGES = [0.0, 0.5, -0.25]


def hand_replayed_row_losses(beta):
    """sum_t -A f(w_t) for each replayed row, w_t = exp(min(log-ratio, 20))."""
    return [
        sum(-adv * math.exp(min(r, 20.0)) / (math.exp(min(r, 20.0)) + beta) for r in log_ratios)
        for log_ratios, adv in zip(REPLAY_LOG_RATIOS[1:], REPLAY_ADVANTAGES[1:])
    ]


@pytest.mark.parametrize("clip_on_policy", [True, False])
@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-sum-norm"])
def test_replayed_rows_contribute_minus_advantage_times_shaped_weight(loss_agg_mode, clip_on_policy):
    beta = 0.1
    config = actor_config(loss_agg_mode, entropy_coeff=0.0, use_kl_loss=False)
    model_output, data = make_micro_batch(
        [2, 3, 1],
        REPLAY_LOG_RATIOS,
        REPLAY_ADVANTAGES,
        is_replay=[0, 1, 1],
        rollout_is_weights=[1.0, 7.0, 7.0],  # rollout correction must not touch replayed rows
    )
    loss, metrics = exgrpo_actor_loss(config, model_output, data, shaping_beta=beta, clip_on_policy=clip_on_policy)

    row_sums = hand_replayed_row_losses(beta)
    if loss_agg_mode == "token-mean":
        expected = sum(row_sums) / 9  # all 9 response tokens, fresh ones included
    else:
        expected = sum(row_sums) / 3 / 4  # mean over 3 sequences, divided by the padded length 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["actor/pg_loss"].aggregate() == pytest.approx(expected, rel=1e-6)
    assert metrics["actor/pg_clipfrac"].aggregate() == 0  # row 0 has A = 0: its clip never binds
    # PPO's KL estimate covers the fresh row only: -mean(log-ratio) of row 0
    assert metrics["actor/ppo_kl"].aggregate() == pytest.approx(-(0.4 - 0.3 + 0.9) / 3, rel=1e-5)


def test_replay_metrics_give_exact_means_across_micro_batches_and_dp_ranks():
    """One mini-batch on 2 dp ranks, 2 micro-batches each (one without replayed rows), aggregated as verl does."""
    beta = 0.1
    config = actor_config(entropy_coeff=0.0, use_kl_loss=False)
    tokens_per_rank = 3 + 2 + 3 + 2 + 4
    batch_info = dict(dp_size=2, batch_num_tokens=2 * tokens_per_rank, global_batch_size=10)
    fresh_only = make_micro_batch([2, 3], [[0.1, 0.2, 0.3], [0.0, -0.1]], [1.0, -1.0], is_replay=[0, 0], **batch_info)
    with_replay = make_micro_batch([2, 3, 1], REPLAY_LOG_RATIOS, REPLAY_ADVANTAGES, is_replay=[0, 1, 1], **batch_info)

    per_rank = []
    for micro_batches in ((fresh_only, with_replay), (with_replay, fresh_only)):
        rank_metrics = {}
        for model_output, data in micro_batches:
            _, micro_metrics = exgrpo_actor_loss(config, model_output, data, shaping_beta=beta, clip_on_policy=False)
            append_to_dict(rank_metrics, micro_metrics)
        per_rank.append(rank_metrics)
    reduced = {key: Metric.aggregate_dp([rank[key] for rank in per_rank]) for key in per_rank[0] if key != "kl_coef"}
    reduced = rename_dict(reduced, "actor/")

    replayed_w = [math.exp(min(r, 20.0)) for row in REPLAY_LOG_RATIOS[1:] for r in row]
    assert reduced["actor/" + REPLAY_TOKEN_FRACTION] == pytest.approx(len(replayed_w) / tokens_per_rank)
    means = replay_weight_means(reduced)
    assert means["actor/" + REPLAY_WEIGHT_MEAN] == pytest.approx(sum(replayed_w) / len(replayed_w), rel=1e-6)
    assert means["actor/" + REPLAY_SHAPED_WEIGHT_MEAN] == pytest.approx(
        sum(w / (w + beta) for w in replayed_w) / len(replayed_w), rel=1e-6
    )


def test_replay_weight_means_are_empty_without_replayed_tokens():
    assert replay_weight_means({"actor/" + REPLAY_TOKEN_FRACTION: 0.0}) == {}


@pytest.mark.parametrize(
    ("replay_started", "clip_after_start", "clip_on_policy"),
    [(False, False, True), (True, False, False), (True, True, True), (False, True, True)],
)
def test_loss_fn_for_each_phase_pickles_like_ray_sends_it(replay_started, clip_after_start, clip_on_policy):
    config = actor_config()
    loss_fn = make_actor_loss_fn(
        config,
        ExGRPOLossConfig(shaping_beta=0.2, clip_on_policy_after_start=clip_after_start),
        replay_started=replay_started,
    )
    assert loss_fn.keywords["clip_on_policy"] is clip_on_policy
    assert loss_fn.keywords["shaping_beta"] == 0.2

    shipped = pickle.loads(pickle.dumps(loss_fn))
    model_output, data = make_micro_batch(
        [2, 3, 1], REPLAY_LOG_RATIOS, REPLAY_ADVANTAGES, is_replay=[0, 1, 1], with_ref=True
    )
    loss, _ = loss_fn(model_output=model_output, data=data)
    shipped_loss, _ = shipped(model_output=model_output, data=data, dp_group=None)
    torch.testing.assert_close(shipped_loss, loss)


@pytest.mark.parametrize("beta", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_loss_config_rejects_a_bad_shaping_beta(beta):
    with pytest.raises(ValueError, match=r"exgrpo.loss.shaping_beta=.*: must be a finite number > 0"):
        ExGRPOLossConfig(shaping_beta=beta)


def test_loss_config_rejects_a_non_boolean_clip_switch():
    with pytest.raises(ValueError, match=r"exgrpo.loss.clip_on_policy_after_start=.*: must be true or false"):
        ExGRPOLossConfig(clip_on_policy_after_start="no")


def test_loss_config_defaults_are_the_release():
    assert ExGRPOLossConfig() == ExGRPOLossConfig(shaping_beta=0.1, clip_on_policy_after_start=False)


# ---- advantage estimator -------------------------------------------------------------------------


def outcome_batch(uids, scores, response_lens, response_len=4):
    rewards = torch.zeros(len(scores), response_len)
    mask = torch.zeros(len(scores), response_len)
    for i, (score, n) in enumerate(zip(scores, response_lens)):
        mask[i, :n] = 1
        if n:
            rewards[i, n - 1] = score  # reward at the last response token, as rm_scores
    return DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask},
        non_tensors={"uid": np.array(uids, dtype=object)},
    )


def test_register_is_idempotent_and_verl_finds_the_estimator():
    register()
    register()
    assert get_adv_estimator_fn(ESTIMATOR_NAME) is compute_exgrpo_outcome_advantage


@pytest.mark.parametrize("norm_by_std", [False, True])
def test_estimator_through_verls_v1_path_equals_grpo(norm_by_std):
    register()
    uids = ["q1", "q2", "q1", "q2", "q1", "q2"]
    batch = outcome_batch(uids, [1.0, 0.0, 0.0, 1.0, 1.0, 1.0], [4, 2, 3, 4, 1, 3])
    expected, _ = compute_grpo_outcome_advantage(
        batch.batch["token_level_rewards"], batch.batch["response_mask"], np.array(uids, dtype=object),
        norm_adv_by_std_in_grpo=norm_by_std,
    )
    out = compute_advantage_for_multi_trajectories(
        batch,
        batch_keys=[f"{uid}_{i}_0" for i, uid in enumerate(uids)],
        adv_estimator=ESTIMATOR_NAME,
        config=AlgoConfig(adv_estimator=ESTIMATOR_NAME, norm_adv_by_std_in_grpo=norm_by_std),
    )
    torch.testing.assert_close(out.batch["advantages"], expected)
    torch.testing.assert_close(out.batch["returns"], expected)
    # q1 scores (1, 0, 1): mean 2/3, sample std sqrt(1/3)
    expected_first = (1 - 2 / 3) / (math.sqrt(1 / 3) + 1e-6) if norm_by_std else 1 - 2 / 3
    assert out.batch["advantages"][0, 0].item() == pytest.approx(expected_first, rel=1e-5)


def test_estimator_defaults_to_no_std_division_without_the_config_key():
    batch = outcome_batch(["q", "q"], [1.0, 0.0], [2, 2])
    advantages, _ = compute_exgrpo_outcome_advantage(
        batch.batch["token_level_rewards"], batch.batch["response_mask"], batch.non_tensor_batch["uid"]
    )
    torch.testing.assert_close(advantages, torch.tensor([[0.5, 0.5, 0.0, 0.0], [-0.5, -0.5, 0.0, 0.0]]))


def test_estimator_skips_verls_padding_rows_and_zeroes_a_row_alone_in_its_group(caplog):
    # verl's synthetic padding rows: no response tokens, one shared uid (here a group of one)
    batch = outcome_batch(["q", "q", "pad"], [1.0, 0.0, 0.0], [2, 3, 0])
    advantages, _ = compute_exgrpo_outcome_advantage(
        batch.batch["token_level_rewards"], batch.batch["response_mask"], batch.non_tensor_batch["uid"]
    )
    torch.testing.assert_close(advantages[:, 0], torch.tensor([0.5, -0.5, 0.0]))

    lonely = outcome_batch(["q", "q", "lonely"], [1.0, 0.0, 1.0], [2, 3, 1])
    advantages, _ = compute_exgrpo_outcome_advantage(
        lonely.batch["token_level_rewards"], lonely.batch["response_mask"], lonely.non_tensor_batch["uid"]
    )
    torch.testing.assert_close(advantages[:, 0], torch.tensor([0.5, -0.5, 0.0]))
    assert "1 rows are alone in their group" in caplog.text
