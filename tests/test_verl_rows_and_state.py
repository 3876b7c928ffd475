"""The adapter's row conversions and ExGRPO's checkpoint state, on real verl row layouts."""

import json
import math
import os
import random
import shutil

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from exgrpo_verl.config import ExGRPOConfig, ExGRPOLossConfig
from exgrpo_verl.experience import CheckpointError, ExperienceBuffer, ExperienceConfig, GroupResult
from exgrpo_verl.verl_adapters import checkpoint
from exgrpo_verl.verl_adapters.rows import build_replayed_row, group_results_from_step, replayed_row_tag
from exgrpo_verl.verl_adapters.trainer import inference_micro_batch, question_positions, update_batch_multiple

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
    groups, fresh_rewards = group_results_from_step(rows, is_padding=[False] * 5 + [True], eos_token_ids={EOS}, group_size=3)
    by_question = {g.question_id: g for g in groups}
    assert sorted(by_question) == [11, 12]
    a = by_question[11]  # the replayed row (third) is not a rollout to store, but counts as a correct member
    assert a.rewards.tolist() == [1, 0] and a.ended_with_eos.tolist() == [True, False]
    assert a.replayed_correct == 1 and by_question[12].replayed_correct == 0
    assert [r.tolist() for r in a.response_ids] == [[1, EOS], [3, 4, 5]]
    assert a.prompt_ids.tolist() == [5, 6] and a.log_probs[0].tolist() == [-0.5, -0.5]
    assert fresh_rewards.tolist() == [1, 0, 1, 0]
    # Rows added beside K fresh rollouts (RePO, RLEP) are not graded: with K = 2 the group is full.
    added, _ = group_results_from_step(rows, is_padding=[False] * 5 + [True], eos_token_ids={EOS}, group_size=2)
    assert {g.question_id: g.replayed_correct for g in added} == {11: 0, 12: 0}


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


SETTINGS = checkpoint.run_settings(ExGRPOConfig(), 4)  # what the saving run had: the defaults, K = 4


def _save(folder, buffer=None, state=None):
    buffer = buffer or _buffer_with_data()
    checkpoint.save_state(folder, buffer, state or checkpoint.TrainerState(True, [4, 9], SETTINGS, "run-A"), _fingerprint())
    return buffer


def _load(folder, buffer_config=ExperienceConfig(group_size=4), fingerprint=None, settings=SETTINGS):
    return checkpoint.load_state(folder, buffer_config, fingerprint or _fingerprint(), settings)


def test_state_round_trips_and_bad_checkpoints_are_refused(tmp_path):
    buffer = _save(tmp_path)
    restored, state, changes = _load(tmp_path)
    assert state == checkpoint.TrainerState(True, [4, 9], SETTINGS, "run-A") and changes == []
    assert restored.metrics() == buffer.metrics()

    manifest = tmp_path / "exgrpo" / "manifest.json"
    manifest.write_text(json.dumps({"version": 99, "files": {}}))
    with pytest.raises(CheckpointError, match="format version 99"):
        _load(tmp_path)
    manifest.write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        _load(tmp_path)
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        _load(tmp_path / "elsewhere")


def test_setting_changes_on_resume_are_accepted_with_a_line_or_refused_by_name(tmp_path, monkeypatch):
    """Issue 23 item 5: a resume with another replay_ratio was accepted silently."""
    _save(tmp_path)
    changed = checkpoint.run_settings(ExGRPOConfig(replay_ratio=0.25, loss=ExGRPOLossConfig(shaping_beta=0.2)), 4)
    _, _, changes = _load(tmp_path, settings=changed)
    assert changes == ["exgrpo.loss.shaping_beta 0.1 -> 0.2 (the loss applies to later updates)",
                       "exgrpo.replay_ratio 0.5 -> 0.25 (the share of experience questions in later steps; 0 pauses replay)"]
    with pytest.raises(CheckpointError, match=r"this run changes settings a resume must keep: actor_rollout_ref.rollout.n "
                                              r"4 -> 8 \(the buffer's buckets and stored groups are counts out of K\)"):
        _load(tmp_path, ExperienceConfig(group_size=8), settings=checkpoint.run_settings(ExGRPOConfig(), 8))
    # The replay strategy may not change (its own row); a setting no rule covers is refused too, and one row allows it.
    strategy = changed | {"exgrpo.strategy": "zero_variance_fill"}
    with pytest.raises(CheckpointError, match=r"must keep: exgrpo.strategy 'exgrpo' -> 'zero_variance_fill' \(the strategy decides"):
        _load(tmp_path, settings=strategy)
    unruled = changed | {"exgrpo.a_later_setting": 1}
    with pytest.raises(CheckpointError, match=r"must keep: exgrpo.a_later_setting '\(not set\)' -> 1 \(no "
                                              r"resume rule allows changing it"):
        _load(tmp_path, settings=unruled)
    monkeypatch.setattr(checkpoint, "RESUME_RULES", (checkpoint.ResumeRule("exgrpo.a_later_setting", True, "a test rule"),
                                                     *checkpoint.RESUME_RULES))
    assert "exgrpo.a_later_setting '(not set)' -> 1 (a test rule)" in _load(tmp_path, settings=unruled)[2]


def test_a_resume_continues_the_run_of_its_own_folder_and_a_fork_is_a_new_run(tmp_path):
    _save(tmp_path / "global_step_3")
    _, state, _ = _load(tmp_path / "global_step_3")
    assert checkpoint.resumed_run_id(tmp_path / "global_step_3", tmp_path, state) == "run-A"
    forked = checkpoint.resumed_run_id(tmp_path / "global_step_3", tmp_path / "elsewhere", state)
    assert forked not in ("run-A", "") and len(forked) == 32


def test_a_valid_edit_of_the_trainer_state_is_refused(tmp_path):
    """Finding 4: trainer_state.json had no checksum; flipping the phase went unnoticed."""
    buffer = _save(tmp_path)
    state_file = tmp_path / "exgrpo" / "trainer_state.json"
    edited = json.loads(state_file.read_text()) | {"replay_started": False}
    state_file.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match=r"trainer_state.json: missing, or not the file the manifest .* records"):
        _load(tmp_path)


def test_other_training_data_under_the_same_ids_is_refused(tmp_path):
    """Finding 4: a training file reusing the question ids applied the buffer to other questions."""
    buffer = _save(tmp_path)
    with pytest.raises(CheckpointError, match=r"question ids \[3\] have another prompt or ground truth .* ids \[\] are missing"):
        _load(tmp_path, fingerprint=_fingerprint({3: "another answer"}))
    fewer = checkpoint.data_fingerprint([0, 1], [[{"role": "user", "content": f"question {q}"}] for q in (0, 1)],
                                        ["answer 0", "answer 1"])
    with pytest.raises(CheckpointError, match=r"ids \[2, 3, 4, 9\] are missing"):
        _load(tmp_path, fingerprint=fewer)
    # New questions beside the saved ones are fine.
    _load(tmp_path, fingerprint=_fingerprint({77: "answer 77"}))


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['EXGRPO_PAYLOAD_MARK'], 'w').write('ran')",))


def _verl_checkpoint(folder, world_size=2):
    """The files verl 0.9.1 unpickles on resume, with what it saves in them: every rank's model and
    optimizer shard and extra state (lr scheduler, torch/numpy/random RNG states), and data.pt."""
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    rng = {"cpu": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    (folder / "actor").mkdir(parents=True)
    for rank in range(world_size):
        torch.save(model.state_dict(), folder / "actor" / f"model_world_size_{world_size}_rank_{rank}.pt")
        torch.save(optimizer.state_dict(), folder / "actor" / f"optim_world_size_{world_size}_rank_{rank}.pt")
        torch.save({"lr_scheduler": scheduler.state_dict(), "rng": rng},
                   folder / "actor" / f"extra_state_world_size_{world_size}_rank_{rank}.pt")
    torch.save({"_sampler_iter_yielded": 3, "generator": torch.Generator().get_state(), "nested": [1, {"a": 2.5}]},
               folder / "data.pt")


def test_no_file_verl_unpickles_on_resume_can_run_code(tmp_path, monkeypatch):
    """Issue 23 item 1 (and finding 3 before it): verl torch.loads data.pt and every rank's model,
    optim and extra_state shard with weights_only=False; a pickle payload in any of them ran."""
    mark = tmp_path / "payload_ran"
    monkeypatch.setenv("EXGRPO_PAYLOAD_MARK", str(mark))
    honest = tmp_path / "honest" / "global_step_2"
    _verl_checkpoint(honest)
    checkpoint.check_verl_files(honest)
    torch.save({"state": _RunsCode()}, tmp_path / "payload.pt")
    torch.load(tmp_path / "payload.pt", weights_only=False)  # as verl loads it: the payload is real
    assert mark.read_text() == "ran"
    mark.unlink()
    for name in ("actor/model_world_size_2_rank_1.pt", "actor/optim_world_size_2_rank_0.pt",
                 "actor/extra_state_world_size_2_rank_1.pt", "data.pt"):
        folder = tmp_path / name.replace("/", "_") / "global_step_2"
        shutil.copytree(honest, folder)
        original = torch.load(folder / name, weights_only=False)
        torch.save({**original, "payload": _RunsCode()}, folder / name)
        with pytest.raises(CheckpointError, match=rf"global_step_2/{name}: holds something other than tensors and "
                                                  r"plain values .*verl unpickles it, which could run code"):
            checkpoint.check_verl_files(folder)
        assert not mark.exists(), name


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
    restored, _, _ = _load(tmp_path / "global_step_1")
    assert restored.metrics() == buffer.metrics() and not (state / ".experience.old-9f").exists()


def test_every_state_file_gets_the_same_permissions(tmp_path):
    """Finding 5: trainer_state.json was written 0600 (tempfile) beside 0644 buffer files."""
    _save(tmp_path)
    modes = {path.relative_to(tmp_path).as_posix(): path.stat().st_mode & 0o777
             for path in (tmp_path / "exgrpo").rglob("*") if path.is_file()}
    assert len(set(modes.values())) == 1, modes


def test_the_selection_pass_is_not_padded_to_a_whole_log_prob_micro_batch():
    """4 candidates with a log-prob micro-batch of 64: one micro-batch of 4 (was: padded to 64 rows);
    more candidates than that keep the configured size; token budgets are verl's to size."""
    assert inference_micro_batch(4, ranks=1, configured=64, dynamic=False) == 4
    assert inference_micro_batch(5, ranks=2, configured=64, dynamic=False) == 3  # 2 ranks x 3 rows >= 5
    assert inference_micro_batch(300, ranks=2, configured=64, dynamic=False) == 64
    assert inference_micro_batch(4, ranks=1, configured=64, dynamic=True) is None


@pytest.mark.parametrize("batch, mini_batch, n, ranks, micro", [(8, 8, 8, 1, 8), (8, 8, 8, 1, 64), (128, 64, 8, 8, 4),
                                                              (128, 32, 16, 4, None), (6, 3, 4, 2, 2)])
def test_an_enlarged_batch_keeps_the_configured_number_of_mini_batches(batch, mini_batch, n, ranks, micro):
    """The known defect (docs/strategies.md): verl pads to a multiple of its mini-batch, so 3 rows
    beyond B x n became a second optimizer step. Padded to update_batch_multiple instead, any batch
    splits into B / mini_batch mini-batches that verl's worker accepts (whole groups' worth of rows
    per mini-batch, whole micro-batches per rank), with fewer padding rows than one such unit; a
    batch of B x n rows is left as it is, as verl leaves it."""
    mini_batches = batch // mini_batch
    multiple = update_batch_multiple(n, ranks, micro, mini_batches)
    assert (batch * n) % multiple == 0 and (batch * n) % math.lcm(ranks, mini_batch * n) == 0  # verl's multiple
    for added in (0, 1, 3, 2 * n + 5):
        rows = batch * n + added
        padded = -(-rows // multiple) * multiple
        per_mini_batch = padded // mini_batches
        assert padded % mini_batches == 0 and per_mini_batch % n == 0  # ppo_mini_batch_size := per_mini_batch / n
        assert (per_mini_batch // ranks) % (micro or 1) == 0 and per_mini_batch % ranks == 0
        assert padded - rows < multiple
        verl_mini_batches = -(-rows // (mini_batch * n))  # verl: padded to whole configured mini-batches
        assert (verl_mini_batches > mini_batches) == (added > 0)
