"""Replay strategies without Ray: each strategy's batch construction on hand-built groups (which
rows join, which leave, which sessions, which advantages), the registries of strategies and
selection metrics, failures stored with their rewards, and the refusal of verl's own trainer modes.

The buffer is the real ExperienceBuffer, the advantages verl's registered "exgrpo" estimator."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from exgrpo_verl.config import ExGRPOConfig, incompatible_verl_settings
from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig, GroupResult
from exgrpo_verl.experience.config import FORWARD_PASS_METRICS, SELECTION_METRICS
from exgrpo_verl.miniature import generated_rollouts_per_step
from exgrpo_verl.strategies import STRATEGIES, GroupOutcome, build_strategy, register_strategy
from exgrpo_verl.verl_adapters.advantage import compute_exgrpo_outcome_advantage
from exgrpo_verl.verl_adapters.joins import build_joins, separate_advantage_uid

K = 4
EOS = 2
REPO = Path(__file__).resolve().parents[1]


def _buffer(store_failures=False, metric="recent") -> ExperienceBuffer:
    """Question 7 stored from a mixed step 1: successes [3, EOS] and [4, 4, EOS], failure [9, EOS]."""
    buffer = ExperienceBuffer(ExperienceConfig(group_size=K, selection_metric=metric, store_failures=store_failures))
    responses = [np.array([3, EOS]), np.array([9, EOS]), np.array([4, 4, EOS]), np.array([9, EOS])]
    buffer.update(1, [GroupResult(question_id=7, response_ids=responses, log_probs=[np.full(len(r), -0.5) for r in responses],
                                  rewards=np.array([1.0, 0.0, 1.0, 0.0]), ended_with_eos=np.ones(4, dtype=bool))])
    return buffer


def _group(uid, rewards, from_buffer=False, qid=7) -> GroupOutcome:
    return GroupOutcome(uid, qid, tuple(range(len(rewards))), np.asarray(rewards, dtype=np.float64), from_buffer)


def _join(strategy, groups, buffer, step=2):
    """The trainer's join without TransferQueue: requests, the last `count` (or the buffer's pick), placement."""
    requests = strategy.requests(groups, buffer.candidates, step)
    chosen = {r.uid: (r.candidates[-r.count:] if r.count else [buffer.select(r.question_id, among=[c.id for c in r.candidates])])
              if r.candidates else [] for r in requests}
    return build_joins(requests, chosen, {g.uid: g for g in groups})


def _advantages(rows):
    """verl's registered estimator on (advantage uid, reward) rows, one token each."""
    uids = np.array([uid for uid, _ in rows], dtype=object)
    rewards = torch.tensor([[float(reward)] for _, reward in rows])
    advantages, _ = compute_exgrpo_outcome_advantage(rewards, torch.ones_like(rewards), uids)
    return advantages[:, 0].tolist()


# ---- registries ------------------------------------------------------------------------------
def test_unknown_strategy_metric_and_settings_are_errors_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"exgrpo.strategy='fill': unknown replay strategy; known: exgrpo, "
                                         r"zero_variance_fill, repo, rlep"):
        ExGRPOConfig.from_dict({"strategy": "fill"})
    with pytest.raises(ValueError, match=r"exgrpo.experience.selection_metric='entropy_mean'.*entropy_sum"):
        ExGRPOConfig.from_dict({"experience": {"selection_metric": "entropy_mean"}})
    with pytest.raises(ValueError, match=r"unknown keys \['m'\] for strategy repo; allowed: \['replayed_per_question'\]"):
        ExGRPOConfig.from_dict({"strategy": "repo", "strategy_settings": {"m": 2}})
    with pytest.raises(ValueError, match="strategy_settings.source: the rlep strategy needs"):
        ExGRPOConfig.from_dict({"strategy": "rlep"})
    with pytest.raises(ValueError, match="replayed_per_question=1"):
        ExGRPOConfig.from_dict({"strategy": "repo", "strategy_settings": {"replayed_per_question": 1}})
    with pytest.raises(ValueError, match="store_failures: the replay strategy"):
        ExGRPOConfig.from_dict({"experience": {"store_failures": True}})


def test_an_unknown_metric_reaching_selection_is_an_error_not_random():
    from exgrpo_verl.experience.selection import select_index

    with pytest.raises(ValueError, match="unknown selection_metric 'newest'; known: entropy, entropy_sum"):
        select_index("newest", [None, None], None, np.random.default_rng(0))


def test_a_second_strategy_under_one_name_is_refused():
    class Another(STRATEGIES["repo"]):
        pass

    with pytest.raises(ValueError, match="'repo' is already registered as RePOStrategy"):
        register_strategy(Another)


def test_every_metric_and_strategy_is_documented_where_users_choose_them():
    from exgrpo_verl.algorithm import _SELECTION_SCORES

    assert set(_SELECTION_SCORES) == set(FORWARD_PASS_METRICS)  # one scorer per forward-pass metric
    readme, experience = (REPO / "README.md").read_text(), (REPO / "docs" / "experience.md").read_text()
    yaml, strategies = (REPO / "trainer_configs" / "exgrpo.yaml").read_text(), (REPO / "docs" / "strategies.md").read_text()
    for name in SELECTION_METRICS:
        assert f"`{name}`" in readme and f"`{name}`" in experience and re.search(rf"\b{name}\b", yaml), name
    for name in STRATEGIES:
        assert f"## `{name}`" in strategies and f"`{name}`" in readme and name in yaml, name


# ---- exgrpo ----------------------------------------------------------------------------------
def test_exgrpo_gives_each_experience_group_one_success_in_slot_k_minus_1_and_drops_the_empty():
    buffer = _buffer(store_failures=True)  # even with failures stored, ExGRPO replays successes only
    strategy = build_strategy("exgrpo", {}, K)
    groups = [_group("a", [0, 1, 0], from_buffer=True), _group("b", [1, 1, 0, 0]),
              _group("c", [0, 0, 0], from_buffer=True, qid=99)]
    joined = _join(strategy, groups, buffer)
    assert [(p.uid, p.session, p.trajectory.reward) for p in joined.placed] == [("a", K - 1, 1.0)]
    assert joined.dropped == {"c"} and not joined.replaced
    assert joined.leaving_keys(["c_0_0", "a_0_0", "b_3_0"]) == ["c_0_0"]
    assert strategy.fresh_rollouts(True) == K - 1 and strategy.generations_saved(groups) == 2
    assert strategy.experience_question_count(pool_size=10, batch_size=8, replay_ratio=0.5, started=False) == 0
    assert strategy.experience_question_count(pool_size=10, batch_size=8, replay_ratio=0.5, started=True) == 4
    metrics = joined.metrics({g.uid: g for g in groups}, rows_before=10, step=2, generations_saved=2)
    assert metrics["exgrpo/replay_fraction"] == 1 / (10 - 3 + 1) and metrics["exgrpo/generated_rollouts"] == 10
    # Group a: fresh rewards 0, 1, 0 and the joined success: mean 1/2, so its fresh rows carry 1/3 - 1/2 on average.
    assert metrics["exgrpo/experience_groups"] == 1
    assert metrics["exgrpo/experience_group_fresh_advantage"] == pytest.approx(1 / 3 - 1 / 2)


# ---- zero-variance fill ----------------------------------------------------------------------
def test_fill_replaces_one_failed_row_by_a_stored_success_and_the_group_gains_signal():
    buffer = _buffer()
    strategy = build_strategy("zero_variance_fill", {}, K)
    groups = [_group("fail", [0, 0, 0, 0]), _group("mixed", [1, 0, 0, 0]), _group("solved", [1, 1, 1, 1])]
    joined = _join(strategy, groups, buffer)
    (placement,) = joined.placed
    assert (placement.uid, placement.session, placement.trajectory.reward) == ("fail", K - 1, 1.0)
    assert joined.replaced == {("fail", K - 1)} and joined.groups_given_signal == 1
    # The replaced row leaves and the stored success takes its key: the trainer clears before it writes.
    assert joined.leaving_keys(["fail_0_0", f"fail_{K - 1}_0", "mixed_3_0"]) == [f"fail_{K - 1}_0"]
    # The trained group: rows 0..2 fresh (0), row 3 the stored success (1): A = r - mean = -1/4, 3/4.
    assert _advantages([("fail", 0)] * 3 + [("fail", 1)]) == [-0.25, -0.25, -0.25, 0.75]
    assert strategy.generations_saved(groups) == 0 and not strategy.stores_failures
    assert strategy.stores(False, False, False, False)  # from step 1, no delayed start


def test_fill_random_row_is_seeded_and_the_mirror_uses_a_stored_failure():
    groups = [_group("fail", [0, 0, 0, 0]), _group("solved", [1, 1, 1, 1])]
    picks = {build_strategy("zero_variance_fill", {"replaced_row": "random", "seed": seed}, K)
             .requests(groups[:1], _buffer().candidates, 5)[0].replaced_sessions for seed in range(8)}
    assert len(picks) > 1 and all(len(p) == 1 and 0 <= p[0] < K for p in picks)
    mirror = build_strategy("zero_variance_fill", {"mirror_all_correct": True}, K)
    assert mirror.stores_failures
    joined = _join(mirror, groups, _buffer(store_failures=True))
    assert sorted((p.uid, p.trajectory.reward) for p in joined.placed) == [("fail", 1.0), ("solved", 0.0)]
    assert joined.groups_given_signal == 2


# ---- RePO ------------------------------------------------------------------------------------
def test_repo_adds_the_m_most_recent_rollouts_with_their_own_advantage_baseline():
    buffer = _buffer(store_failures=True)
    strategy = build_strategy("repo", {"replayed_per_question": 2}, K)
    groups = [_group("g", [0, 0, 0, 0])]
    joined = _join(strategy, groups, buffer)
    assert [(p.session, p.trajectory.reward, p.separate_advantage) for p in joined.placed] == [(4, 0.0, True), (5, 1.0, True)]
    assert not joined.replaced and joined.groups_given_signal == 1
    replayed_uid = separate_advantage_uid("g")
    # The fresh group keeps A = 0; the replayed pair is normalised by itself: 0 - 1/2, 1 - 1/2.
    assert _advantages([("g", 0)] * 4 + [(replayed_uid, 0), (replayed_uid, 1)]) == [0, 0, 0, 0, -0.5, 0.5]
    assert strategy.stores_failures and strategy.fresh_rollouts(False) == K


# ---- RLEP ------------------------------------------------------------------------------------
def test_rlep_source_is_read_whole_or_refused_naming_the_key(tmp_path):
    from exgrpo_verl.strategies import frozen_replay_set

    _buffer().save(tmp_path / "global_step_3" / "exgrpo" / "experience")
    assert frozen_replay_set(str(tmp_path / "global_step_3")).metrics() == _buffer().metrics()
    with pytest.raises(ValueError, match=r"^exgrpo.strategy_settings.source='/nowhere/global_step_3': no experience "
                                         r"checkpoint there .*give an earlier run's checkpoint folder"):
        frozen_replay_set("/nowhere/global_step_3")


def test_rlep_adds_m_frozen_successes_sharing_the_group_baseline():
    frozen = _buffer(store_failures=True)
    strategy = build_strategy("rlep", {"source": "/earlier/run/global_step_9", "replayed_per_question": 1}, K)
    groups = [_group("g", [0, 1, 0, 0]), _group("unknown", [0, 0, 0, 0], qid=99)]
    joined = _join(strategy, groups, frozen)
    (placement,) = joined.placed
    assert placement.trajectory.reward == 1.0 and placement.session == K and not placement.separate_advantage
    assert _advantages([("g", r) for r in (0, 1, 0, 0, 1)]) == pytest.approx([-0.4, 0.6, -0.4, -0.4, 0.6])
    assert not strategy.stores(True, True, True, True) and strategy.frozen_source
    draws = {strategy.requests(groups, frozen.candidates, step)[0].candidates[-1].id for step in range(12)}
    assert len(draws) == 2  # uniform over the question's two successes, seeded by step


# ---- storage, accounting, refusals -----------------------------------------------------------
def test_failures_are_stored_with_their_rewards_only_when_the_strategy_asks(tmp_path):
    assert [t.reward for t in _buffer().candidates(7)] == [1.0, 1.0]
    buffer = _buffer(store_failures=True)
    assert [t.reward for t in buffer.candidates(7)] == [1.0, 0.0, 1.0]  # the duplicate failure stored once
    buffer.save(tmp_path / "b")
    assert [t.reward for t in ExperienceBuffer.load(tmp_path / "b").candidates(7)] == [1.0, 0.0, 1.0]
    # The experience log carries them too: its records, replayed on a fresh buffer, store the same rewards.
    from exgrpo_verl.experience.journal import ExperienceLog

    logged = ExperienceBuffer(buffer.config)
    logged.record_operations()
    logged.update(1, [GroupResult(question_id=7, response_ids=[np.array([3, EOS]), np.array([9, EOS])],
                                  log_probs=[np.full(2, -0.5)] * 2, rewards=np.array([1.0, 0.25]),
                                  ended_with_eos=np.ones(2, dtype=bool))])
    log = ExperienceLog.start(tmp_path / "log", "base", "run")
    log.append(1, logged.take_operations())
    _, records, _ = ExperienceLog.resume(tmp_path / "log", "base", "run")
    copy = ExperienceBuffer(buffer.config)
    for record in records:
        copy.replay(record.operations)
    assert [t.reward for t in copy.candidates(7)] == [1.0, 0.25]


def test_generated_rollouts_come_from_the_step_metric_when_logged():
    rows = [{"exgrpo/replayed_questions": 3.0}, {"exgrpo/replayed_questions": 2.0, "exgrpo/generated_rollouts": 16.0}]
    assert generated_rollouts_per_step(rows, batch=4, rollouts=8).tolist() == [29.0, 16.0]


@pytest.mark.parametrize("mode", ["colocate_async", "separate_async", "sync"])
def test_verls_own_trainer_modes_are_refused(mode):
    (problem,) = incompatible_verl_settings({"trainer": {"v1": {"trainer_mode": mode}}})
    assert problem.startswith(f"trainer.v1.trainer_mode={mode}: verl's own trainer would run without ExGRPO's replay hooks")
    assert problem.endswith("set trainer.v1.trainer_mode=exgrpo")
    assert ("before the previous one trains" in problem) == (mode != "sync")
