"""The adapter's row conversions and ExGRPO's checkpoint state, on real verl row layouts."""

import json

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from exgrpo_verl.experience import CheckpointError, ExperienceBuffer, ExperienceConfig, GroupResult
from exgrpo_verl.verl_adapters import checkpoint
from exgrpo_verl.verl_adapters.rows import build_replayed_row, group_results_from_step, replayed_row_tag
from exgrpo_verl.verl_adapters.trainer import question_positions

EOS = 2


def _sibling(prompt_len=5, response_len=4):
    prompt = torch.arange(10, 10 + prompt_len)
    response = torch.tensor([30, 31, 32, EOS][:response_len])
    return {
        "uid": "u1", "index": 7, "session_id": 0, "data_source": "char_hunt", "num_turns": 2,
        "prompts": prompt, "responses": response, "input_ids": torch.cat([prompt, response]),
        "position_ids": torch.arange(prompt_len + response_len), "response_mask": torch.ones(response_len, dtype=torch.int64),
        "loss_mask": torch.ones(response_len, dtype=torch.int64), "rm_scores": torch.zeros(response_len),
        "rollout_log_probs": torch.full((response_len,), -1.0), "is_replay": torch.tensor(0),
    }


def test_replayed_row_keeps_the_prompt_and_carries_the_stored_response():
    sibling = _sibling()
    response = torch.tensor([40, 41, 42, 43, 44, 45, EOS])
    stored = torch.linspace(-3, -0.5, 7)
    row = build_replayed_row(sibling, response, stored, reward=1.0, session_id=3)
    assert torch.equal(row["prompts"], sibling["prompts"])
    assert torch.equal(row["input_ids"], torch.cat([sibling["prompts"], response]))
    assert torch.equal(row["position_ids"], torch.arange(12))
    assert torch.equal(row["rollout_log_probs"], stored)
    assert row["rm_scores"].tolist() == [0, 0, 0, 0, 0, 0, 1.0]
    assert row["response_mask"].sum() == 7 and row["loss_mask"].sum() == 7
    assert (row["session_id"], int(row["is_replay"]), row["uid"], row["index"]) == (3, 1, "u1", 7)
    assert int(sibling["is_replay"]) == 0 and sibling["responses"].shape == (4,), "the sibling is not modified"
    tag = replayed_row_tag({"status": "success", "prompt_len": 5, "response_len": 4, "seq_len": 9, "global_steps": 2}, 5, 7)
    assert tag == {"status": "success", "prompt_len": 5, "response_len": 7, "seq_len": 12, "global_steps": 2, "is_replay": True}


def test_rows_with_generation_only_data_cannot_be_replayed():
    sibling = {**_sibling(), "routed_experts": torch.zeros(9, 2)}
    with pytest.raises(ValueError, match="routed_experts"):
        build_replayed_row(sibling, torch.tensor([1, EOS]), torch.zeros(2), 1.0, 1)
    with pytest.raises(ValueError, match="one length"):
        build_replayed_row(_sibling(), torch.tensor([1, EOS]), torch.zeros(3), 1.0, 1)


def _step_rows(responses, rewards, uids, indices, replay):
    nested = lambda rows, dtype: torch.nested.nested_tensor([torch.tensor(r, dtype=dtype) for r in rows], layout=torch.jagged)  # noqa: E731
    scores = [[0.0] * (len(r) - 1) + [s] for r, s in zip(responses, rewards)]
    return TensorDict(
        {
            "uid": uids, "index": indices, "is_replay": torch.tensor(replay),
            "prompts": nested([[5, 6]] * len(responses), torch.int64), "responses": nested(responses, torch.int64),
            "response_mask": nested([[1] * len(r) for r in responses], torch.int64), "rm_scores": nested(scores, torch.float32),
            "old_log_probs": nested([[-0.5] * len(r) for r in responses], torch.float32),
            "entropy": nested([[2.0] * len(r) for r in responses], torch.float32),
        },
        batch_size=len(responses),
    )


def test_step_rows_become_one_group_per_question_without_replayed_or_padding_rows():
    responses = [[1, EOS], [3, 4, 5], [6, EOS], [7, EOS], [8, 9, EOS], [1, 1]]
    rows = _step_rows(responses, [1, 0, 1, 1, 0, 0], ["a", "a", "a", "b", "b", "pad"], [11, 11, 11, 12, 12, 0], [0, 0, 1, 0, 0, 0])
    groups, fresh_rewards = group_results_from_step(rows, is_padding=[False] * 5 + [True], eos_token_ids={EOS})
    by_question = {g.question_id: g for g in groups}
    assert sorted(by_question) == [11, 12]
    a = by_question[11]  # the replayed row (third) is not part of its accuracy
    assert a.rewards.tolist() == [1, 0] and a.ended_with_eos.tolist() == [True, False]
    assert [r.tolist() for r in a.response_ids] == [[1, EOS], [3, 4, 5]]
    assert a.prompt_ids.tolist() == [5, 6] and a.log_probs[0].tolist() == [-0.5, -0.5]
    assert fresh_rewards.tolist() == [1, 0, 1, 0]


def test_question_ids_must_be_unique_integers():
    assert question_positions([{"index": 5}, {"index": 9}]) == {5: 0, 9: 1}
    with pytest.raises(ValueError, match=r"training row 1: extra_info.index=None"):
        question_positions([{"index": 5}, {"split": "train"}])
    with pytest.raises(ValueError, match=r"training rows 0 and 2 share extra_info.index=5"):
        question_positions([{"index": 5}, {"index": 6}, {"index": 5}])


def _buffer_with_data(group_size=4):
    buffer = ExperienceBuffer(ExperienceConfig(group_size=group_size))
    rng = np.random.default_rng(0)
    groups = [
        GroupResult(question_id=q, response_ids=[rng.integers(3, 50, 6) for _ in range(group_size)],
                    log_probs=[-rng.random(6) for _ in range(group_size)], rewards=np.array([1, 0, 1, 0][:group_size], dtype=float),
                    ended_with_eos=np.ones(group_size, dtype=bool))
        for q in range(5)
    ]
    buffer.update(1, groups, store=True)
    return buffer


def test_state_round_trips_and_bad_checkpoints_are_refused(tmp_path):
    buffer = _buffer_with_data()
    checkpoint.save_state(tmp_path, buffer, checkpoint.TrainerState(True, [4, 9], 4))
    restored, state = checkpoint.load_state(tmp_path, buffer.config)
    assert state == checkpoint.TrainerState(True, [4, 9], 4)
    assert restored.metrics() == buffer.metrics()

    with pytest.raises(CheckpointError, match=r"resume with the same n"):
        checkpoint.load_state(tmp_path, ExperienceConfig(group_size=8))
    state_file = tmp_path / "exgrpo" / "trainer_state.json"
    state_file.write_text(json.dumps({"version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        checkpoint.load_state(tmp_path, buffer.config)
    state_file.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load_state(tmp_path, buffer.config)
    with pytest.raises(CheckpointError, match="not written by an ExGRPO run"):
        checkpoint.load_state(tmp_path / "elsewhere", buffer.config)


def test_state_of_checkpoints_verl_pruned_is_removed_too(tmp_path):
    buffer = _buffer_with_data()
    for step in (2, 4, 6):
        checkpoint.save_state(tmp_path / f"global_step_{step}", buffer, checkpoint.TrainerState(False, [], 4))
        (tmp_path / f"global_step_{step}" / "actor").mkdir()
    (tmp_path / "global_step_2" / "actor").rmdir()  # as max_actor_ckpt_to_keep does
    removed = checkpoint.remove_orphaned_states(tmp_path)
    assert removed == [tmp_path / "global_step_2" / "exgrpo"]
    assert not removed[0].exists()
    assert (tmp_path / "global_step_4" / "exgrpo" / "trainer_state.json").exists()
