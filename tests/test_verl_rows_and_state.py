"""The adapter's row conversions and ExGRPO's checkpoint state, on real verl row layouts."""

import json
import os

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


DATA_IDS = [0, 1, 2, 3, 4, 9]


def _fingerprint(truths: dict[int, str] | None = None) -> checkpoint.DataFingerprint:
    truths = {qid: f"answer {qid}" for qid in DATA_IDS} | (truths or {})
    prompts = [[{"role": "user", "content": f"question {qid}"}] for qid in truths]
    return checkpoint.data_fingerprint(list(truths), prompts, list(truths.values()))


def _save(folder, buffer=None, state=None):
    buffer = buffer or _buffer_with_data()
    checkpoint.save_state(folder, buffer, state or checkpoint.TrainerState(True, [4, 9], 4), _fingerprint())
    return buffer


def test_state_round_trips_and_bad_checkpoints_are_refused(tmp_path):
    buffer = _save(tmp_path)
    restored, state = checkpoint.load_state(tmp_path, buffer.config, _fingerprint())
    assert state == checkpoint.TrainerState(True, [4, 9], 4)
    assert restored.metrics() == buffer.metrics()

    with pytest.raises(CheckpointError, match=r"resume with the same n"):
        checkpoint.load_state(tmp_path, ExperienceConfig(group_size=8), _fingerprint())
    manifest = tmp_path / "exgrpo" / "manifest.json"
    manifest.write_text(json.dumps({"version": 99, "files": {}}))
    with pytest.raises(CheckpointError, match="format version 99"):
        checkpoint.load_state(tmp_path, buffer.config, _fingerprint())
    manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load_state(tmp_path, buffer.config, _fingerprint())
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        checkpoint.load_state(tmp_path / "elsewhere", buffer.config, _fingerprint())


def test_a_valid_edit_of_the_trainer_state_is_refused(tmp_path):
    """Finding 4: trainer_state.json had no checksum; flipping the phase went unnoticed."""
    buffer = _save(tmp_path)
    state_file = tmp_path / "exgrpo" / "trainer_state.json"
    edited = json.loads(state_file.read_text()) | {"replay_started": False}
    state_file.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match=r"trainer_state.json: missing, or not the file the manifest .* records"):
        checkpoint.load_state(tmp_path, buffer.config, _fingerprint())


def test_other_training_data_under_the_same_ids_is_refused(tmp_path):
    """Finding 4: a training file reusing the question ids applied the buffer to other questions."""
    buffer = _save(tmp_path)
    with pytest.raises(CheckpointError, match=r"question ids \[3\] have another prompt or ground truth .* ids \[\] are missing"):
        checkpoint.load_state(tmp_path, buffer.config, _fingerprint({3: "another answer"}))
    fewer = checkpoint.data_fingerprint([0, 1], [[{"role": "user", "content": f"question {q}"}] for q in (0, 1)],
                                        ["answer 0", "answer 1"])
    with pytest.raises(CheckpointError, match=r"ids \[2, 3, 4, 9\] are missing"):
        checkpoint.load_state(tmp_path, buffer.config, fewer)
    # New questions beside the saved ones are fine.
    checkpoint.load_state(tmp_path, buffer.config, _fingerprint({77: "answer 77"}))


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['EXGRPO_PAYLOAD_MARK'], 'w').write('ran')",))


def test_a_data_loader_state_carrying_code_is_refused_before_verl_loads_it(tmp_path, monkeypatch):
    """Finding 3: verl loads global_step_N/data.pt with weights_only=False, so a pickle payload ran."""
    mark = tmp_path / "payload_ran"
    monkeypatch.setenv("EXGRPO_PAYLOAD_MARK", str(mark))
    honest = tmp_path / "honest.pt"
    torch.save({"_sampler_iter_yielded": 3, "generator": torch.Generator().get_state(), "nested": [1, {"a": 2.5}]}, honest)
    checkpoint.check_dataloader_state(honest)
    evil = tmp_path / "data.pt"
    torch.save({"state": _RunsCode()}, evil)
    with pytest.raises(CheckpointError, match="data.pt: verl's data-loader state holds something other than tensors"):
        checkpoint.check_dataloader_state(evil)
    assert not mark.exists()


def test_resume_folder_is_found_as_verl_finds_it(tmp_path):
    from omegaconf import OmegaConf

    trainer = OmegaConf.create({"resume_mode": "auto", "default_local_dir": str(tmp_path), "resume_from_path": None})
    assert checkpoint.resume_folder(trainer) is None
    (tmp_path / "global_step_6").mkdir()
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("6")
    assert checkpoint.resume_folder(trainer) == str(tmp_path / "global_step_6")
    trainer.resume_mode = "disable"
    assert checkpoint.resume_folder(trainer) is None


def test_state_of_checkpoints_verl_pruned_is_removed_too(tmp_path):
    buffer = _buffer_with_data()
    for step in (2, 4, 6):
        _save(tmp_path / f"global_step_{step}", buffer)
        (tmp_path / f"global_step_{step}" / "actor").mkdir()
    (tmp_path / "global_step_2" / "actor").rmdir()  # as max_actor_ckpt_to_keep does
    removed = checkpoint.tidy(tmp_path)
    assert removed == [tmp_path / "global_step_2" / "exgrpo"]
    assert not removed[0].exists()
    assert (tmp_path / "global_step_4" / "exgrpo" / "trainer_state.json").exists()


def test_what_killed_saves_left_is_removed_on_the_next_save_or_load(tmp_path):
    """Finding 5: `.experience.tmp-*` / `.experience.old-*` folders of killed saves stayed forever."""
    buffer = _buffer_with_data()
    for step in (1, 2):
        _save(tmp_path / f"global_step_{step}", buffer)
        (tmp_path / f"global_step_{step}" / "actor").mkdir()
    state = tmp_path / "global_step_1" / "exgrpo"
    leftovers = [state / ".experience.tmp-0a1b", state / ".experience.old-2c3d", state / ".trainer_state.json.tmp-4e5f"]
    leftovers[0].mkdir()
    (leftovers[0] / "tokens.npy").write_bytes(b"\0" * 1000)
    leftovers[1].mkdir()
    leftovers[2].write_text("{")
    _save(tmp_path / "global_step_3", buffer)
    (tmp_path / "global_step_3" / "actor").mkdir()  # verl's part of that save
    assert sorted(checkpoint.tidy(tmp_path)) == sorted(leftovers)
    assert not any(path.exists() for path in leftovers)

    # A save killed between its two renames: no experience/, the earlier one set aside. Loading puts it back.
    os.rename(state / "experience", state / ".experience.old-9f")
    restored, _ = checkpoint.load_state(tmp_path / "global_step_1", buffer.config, _fingerprint())
    assert restored.metrics() == buffer.metrics() and not (state / ".experience.old-9f").exists()


def test_every_state_file_gets_the_same_permissions(tmp_path):
    """Finding 5: trainer_state.json was written 0600 (tempfile) beside 0644 buffer files."""
    _save(tmp_path)
    modes = {path.relative_to(tmp_path).as_posix(): path.stat().st_mode & 0o777
             for path in (tmp_path / "exgrpo").rglob("*") if path.is_file()}
    assert len(set(modes.values())) == 1, modes
