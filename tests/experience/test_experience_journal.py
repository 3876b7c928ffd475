"""The experience log (journal.py): a checkpoint plus the log's records gives back the buffer of
the last completed step, exactly; a torn last record is dropped; damage elsewhere, a foreign
header or another base is never applied."""

import numpy as np
import pytest

from exgrpo_verl.experience import CheckpointError, ExperienceBuffer, ExperienceConfig
from exgrpo_verl.experience.journal import ExperienceLog, read_log

from experience_testkit import assert_same_state, partial_group, small_segments

K = 4


def run_step(buf: ExperienceBuffer, step: int, rng: np.random.Generator) -> None:
    """One trainer-like step: sample experience questions, select and mark replays, collect."""
    for qid in buf.sample_questions(3):
        candidates = buf.candidates(qid)
        chosen = buf.select(qid, rng.random(len(candidates)))
        buf.mark_replayed([chosen.id], step)
    fresh = rng.choice(40, size=6, replace=False)
    buf.update(step, [partial_group(int(q), K, int(rng.integers(0, K + 1)), tag=step, prompt_ids=np.arange(3),
                                    payload={"q": int(q)}) for q in fresh], store=step > 1)


def test_checkpoint_plus_log_equals_the_buffer_at_the_last_logged_step(tmp_path):
    with small_segments():
        rng = np.random.default_rng(0)
        live = ExperienceBuffer(ExperienceConfig(group_size=K, max_total_tokens=200, seed=3))
        for step in range(1, 6):
            run_step(live, step, rng)
        live.save(tmp_path / "ckpt")
        log = ExperienceLog.start(tmp_path / "log.bin", base="ckpt-5")
        live.record_operations()
        digests = {}
        for step in range(6, 12):
            run_step(live, step, rng)
            digests[step] = live.state_sha256()
            log.append(step, live.take_operations(), context={"replay_started": True}, buffer_sha256=digests[step])

        resumed, records, note = ExperienceLog.resume(tmp_path / "log.bin", base="ckpt-5")
        restored = ExperienceBuffer.load(tmp_path / "ckpt")
        for record in records:
            restored.replay(record.operations)
            assert restored.state_sha256() == record.buffer_sha256 == digests[record.step]
        assert [r.step for r in records] == list(range(6, 12)) and "6 step records" in note
        assert_same_state(restored, live)
        # ... and it goes on identically: the RNG state came back too.
        run_step(live, 12, np.random.default_rng(1))
        run_step(restored, 12, np.random.default_rng(1))
        assert_same_state(restored, live)


def test_a_torn_last_record_is_dropped_and_cut_off(tmp_path):
    buf = ExperienceBuffer(ExperienceConfig(group_size=K))
    buf.record_operations()
    log = ExperienceLog.start(tmp_path / "log.bin", base="b")
    rng = np.random.default_rng(0)
    sizes = []
    for step in (1, 2, 3):
        run_step(buf, step, rng)
        sizes.append(log.append(step, buf.take_operations()))
    whole = (tmp_path / "log.bin").read_bytes()
    for cut in (1, 40, sizes[-1] - 1):  # inside the frame header, the JSON, the arrays
        (tmp_path / "log.bin").write_bytes(whole[:-cut])
        contents = read_log(tmp_path / "log.bin")
        assert contents.torn and [r.step for r in contents.records] == [1, 2]
    _, records, note = ExperienceLog.resume(tmp_path / "log.bin", base="b")
    assert [r.step for r in records] == [1, 2] and "torn" in note
    assert (tmp_path / "log.bin").stat().st_size == len(whole) - sizes[-1]  # cut at the last good record
    # Blocks allocated but never written read back as zeros: also a torn tail.
    (tmp_path / "log.bin").write_bytes(whole[:-sizes[-1]] + bytes(4096))
    assert [r.step for r in read_log(tmp_path / "log.bin").records] == [1, 2]


def test_damage_before_the_last_record_is_refused_with_the_fix(tmp_path):
    buf = ExperienceBuffer(ExperienceConfig(group_size=K))
    buf.record_operations()
    log = ExperienceLog.start(tmp_path / "log.bin", base="b")
    rng = np.random.default_rng(0)
    for step in (1, 2):
        run_step(buf, step, rng)
        log.append(step, buf.take_operations())
    data = bytearray((tmp_path / "log.bin").read_bytes())
    data[200] ^= 0xFF  # inside the first step record, with another record after it
    (tmp_path / "log.bin").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="byte .* is damaged and is not the last one.*Delete the log"):
        read_log(tmp_path / "log.bin")
    (tmp_path / "other.bin").write_bytes(b"not a log at all, just some text of reasonable length" * 3)
    with pytest.raises(CheckpointError, match="does not start with an exgrpo-experience-log header"):
        read_log(tmp_path / "other.bin")


def test_a_log_of_another_base_is_set_aside_not_applied(tmp_path):
    buf = ExperienceBuffer(ExperienceConfig(group_size=K))
    buf.record_operations()
    log = ExperienceLog.start(tmp_path / "log.bin", base="checkpoint-A")
    run_step(buf, 1, np.random.default_rng(0))
    log.append(1, buf.take_operations())
    _, records, note = ExperienceLog.resume(tmp_path / "log.bin", base="checkpoint-B")
    assert records == [] and "another checkpoint" in note
    assert read_log(tmp_path / "log.bin").base == "checkpoint-B" and read_log(tmp_path / "log.bin").records == []


def test_warm_up_steps_log_no_rollouts_and_the_log_holds_no_pickle(tmp_path):
    buf = ExperienceBuffer(ExperienceConfig(group_size=K))
    buf.record_operations()
    buf.update(1, [partial_group(q, K, 2, prompt_ids=np.arange(5)) for q in range(8)], store=False)
    (operation,) = buf.take_operations()
    assert operation.name == "update" and all(group.storable == [] for group in operation.args["groups"])
    log = ExperienceLog.start(tmp_path / "log.bin", base="b")
    size = log.append(1, [operation])
    assert size < 2000  # counts and prompts only
    assert b"\x80\x04" not in (tmp_path / "log.bin").read_bytes()  # no pickle protocol marker
