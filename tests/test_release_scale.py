"""The release's gradient scale and entropy weight (`exgrpo.loss.aggregation=release`).

A fixed batch of fresh and replayed rows is split into data-parallel ranks and micro-batches
as verl's engine splits it; our loss runs on each engine-shaped micro-batch and backpropagates,
and the gradient is averaged over ranks as FSDP averages it. A hand-written release formula
(ExGRPO's release: per micro-batch, token losses summed / L_max minus 0.001 x the micro-batch's
token-mean entropy; micro-batches summed; gradients averaged over its 8 ranks) runs on the same
batch. The per-token log-probs and entropies are the leaves, so their gradients are the per-token
weights themselves.
"""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from exgrpo_verl.config import ExGRPOConfig, ExGRPOLossConfig
from exgrpo_verl.main import CONFIG_DIR
from exgrpo_verl.verl_adapters.grad_norm_guard import MAX_GRAD_NORM_ATTRIBUTE
from exgrpo_verl.verl_adapters.loss import make_actor_loss_fn, worker_loss_fn
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.config import ActorConfig

L_MAX, RELEASE_RANKS, ENTROPY_COEFF, BETA = 16, 8, 0.001, 0.1
ROWS, MICRO_BATCH_ROWS = 32, 2


def _batch(replay_every: int | None = 4, max_abs_log_ratio: float = 0.5):
    """32 rows (every 4th replayed; None: all fresh), lengths 1..L_MAX, advantages in [-1, 1],
    log-ratios up to e^+-max_abs_log_ratio."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, L_MAX + 1, (ROWS,), generator=g).tolist()
    tokens = sum(lengths)
    return {
        "lengths": lengths,
        "prompt_lengths": torch.randint(1, 6, (ROWS,), generator=g).tolist(),
        "advantages": (2 * torch.rand(ROWS, generator=g, dtype=torch.float64) - 1),
        "is_replay": torch.tensor([int(replay_every is not None and i % replay_every == replay_every - 1) for i in range(ROWS)]),
        "old_log_probs": -3 * torch.rand(tokens, generator=g, dtype=torch.float64),
        "log_ratio": (2 * torch.rand(tokens, generator=g, dtype=torch.float64) - 1) * max_abs_log_ratio,
        "entropy": 2 * torch.rand(tokens, generator=g, dtype=torch.float64),
    }


def _leaves(batch):
    log_prob = (batch["old_log_probs"] + batch["log_ratio"]).clone().requires_grad_()
    entropy = batch["entropy"].clone().requires_grad_()
    return log_prob, entropy


def _spans(batch):
    offsets = np.cumsum([0] + batch["lengths"])
    return [slice(int(a), int(b)) for a, b in zip(offsets[:-1], offsets[1:])]


def _engine_micro_batch(batch, rows, log_prob, entropy, dp_size):
    """(model_output, data) for `rows`, as FSDPEngineWithLMHead hands them to the loss: outputs over
    the whole sequence, shifted by one (response token t at position prompt_len - 1 + t)."""
    spans = _spans(batch)

    def over_sequence(leaf):
        seqs = [torch.cat([torch.zeros(batch["prompt_lengths"][i] - 1, dtype=leaf.dtype), leaf[spans[i]],
                           torch.zeros(1, dtype=leaf.dtype)]) for i in rows]
        offsets = torch.tensor([0] + [len(s) for s in seqs]).cumsum(0)
        return torch.nested.nested_tensor_from_jagged(torch.cat(seqs), offsets)

    def jagged(tensors):
        return torch.nested.as_nested_tensor(tensors, layout=torch.jagged)

    prompts = [torch.ones(batch["prompt_lengths"][i], dtype=torch.int64) for i in rows]
    responses = [torch.ones(batch["lengths"][i], dtype=torch.int64) for i in rows]
    data = tu.get_tensordict(
        {
            "prompts": jagged(prompts),
            "responses": jagged(responses),
            "input_ids": jagged([torch.cat(pr) for pr in zip(prompts, responses)]),
            "response_mask": jagged([torch.ones(batch["lengths"][i], dtype=torch.int64) for i in rows]),
            "old_log_probs": jagged([batch["old_log_probs"][spans[i]] for i in rows]),
            "advantages": jagged([batch["advantages"][i].expand(batch["lengths"][i]).clone() for i in rows]),
            "is_replay": batch["is_replay"][rows],
        },
        non_tensor_dict={"dp_size": dp_size, "batch_num_tokens": sum(batch["lengths"]), "global_batch_size": ROWS},
    )
    return {"log_probs": over_sequence(log_prob), "entropy": over_sequence(entropy)}, data


def _micro_batches(ranks: int) -> list[list[list[int]]]:
    """Rows of each rank (contiguous), cut into micro-batches of MICRO_BATCH_ROWS rows."""
    per_rank = ROWS // ranks
    return [[list(range(start, min(start + MICRO_BATCH_ROWS, stop)))
             for start in range(stop - per_rank, stop, MICRO_BATCH_ROWS)]
            for stop in range(per_rank, ROWS + 1, per_rank)]


def our_gradients(batch, dp_size: int, aggregation: str, replay_started: bool = True):
    """Gradients of our loss on the leaves: summed over micro-batches, averaged over dp ranks."""
    actor = ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=MICRO_BATCH_ROWS,
                        loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=L_MAX,
                        entropy_coeff=ENTROPY_COEFF, use_kl_loss=False, clip_ratio=0.2)
    loss_fn = make_actor_loss_fn(actor, ExGRPOLossConfig(shaping_beta=BETA, aggregation=aggregation,
                                                         release_world_size=RELEASE_RANKS), replay_started=replay_started)
    return loss_gradients(batch, dp_size, loss_fn)


def loss_gradients(batch, dp_size: int, loss_fn):
    """Gradients of `loss_fn` on the leaves, run per engine micro-batch: summed over micro-batches,
    averaged over dp ranks."""
    log_prob, entropy = _leaves(batch)
    for rank in _micro_batches(dp_size):
        for rows in rank:
            model_output, data = _engine_micro_batch(batch, rows, log_prob, entropy, dp_size)
            loss, _ = loss_fn(model_output=model_output, data=data)
            loss.backward()
    return log_prob.grad / dp_size, entropy.grad / dp_size


def release_gradients(batch, replay_started: bool = True):
    """The release's formula, written out: 8 ranks, per micro-batch
    sum_t(-A_t g(ratio_t)) / L_max - 0.001 * mean_t H_t, g = f(w) = w / (w + 0.1) on replayed rows;
    on fresh rows the unclipped ratio once replay has started, before it (and so for its GRPO
    baseline, which never replays) PPO's plain clip max(-A r, -A clip(r, 0.8, 1.2)), no dual clip;
    gradients averaged over ranks."""
    log_prob, entropy = _leaves(batch)
    spans = _spans(batch)
    total = 0.0
    for rank in _micro_batches(RELEASE_RANKS):
        rank_loss = 0.0
        for rows in rank:
            token_loss, entropies = [], []
            for i in rows:
                ratio = torch.exp(log_prob[spans[i]] - batch["old_log_probs"][spans[i]])
                advantage = batch["advantages"][i]
                if batch["is_replay"][i]:
                    token_loss.append(-advantage * ratio / (ratio + BETA))
                elif replay_started:
                    token_loss.append(-advantage * ratio)
                else:
                    token_loss.append(torch.maximum(-advantage * ratio, -advantage * torch.clamp(ratio, 0.8, 1.2)))
                entropies.append(entropy[spans[i]])
            rank_loss = rank_loss + torch.cat(token_loss).sum() / L_MAX - ENTROPY_COEFF * torch.cat(entropies).mean()
        total = total + rank_loss / RELEASE_RANKS
    total.backward()
    return log_prob.grad, entropy.grad


@pytest.mark.parametrize("dp_size", [RELEASE_RANKS, 2, 1])
def test_release_aggregation_gives_the_releases_gradient_on_every_token(dp_size):
    batch = _batch()
    ours_log_prob, ours_entropy = our_gradients(batch, dp_size, "release")
    release_log_prob, release_entropy = release_gradients(batch)
    torch.testing.assert_close(ours_log_prob, release_log_prob, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(ours_entropy, release_entropy, rtol=1e-9, atol=1e-15)


def test_verls_aggregation_is_smaller_by_the_rows_per_release_rank():
    """seq-mean-token-sum-norm weighs a token 1 / (rows x L_max), the release 1 / (8 x L_max)."""
    batch = _batch()
    verl_log_prob, verl_entropy = our_gradients(batch, 1, "verl")
    release_log_prob, release_entropy = release_gradients(batch)
    torch.testing.assert_close(verl_log_prob * ROWS / RELEASE_RANKS, release_log_prob, rtol=1e-9, atol=1e-15)
    assert not torch.allclose(verl_entropy * ROWS / RELEASE_RANKS, release_entropy)  # entropy: a per-micro-batch mean


def test_measured_per_token_weights():
    """The per-token policy weight d loss / d(-A r) on fresh tokens at r = 1, and the entropy weight."""
    batch = _batch()
    batch["log_ratio"] = torch.zeros_like(batch["log_ratio"])  # r = 1: d(-A r)/d logp = -A
    fresh = torch.cat([torch.full((n,), not bool(flag)) for n, flag in zip(batch["lengths"], batch["is_replay"])])
    advantage = torch.cat([a.expand(n) for a, n in zip(batch["advantages"], batch["lengths"])])
    release_log_prob, _ = release_gradients(batch)
    ours_log_prob, _ = our_gradients(batch, 2, "release")
    verl_log_prob, _ = our_gradients(batch, 2, "verl")
    for grad, expected in ((release_log_prob, 1 / (RELEASE_RANKS * L_MAX)), (ours_log_prob, 1 / (RELEASE_RANKS * L_MAX)),
                           (verl_log_prob, 1 / (ROWS * L_MAX))):
        weights = (grad / -advantage)[fresh]
        torch.testing.assert_close(weights, torch.full_like(weights, expected), rtol=1e-9, atol=0)


def test_release_aggregation_needs_the_length_normaliser():
    actor = ActorConfig(strategy="fsdp", rollout_n=4, ppo_micro_batch_size_per_gpu=2, loss_scale_factor=None)
    with pytest.raises(ValueError, match="actor_rollout_ref.actor.loss_scale_factor"):
        make_actor_loss_fn(actor, ExGRPOLossConfig(aggregation="release"), replay_started=True)


def preset_settings(*overrides: str) -> tuple[ActorConfig, ExGRPOConfig]:
    """The actor and exgrpo settings of `+preset=release` with `overrides`, composed by hydra as the
    entry point composes them (responses of L_MAX tokens, the test batch's)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        config = compose(config_name="exgrpo", overrides=["+preset=release", f"data.max_response_length={L_MAX}", *overrides])
    exgrpo = ExGRPOConfig.from_dict(OmegaConf.to_container(config.exgrpo, resolve=True))
    return omega_conf_to_dataclass(config.actor_rollout_ref.actor), exgrpo


@pytest.mark.parametrize("dp_size", [RELEASE_RANKS, 1])
def test_grpo_under_the_preset_gets_the_releases_gradient_and_grad_norm_skip(dp_size):
    """grpo.sh's loss (replay_ratio=0 with the preset): the release's warm-up loss for good, i.e. its
    aggregation, plain clip (ratios up to e^1.5 here, past the dual clip's c = 3) and 500 skip."""
    actor, settings = preset_settings("exgrpo.replay_ratio=0")
    loss_fn = worker_loss_fn(actor, settings, replay_started=False)
    assert getattr(loss_fn, MAX_GRAD_NORM_ATTRIBUTE) == 500
    batch = _batch(replay_every=None, max_abs_log_ratio=1.5)
    assert (torch.exp(batch["log_ratio"]) > actor.clip_ratio_c).any()  # the dual clip would cap some tokens
    ours_log_prob, ours_entropy = loss_gradients(batch, dp_size, loss_fn)
    release_log_prob, release_entropy = release_gradients(batch, replay_started=False)
    torch.testing.assert_close(ours_log_prob, release_log_prob, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(ours_entropy, release_entropy, rtol=1e-9, atol=1e-15)


def test_exgrpo_under_the_preset_gets_the_releases_gradient_in_both_phases():
    """exgrpo.sh's loss with the preset: warm-up (fresh rows, plain clip) and after the start
    (replayed rows f(w), fresh rows unclipped), as the release computes them."""
    actor, settings = preset_settings()
    for replay_started, batch in ((False, _batch(replay_every=None, max_abs_log_ratio=1.5)), (True, _batch())):
        loss_fn = worker_loss_fn(actor, settings, replay_started=replay_started)
        assert getattr(loss_fn, MAX_GRAD_NORM_ATTRIBUTE) == 500
        ours = loss_gradients(batch, RELEASE_RANKS, loss_fn)
        for mine, release in zip(ours, release_gradients(batch, replay_started=replay_started)):
            torch.testing.assert_close(mine, release, rtol=1e-9, atol=1e-15)


# ---- the entropy bonus's weight: a token mean per micro-batch, so it grows with the micro-batch count
RELEASE_TOKEN_BUDGET = 32768  # the release's ppo_max_token_len_per_gpu (exp_scripts/run_exgrpo.sh)


def _paper_scale_rank_batch(rows: int = 64):
    """One GPU's share of a release mini-batch (64 questions x 8 rollouts / 8 GPUs = 64 rows):
    prompts of 100-400 tokens, responses of 300-8192 (seeded), the rest as `_batch`."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(300, 8193, (rows,), generator=g).tolist()
    tokens = sum(lengths)
    return {
        "lengths": lengths,
        "prompt_lengths": torch.randint(100, 401, (rows,), generator=g).tolist(),
        "advantages": 2 * torch.rand(rows, generator=g, dtype=torch.float64) - 1,
        "is_replay": torch.zeros(rows, dtype=torch.int64),
        "old_log_probs": -3 * torch.rand(tokens, generator=g, dtype=torch.float64),
        "log_ratio": torch.zeros(tokens, dtype=torch.float64),
        "entropy": 2 * torch.rand(tokens, generator=g, dtype=torch.float64),
    }


def _verl_micro_batches(batch, budget: int) -> list[list[int]]:
    """The rows of each update micro-batch, as verl 0.9.1's engine splits a rank's mini-batch
    under use_dynamic_bsz (seqlen_balancing.rearrange_micro_batches, by prompt + response tokens)."""
    from verl.utils.seqlen_balancing import rearrange_micro_batches

    sequences = [torch.ones(p + r, dtype=torch.int64) for p, r in zip(batch["prompt_lengths"], batch["lengths"])]
    data = tu.get_tensordict({"input_ids": torch.nested.as_nested_tensor(sequences, layout=torch.jagged)})
    _, partitions = rearrange_micro_batches(data, max_token_len=budget)
    return [sorted(int(i) for i in partition) for partition in partitions]


def _release_micro_batches(batch) -> list[list[int]]:
    """The release's split (its seqlen_balancing.rearrange_micro_batches): ceil(tokens / 32,768)
    micro-batches, balanced by token count."""
    from verl.utils.seqlen_balancing import ceildiv, get_seqlen_balanced_partitions

    sequence_lengths = [p + r for p, r in zip(batch["prompt_lengths"], batch["lengths"])]
    count = ceildiv(sum(sequence_lengths), RELEASE_TOKEN_BUDGET)
    return [sorted(p) for p in get_seqlen_balanced_partitions(sequence_lengths, count, equal_size=False)]


def _entropy_gradient(batch, micro_batches, loss_fn, dp_size: int = RELEASE_RANKS) -> torch.Tensor:
    """d loss / d H_t of one rank running `loss_fn` on each micro-batch (its share of the
    rank-averaged gradient)."""
    log_prob, entropy = _leaves(batch)
    log_prob = log_prob.detach()  # the entropy's gradient only (half the work)
    for rows in micro_batches:
        model_output, data = _engine_micro_batch(batch, rows, log_prob, entropy, dp_size)
        loss, _ = loss_fn(model_output=model_output, data=data)
        loss.backward()
    return entropy.grad / dp_size


def _release_entropy_gradient(batch, micro_batches) -> torch.Tensor:
    """The release: -0.001 x the token-mean entropy of each micro-batch, summed, /8 ranks."""
    _, entropy = _leaves(batch)
    spans = _spans(batch)
    loss = sum(-ENTROPY_COEFF * torch.cat([entropy[spans[i]] for i in rows]).mean() for rows in micro_batches)
    (loss / RELEASE_RANKS).backward()
    return entropy.grad


def test_the_presets_entropy_weight_is_the_releases_at_paper_scale():
    """Under the preset, verl's engine cuts a paper-scale rank mini-batch into as many micro-batches
    as the release did, so the entropy bonus weighs what the release's did: the per-token weights
    sum to -0.001 x (micro-batches) / 8 on both sides, and token by token they are the release's
    formula on our split. (The former 18,432-token budget made 16 micro-batches of this batch
    where the release made 9: 1.78 x the release's entropy weight.)"""
    for arm in ([], ["exgrpo.replay_ratio=0"]):  # ExGRPO and GRPO: the same budget, so the same split
        actor, settings = preset_settings(*arm)
        assert actor.use_dynamic_bsz and actor.ppo_max_token_len_per_gpu == RELEASE_TOKEN_BUDGET
    batch = _paper_scale_rank_batch()
    ours_split = _verl_micro_batches(batch, actor.ppo_max_token_len_per_gpu)
    release_split = _release_micro_batches(batch)
    assert len(ours_split) == len(release_split) == 9
    assert len(_verl_micro_batches(batch, 2 * (1024 + 8192))) == 16  # the old budget
    # Our loss on two of the micro-batches (the rest are alike; all of them take ~10 s): each gives
    # its tokens the release's weight -0.001 / (8 x its response tokens), summing to -0.001 / 8.
    checked = ours_split[:2]
    ours = _entropy_gradient(batch, checked, worker_loss_fn(actor, settings, replay_started=False))
    torch.testing.assert_close(ours, _release_entropy_gradient(batch, checked), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(ours.sum(), torch.tensor(-ENTROPY_COEFF * len(checked) / RELEASE_RANKS, dtype=torch.float64))
    release = _release_entropy_gradient(batch, release_split)
    torch.testing.assert_close(release.sum(), torch.tensor(-ENTROPY_COEFF * len(ours_split) / RELEASE_RANKS, dtype=torch.float64))
