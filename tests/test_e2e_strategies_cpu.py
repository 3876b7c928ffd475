"""The replay strategies other than ExGRPO through verl's real trainer on the CPU, one launch each,
chained so that each launch also tests a checkpoint:

    zero_variance_fill (mirror on)  8 steps from scratch (every question twice), checkpoints at 4, 8
    repo                            6 steps from scratch (questions come back from step 5), checkpoint
                                    at 4, resumed once for its last 2 steps (its buffer of successes and
                                    failures restored); a strategy cannot change on resume
                                    (checkpoint.RESUME_RULES), so it does not resume the fill run
    rlep                            a new run replaying the fill run's step-8 experience, frozen

Per step the observer (e2e_support/observed_trainer.py) records every group before the join (its
fresh rewards) and after (each trained row: replayed?, reward, shares the group's baseline?),
which the tests check against each strategy's rule. Tiny data (16 questions, B=4, K=4) so that
questions come back within the run."""

import shutil

import numpy as np
import pytest

from e2e_support.observed_run import train_observed
from exgrpo_verl.experience import ExperienceBuffer
from exgrpo_verl.tasks import char_hunt

pytestmark = pytest.mark.slow  # four trainer launches, one per strategy and a resume: `make test-slow`

B, K, FILL_STEPS, REPO_STEPS, RLEP_STEPS, M = 4, 4, 8, 6, 3, 2


@pytest.fixture(scope="module")
def small_char_hunt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("char_hunt_small")
    return (char_hunt.write_parquet(folder / "train.parquet", 16, seed=0),
            char_hunt.write_parquet(folder / "val.parquet", 4, seed=1, split="test", first_index=10_000))


def _train(model, data, out, steps, resume=False, extra=()):
    return train_observed(model, *data, out, steps, resume, batch=B, rollouts=K, extra=("trainer.save_freq=4", *extra))


@pytest.fixture(scope="module")
def fill_run(tiny_qwen2, small_char_hunt, tmp_path_factory):
    out = tmp_path_factory.mktemp("fill_run")
    steps, observations = _train(tiny_qwen2, small_char_hunt, out, FILL_STEPS, extra=(
        "exgrpo.strategy=zero_variance_fill", "+exgrpo.strategy_settings.mirror_all_correct=true"))
    # The RLEP run's source: the step-8 experience as saved (the resumed run may tidy checkpoints away).
    earlier = tmp_path_factory.mktemp("earlier_run") / f"global_step_{FILL_STEPS}"
    shutil.copytree(out / "checkpoints" / f"global_step_{FILL_STEPS}" / "exgrpo", earlier / "exgrpo")
    return out, steps, observations, earlier


def _compositions(observations):
    return [o for o in observations if o["kind"] == "composition"]


def _assert_one_optimizer_step_each(observations, steps) -> None:
    """The strategies that add rows update in the configured single mini-batch (B = ppo_mini_batch_size
    here) however many rows they added (was: verl's padding to a second mini-batch), padded with
    fewer no-op rows than one micro-batch (B x K rows in the CPU runtime)."""
    updates = {o["step"]: o for o in observations if o["kind"] == "update"}  # a resumed run's file has both launches
    for row in steps:
        update = updates[row["step"]]
        assert update["mini_batch_rows"] == update["rows"] == row["exgrpo/update_rows"]
        assert update["rows"] - update["padding_rows"] == B * K + row["exgrpo/replayed_rows"]
        assert update["padding_rows"] < B * K and update["ppo_mini_batch_size_after"] == B


def _replay_report(steps) -> dict:
    """The figures the study compares strategies by, per step (mean over the run's steps)."""
    return {key: float(np.mean([row[f"exgrpo/{key}"] for row in steps]))
            for key in ("replay_fraction", "groups_given_signal", "generated_rollouts", "replayed_rows")}


def test_fill_replaces_one_row_of_zero_variance_groups_only(fill_run):
    _, steps, observations, _ = fill_run
    print("zero_variance_fill per step:", _replay_report(steps))
    assert [row["step"] for row in steps] == list(range(1, FILL_STEPS + 1))
    filled = 0
    for record in _compositions(observations):
        for uid, rows in record["trained"].items():
            before = record["before"][uid]
            replayed = [reward for flag, reward, _ in rows if flag]
            assert len(rows) == len(before), "a fill replaces, it never adds"
            if replayed:
                filled += 1
                assert len(replayed) == 1 and len(set(before)) == 1, "only a zero-variance group is filled"
                # All failed -> a stored success; all correct -> a stored failure (the mirror).
                assert (replayed[0] == 1) != (before[0] == 1)
                assert len({reward for _, reward, _ in rows}) == 2  # it now carries signal
    for row in steps:
        assert row["exgrpo/generated_rollouts"] == B * K and row["exgrpo/generations_saved"] == 0
        assert row["exgrpo/groups_given_signal"] == row["exgrpo/replayed_questions"]
        assert row["exgrpo/replaced_rows"] == row["exgrpo/replayed_rows"]
    assert filled == sum(row["exgrpo/replayed_rows"] for row in steps)
    assert filled > 0, "no zero-variance group was filled: replay never became active"
    assert steps[0]["exgrpo/buffer/collected_total"] > 0, "fill stores from step 1"


def test_repo_adds_m_rows_with_their_own_baseline_and_resumes_its_buffer(tiny_qwen2, small_char_hunt, tmp_path):
    repo = ("exgrpo.strategy=repo", f"+exgrpo.strategy_settings.replayed_per_question={M}")
    first, _ = _train(tiny_qwen2, small_char_hunt, tmp_path, REPO_STEPS - 2, extra=repo)
    saved = ExperienceBuffer.load(tmp_path / "checkpoints" / f"global_step_{REPO_STEPS - 2}" / "exgrpo" / "experience")
    more, observations = _train(tiny_qwen2, small_char_hunt, tmp_path, REPO_STEPS, resume=True, extra=repo)
    print("repo per step:", _replay_report(first + more))
    (restored,) = [o for o in observations if o["kind"] == "restored"]
    assert restored["step"] == REPO_STEPS - 2 and restored["buffer_metrics"] == saved.metrics()
    assert [row["step"] for row in more] == [REPO_STEPS - 1, REPO_STEPS]
    added = 0
    for record in _compositions(observations):
        for uid, rows in record["trained"].items():
            fresh = [row for row in rows if not row[0]]
            replayed = [row for row in rows if row[0]]
            assert len(fresh) == len(record["before"][uid]) == K, "RePO keeps all K fresh rollouts"
            assert len(replayed) <= M
            assert all(shares for _, _, shares in fresh) and not any(shares for _, _, shares in replayed)
            added += len(replayed)
    assert added == sum(row["exgrpo/replayed_rows"] for row in more) > 0
    _assert_one_optimizer_step_each(observations, more)
    for row in first + more:
        assert row["exgrpo/generated_rollouts"] == B * K


def test_rlep_replays_a_frozen_earlier_run_with_one_baseline(fill_run, tiny_qwen2, small_char_hunt, tmp_path):
    *_, source = fill_run
    frozen = ExperienceBuffer.load(source / "exgrpo" / "experience")
    steps, observations = _train(tiny_qwen2, small_char_hunt, tmp_path, RLEP_STEPS, extra=(
        "exgrpo.strategy=rlep", f"+exgrpo.strategy_settings.source={source}",
        f"+exgrpo.strategy_settings.replayed_per_question={M}"))
    print("rlep per step:", _replay_report(steps))
    replayed_total = 0
    for record in _compositions(observations):
        assert record["replayed_rows_carry_stored_trajectories"]
        for uid, rows in record["trained"].items():
            replayed = [reward for flag, reward, _ in rows if flag]
            assert len(rows) == len(record["before"][uid]) + len(replayed) and len(replayed) <= M
            assert all(reward == 1 for reward in replayed) and all(shares for _, _, shares in rows)
            replayed_total += len(replayed)
    assert replayed_total == sum(row["exgrpo/replayed_rows"] for row in steps) > 0
    _assert_one_optimizer_step_each(observations, steps)
    # Frozen: the source is unchanged, and this run stores nothing of its own.
    assert ExperienceBuffer.load(source / "exgrpo" / "experience").metrics() == frozen.metrics()
    assert all(row["exgrpo/buffer/collected_total"] == 0 for row in steps)
