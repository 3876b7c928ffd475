"""Collection: what is stored, accuracy and buckets, retirement, the zero case, caps, bad input."""

import numpy as np
import pytest
from experience_testkit import assert_same_state, group, partial_group

from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig, GroupResult
from exgrpo_verl.experience.buffer import visit_histogram
from exgrpo_verl.experience.sampling import bucket_of


def stored_tokens(buf, qid):
    return [c.response_ids.tolist() for c in buf.candidates(qid)]


def test_stores_only_correct_complete_finite_rollouts_of_partial_groups():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4, seed=0))
    bad_logp = [None, [-0.1, np.nan, -0.2], None, None]
    buf.update(3, [
        group(1, [1, 1, 0, 1], eos=[True, True, True, False], logps=bad_logp),  # 0 ok, 1 non-finite, 3 truncated
        group(2, [0, 0, 0, 0]),
        group(3, [1, 1, 1, 1]),
    ])
    assert stored_tokens(buf, 1) == [[1, 0, 0]]
    assert stored_tokens(buf, 2) == [] and stored_tokens(buf, 3) == []
    [traj] = buf.candidates(1)
    assert traj.step == 3 and traj.reward == 1.0 and traj.question_id == 1
    assert traj.response_ids.dtype == np.int32 and traj.log_probs.dtype == np.float32
    np.testing.assert_array_equal(traj.log_probs, np.float32([-0.1, -0.2, -0.3]))


def test_int64_and_float64_inputs_are_stored_as_int32_and_float32():
    buf = ExperienceBuffer(ExperienceConfig(group_size=2))
    ids = np.array([5, 6, 70000], dtype=np.int64)
    buf.update(0, [GroupResult(9, [ids, ids[:1]], [np.array([-1.0, -2.0, -3.0]), np.array([-1.0])],
                               np.array([1, 0]), np.array([True, True]))])
    [traj] = buf.candidates(9)
    assert traj.response_ids.dtype == np.int32 and traj.response_ids.tolist() == [5, 6, 70000]
    assert traj.log_probs.dtype == np.float32 and traj.log_probs.tolist() == [-1.0, -2.0, -3.0]


def test_duplicates_are_skipped_within_a_step_and_across_steps():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4))
    buf.update(1, [group(1, [1, 1, 0, 0], tokens=[[4, 4], [4, 4], [5], [6]])])
    buf.update(2, [group(1, [1, 1, 0, 0], tokens=[[4, 4], [8], [5], [6]])])
    buf.update(2, [group(2, [1, 1, 0, 0], tokens=[[4, 4], [8], [5], [6]])])  # same tokens, other question
    assert stored_tokens(buf, 1) == [[4, 4], [8]]
    assert [c.step for c in buf.candidates(1)] == [1, 2]
    assert stored_tokens(buf, 2) == [[4, 4], [8]]
    assert buf.metrics()["duplicates_skipped"] == 2


@pytest.mark.parametrize("k, n, expected", [(1, 8, 1), (4, 8, 4), (7, 8, 7)])  # fresh question: k out of K
def test_bucket_is_nearest_count_out_of_k(k, n, expected):
    assert bucket_of(k, n, 8) == expected
    buf = ExperienceBuffer(ExperienceConfig(group_size=8))
    buf.update(0, [group(5, [1.0] * k + [0.0] * (n - k))])
    view = buf.question(5)
    assert view.accuracy == k / n and view.bucket == expected


def test_a_replayed_question_reaches_every_bucket():
    """K = 8: k of the K-1 fresh rollouts correct plus the replayed member is k+1 of K, so k = 0..6
    give buckets 1..7 and k = 7 retires (the old rule, k/(K-1) rounded onto K, gave {1,2,3,5,6,7}
    for k = 1..6 and left bucket 4, the Gaussian's peak, unreachable)."""
    K = 8
    reached = {}
    for k in range(K):
        buf = ExperienceBuffer(ExperienceConfig(group_size=K))
        buf.update(0, [partial_group(5, K, 3)])  # in the pool, bucket 3, before its replay
        buf.update(1, [group(5, [1.0] * k + [0.0] * (K - 1 - k), replayed_correct=1)])
        view = buf.question(5)
        assert view.accuracy == (k + 1) / K
        reached[k] = "retired" if buf.is_retired(5) else view.bucket
    assert reached == {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: "retired"}


@pytest.mark.parametrize("replayed, rewards, message", [
    (-1, [1, 0], "replayed_correct: must be an int >= 0"),
    (True, [1, 0], "replayed_correct: must be an int >= 0"),
    (1, [1, 0, 0, 0], "has 4 rollouts besides 1 replayed, expected 1..group_size - replayed = 3"),
])
def test_a_bad_replayed_count_names_the_field(replayed, rewards, message):
    buf = ExperienceBuffer(ExperienceConfig(group_size=4))
    with pytest.raises(ValueError, match=message):
        buf.update(0, [group(5, rewards, replayed_correct=replayed)])
    assert buf.question(5) is None  # nothing applied


def test_bucket_of_rounds_halves_up_and_clips_into_one_to_k_minus_one():
    assert bucket_of(1, 2, 3) == 2  # 1.5 -> 2
    assert bucket_of(1, 7, 3) == 1 and bucket_of(6, 7, 3) == 2  # 0.43 -> 0 -> 1, 2.57 -> 3 -> 2


def test_all_correct_retires_forever_and_frees_the_trajectories():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4))
    buf.update(1, [partial_group(1, 4, 2, payload={"row": 1}), partial_group(2, 4, 1)])
    buf.update(2, [group(1, [1, 1, 1], replayed_correct=1)])  # K-1 fresh rollouts of a replayed question, all correct
    assert buf.is_retired(1) and not buf.is_retired(2) and buf.retired_ids == frozenset({1})
    assert buf.candidates(1) == [] and buf.question(1).bucket is None and buf.question(1).payload is None
    assert buf.metrics()["evicted/retired"] == 2
    buf.update(3, [partial_group(1, 4, 2, tag=9)])  # late results of a retired question are ignored
    assert buf.candidates(1) == [] and buf.question(1).accuracy == 1.0
    assert all(1 not in buf.sample_questions(2) for _ in range(20))


def test_zero_accuracy_drops_from_pool_but_keeps_trajectories_by_default():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4))
    buf.update(1, [partial_group(1, 4, 3)])
    buf.update(2, [group(1, [0, 0, 0, 0])])
    view = buf.question(1)
    assert view.accuracy == 0.0 and view.bucket is None and view.num_trajectories == 3
    assert buf.sample_questions(5) == [] and not buf.is_retired(1)
    buf.update(3, [group(1, [1, 0, 0, 0], tokens=[[9], [8], [7], [6]])])
    assert buf.question(1).bucket == 1 and buf.question(1).num_trajectories == 4


def test_keep_stale_leaves_the_old_bucket():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4, zero_accuracy_policy="keep_stale"))
    buf.update(1, [partial_group(1, 4, 3)])
    buf.update(2, [group(1, [0, 0, 0, 0])])
    assert buf.question(1).accuracy == 0.0 and buf.question(1).bucket == 3
    assert buf.sample_questions(5) == [1]


def test_warm_up_updates_accuracy_and_retirement_without_storing():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4))
    buf.update(1, [partial_group(1, 4, 2), group(2, [1, 1, 1, 1])], store=False)
    assert buf.question(1).accuracy == 0.5 and buf.question(1).num_trajectories == 0
    assert buf.question(1).bucket is None and buf.is_retired(2)
    assert buf.metrics()["trajectories"] == 0 and buf.sample_questions(4) == []


def test_prompt_and_payload_are_kept_while_the_question_holds_trajectories():
    buf = ExperienceBuffer(ExperienceConfig(group_size=2, max_age_steps=1))
    prompt = np.array([3, 1, 4], dtype=np.int64)
    buf.update(1, [partial_group(1, 2, 1, prompt_ids=prompt, payload={"row": [1, "a"]})])
    prompt[0] = 99  # the buffer holds its own copy
    view = buf.question(1)
    assert view.prompt_ids.tolist() == [3, 1, 4] and view.prompt_ids.dtype == np.int32
    assert view.payload == {"row": [1, "a"]}
    buf.update(3, [])  # the trajectory ages out: nothing left to replay, so the prompt goes too
    assert buf.question(1).num_trajectories == 0 and buf.question(1).payload is None
    assert buf.question(1).prompt_ids is None


def test_per_question_cap_evicts_that_questions_oldest():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4, max_trajectories_per_question=3))
    buf.update(1, [partial_group(1, 4, 2, tag=1), partial_group(2, 4, 1, tag=1)])
    buf.update(2, [partial_group(1, 4, 2, tag=2)])
    assert stored_tokens(buf, 1) == [[1, 1, 1, 7], [1, 2, 0, 7], [1, 2, 1, 7]]
    assert buf.question(2).num_trajectories == 1
    assert buf.metrics()["evicted/question_cap"] == 1


def test_without_per_question_caps_every_success_is_kept_and_scored():
    """The release preset (both caps None): a question keeps every stored success, all candidates."""
    buf = ExperienceBuffer(ExperienceConfig(group_size=4, max_trajectories_per_question=None,
                                            max_candidates_per_question=None))
    for step in range(1, 8):
        buf.update(step, [partial_group(1, 4, 3, tag=step)])
    assert buf.question(1).num_trajectories == 21 and len(buf.candidates(1)) == 21
    assert buf.metrics()["evicted/question_cap"] == 0


def test_token_cap_evicts_globally_oldest_first():
    # Each trajectory is 4 tokens; the cap holds 3 of them.
    buf = ExperienceBuffer(ExperienceConfig(group_size=4, max_total_tokens=12))
    buf.update(1, [partial_group(1, 4, 2, tag=1)])
    buf.update(2, [partial_group(2, 4, 1, tag=2)])
    buf.update(3, [partial_group(3, 4, 1, tag=3)])
    assert buf.metrics()["tokens"] == 12 and buf.metrics()["evicted/token_cap"] == 1
    assert stored_tokens(buf, 1) == [[1, 1, 1, 7]]
    assert buf.question(2).num_trajectories == 1 and buf.question(3).num_trajectories == 1
    buf.update(4, [partial_group(4, 4, 2, tag=4)])  # question 1 loses its last one and leaves the pool
    assert buf.question(1).num_trajectories == 0 and buf.question(1).bucket is None
    assert buf.question(1).accuracy == 0.5


def test_max_age_evicts_trajectories_older_than_the_limit():
    buf = ExperienceBuffer(ExperienceConfig(group_size=2, max_age_steps=2))
    buf.update(1, [partial_group(1, 2, 1)])
    buf.update(3, [partial_group(2, 2, 1)])
    assert buf.metrics()["trajectories"] == 2 and buf.metrics()["max_age"] == 2
    buf.update(4, [])
    assert buf.metrics()["trajectories"] == 1 and buf.metrics()["evicted/max_age"] == 1
    assert buf.candidates(2)[0].step == 3


def test_mark_replayed_counts_replays_and_metrics_report_ages():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4, selection_metric="recent"))
    buf.update(1, [partial_group(1, 4, 2)])
    buf.update(4, [partial_group(2, 4, 1)])
    traj = buf.select(1)
    buf.mark_replayed([traj.id], 5)
    buf.mark_replayed([traj.id], 6)
    [again] = [c for c in buf.candidates(1) if c.id == traj.id]
    assert again.replay_count == 2 and again.last_replayed_step == 6
    metrics = buf.metrics()
    assert metrics["replays_total"] == 2 and metrics["replayed_trajectories"] == 1
    assert metrics["mean_age"] == pytest.approx((3 + 3 + 0) / 3) and metrics["max_age"] == 3
    with pytest.raises(ValueError, match="trajectory 999 is not stored"):
        buf.mark_replayed([traj.id, 999], 7)
    assert [c for c in buf.candidates(1) if c.id == traj.id][0].replay_count == 2  # nothing half-applied


def test_per_question_visits_are_counted_and_outlive_the_trajectories():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4, selection_metric="recent"))
    buf.update(1, [partial_group(1, 4, 2), partial_group(2, 4, 1), group(3, [0, 0, 0, 0])], store=False)  # warm-up
    buf.update(2, [partial_group(1, 4, 2, tag=2), partial_group(2, 4, 1, tag=2)])
    for step in (3, 4, 5):
        buf.mark_replayed([buf.select(1).id], step)
    buf.mark_replayed([buf.select(2).id], 5)
    metrics = buf.metrics()
    assert (metrics["question_fresh_visits/1"], metrics["question_fresh_visits/2"]) == (1, 2)  # 3 once; 1, 2 twice
    assert (metrics["question_replays/1"], metrics["question_replays/3-4"]) == (1, 1)
    assert metrics["question_replays/2"] == metrics["question_replays/5-8"] == metrics["question_replays/9+"] == 0
    buf.update(6, [group(1, [1, 1, 1, 1])])  # solved: retired, its trajectories freed, its counts kept
    metrics = buf.metrics()
    assert buf.candidates(1) == [] and metrics["question_replays/3-4"] == 1 and metrics["question_fresh_visits/3-4"] == 1


@pytest.mark.parametrize("counts, expected", [
    ([], {"n/1": 0, "n/2": 0, "n/3-4": 0, "n/5+": 0}),
    ([0, 0, 1, 2, 2, 3, 4, 5, 40], {"n/1": 1, "n/2": 2, "n/3-4": 2, "n/5+": 2}),
])
def test_visit_histogram_bins_by_lower_bounds_and_leaves_out_zero(counts, expected):
    assert visit_histogram("n", counts, (1, 2, 3, 5)) == expected


def test_metrics_report_pool_buckets_and_storage():
    buf = ExperienceBuffer(ExperienceConfig(group_size=4))
    buf.update(1, [partial_group(1, 4, 1), partial_group(2, 4, 2), partial_group(3, 4, 2),
                   group(4, [1, 1, 1, 1]), group(5, [0, 0, 0, 0])])
    metrics = buf.metrics()
    assert all(isinstance(value, float) for value in metrics.values())
    assert (metrics["bucket/1"], metrics["bucket/2"], metrics["bucket/3"]) == (1, 2, 0)
    assert metrics["pool_size"] == 3 and metrics["questions_known"] == 5 and metrics["retired"] == 1
    assert metrics["trajectories"] == 5 and metrics["tokens"] == 20 and metrics["bytes"] == 160


def test_steps_must_not_go_backwards():
    buf = ExperienceBuffer()
    buf.update(5, [])
    with pytest.raises(ValueError, match="step=4"):
        buf.update(4, [])


def _bad(field, value, base=None):
    base = base or partial_group(2, 4, 2)
    setattr(base, field, value)
    return base


@pytest.mark.parametrize("bad_group, field", [
    (_bad("question_id", "7"), "question_id"),
    (_bad("rewards", np.array([1.0, np.inf, 0.0, 0.0])), "rewards"),
    (_bad("response_ids", [np.array([2, 0, 0, 7])] * 3), "response_ids"),
    (_bad("rewards", np.ones((2, 2))), "rewards"),
    (_bad("rewards", np.ones(9)), "rewards"),
    (_bad("ended_with_eos", np.array([1, 1, 1, 1])), "ended_with_eos"),
    (_bad("ended_with_eos", np.array([True])), "ended_with_eos"),
    (_bad("response_ids", [np.array([1.0])] * 4), "response_ids[0]"),
    (_bad("response_ids", [[1, 2]] * 4), "response_ids[0]"),
    (_bad("log_probs", [np.zeros(4, np.float32)] * 3 + [np.zeros(3, np.float32)]), "log_probs[3]"),
    (_bad("log_probs", [np.zeros(4, np.int32)] * 4), "log_probs[0]"),
    (_bad("entropies", [np.zeros(4, np.float32)] * 2), "entropies"),
    (_bad("prompt_ids", np.zeros((1, 3), np.int32)), "prompt_ids"),
    (_bad("payload", {"row": (1, 2)}), "payload"),
    (_bad("payload", {"row": object()}), "payload"),
    (_bad("response_ids", [np.array([2**40, 1, 1, 7])] * 4), "response_ids[0]"),
])
def test_bad_input_raises_naming_the_field_and_changes_nothing(bad_group, field):
    buf = ExperienceBuffer(ExperienceConfig(group_size=4))
    buf.update(1, [partial_group(1, 4, 2)])
    before = buf.metrics()
    with pytest.raises(ValueError) as error:
        buf.update(2, [partial_group(3, 4, 2), bad_group])  # the good group first
    assert field in str(error.value)
    assert buf.metrics() == before and buf.question(3) is None and buf.step == 1


def test_a_rejected_step_leaves_the_whole_state_identical():
    buf, twin = ExperienceBuffer(ExperienceConfig(group_size=4)), ExperienceBuffer(ExperienceConfig(group_size=4))
    for b in (buf, twin):
        b.update(1, [partial_group(1, 4, 2)])
    with pytest.raises(ValueError):
        buf.update(2, [group(1, [1, 1, 1, 1]), partial_group(2, 4, 1), _bad("rewards", np.array([np.nan] * 4))])
    assert_same_state(buf, twin)


def test_stored_entropy_metric_requires_entropies_at_collection():
    buf = ExperienceBuffer(ExperienceConfig(group_size=2, selection_metric="stored_entropy"))
    with pytest.raises(ValueError, match="entropies: required"):
        buf.update(1, [partial_group(1, 2, 1)])
    buf.update(1, [partial_group(1, 2, 1)], store=False)  # warm-up stores nothing, so needs none
    assert buf.question(1).accuracy == 0.5
