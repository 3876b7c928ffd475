"""The experience log (journal.py): a checkpoint plus the log's records gives back the buffer of
the last completed step, exactly; a torn tail (the file ends inside the last record) is dropped;
damage anywhere, a foreign header, another base or another run is never applied, and a log set
aside is kept."""

import struct

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
        log = ExperienceLog.start(tmp_path / "log.bin", base="ckpt-5", run_id="run-A")
        live.record_operations()
        digests = {}
        for step in range(6, 12):
            run_step(live, step, rng)
            digests[step] = live.state_sha256()
            log.append(step, live.take_operations(), context={"replay_started": True}, buffer_sha256=digests[step])

        resumed, records, note = ExperienceLog.resume(tmp_path / "log.bin", base="ckpt-5", run_id="run-A")
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


def logged_steps(path, steps=(1, 2, 3), base="b", run_id="run-A") -> list[int]:
    """A log of `steps` on `base`; returns each record's size in bytes (the base record first)."""
    buf = ExperienceBuffer(ExperienceConfig(group_size=K))
    buf.record_operations()
    log = ExperienceLog.start(path, base=base, run_id=run_id)
    rng = np.random.default_rng(0)
    sizes = [path.stat().st_size]
    for step in steps:
        run_step(buf, step, rng)
        sizes.append(log.append(step, buf.take_operations()))
    return sizes


def test_a_torn_last_record_is_dropped_and_cut_off(tmp_path):
    sizes = logged_steps(tmp_path / "log.bin")
    whole = (tmp_path / "log.bin").read_bytes()
    # The file ends inside the last record: in its marker, its CRC, the JSON, the arrays.
    for cut in (sizes[-1] - 2, sizes[-1] - 18, 40, 1):
        (tmp_path / "log.bin").write_bytes(whole[:-cut])
        contents = read_log(tmp_path / "log.bin")
        assert contents.torn and [r.step for r in contents.records] == [1, 2]
    _, records, note = ExperienceLog.resume(tmp_path / "log.bin", base="b", run_id="run-A")
    assert [r.step for r in records] == [1, 2] and "torn" in note
    assert (tmp_path / "log.bin").stat().st_size == len(whole) - sizes[-1]  # cut at the last good record
    # Blocks allocated but never written read back as zeros: also a torn tail.
    (tmp_path / "log.bin").write_bytes(whole[:-sizes[-1]] + bytes(4096))
    assert [r.step for r in read_log(tmp_path / "log.bin").records] == [1, 2]


def test_damage_before_the_last_record_is_refused_with_the_fix(tmp_path):
    sizes = logged_steps(tmp_path / "log.bin", steps=(1, 2))
    data = bytearray((tmp_path / "log.bin").read_bytes())
    data[sizes[0] + 100] ^= 0xFF  # inside the first step record, with another record after it
    (tmp_path / "log.bin").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"record 1, at byte {sizes[0]}, is damaged \(its contents fail their "
                                              r"SHA-256\).*not a torn write.*Move it away \(or delete it\)"):
        read_log(tmp_path / "log.bin")
    (tmp_path / "other.bin").write_bytes(b"not a log at all, just some text of reasonable length" * 3)
    with pytest.raises(CheckpointError, match="does not start with an exgrpo-experience-log header"):
        read_log(tmp_path / "other.bin")


def test_a_bad_length_field_is_damage_not_a_torn_write(tmp_path):
    """Issue 23 item 6: a flipped byte in the first record's length field read as '0 step records,
    and a torn last record dropped'; the run went on without the logged experience."""
    sizes = logged_steps(tmp_path / "log.bin")
    whole = (tmp_path / "log.bin").read_bytes()
    # A high byte of the header length of record 0 (the base) and record 1 (the first step), and
    # of the last record's blob length.
    for offset, where in ((7, "the log's first record \\(its header\\), at byte 0"),
                          (sizes[0] + 7, rf"record 1, at byte {sizes[0]}"),
                          (sum(sizes[:-1]) + 14, rf"record 3, at byte {sum(sizes[:-1])}")):
        data = bytearray(whole)
        data[offset] ^= 0x01  # the record now claims more bytes than the file holds, as a torn one would
        (tmp_path / "log.bin").write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=rf"{where}, is damaged \(its length fields fail their CRC\)"):
            ExperienceLog.resume(tmp_path / "log.bin", base="b", run_id="run-A")
        assert (tmp_path / "log.bin").read_bytes() == bytes(data)  # nothing cut off


def test_a_complete_last_record_failing_its_digest_is_damage_not_a_torn_write(tmp_path):
    """Issue 24 item 3: a bit flipped inside the complete last record was dropped as a torn write."""
    sizes = logged_steps(tmp_path / "log.bin")
    data = bytearray((tmp_path / "log.bin").read_bytes())
    data[-5] ^= 0x01  # in the last record's arrays: its lengths are intact, its SHA-256 fails
    (tmp_path / "log.bin").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"record 3, at byte {sum(sizes[:-1])}, is damaged \(its contents fail "
                                              r"their SHA-256\)"):
        ExperienceLog.resume(tmp_path / "log.bin", base="b", run_id="run-A")


def test_a_log_of_an_earlier_format_is_refused_by_version(tmp_path):
    (tmp_path / "log.bin").write_bytes(b"EXGL" + struct.pack("<IQ", 10, 0) + bytes(32) + b'{"kind":1}')
    with pytest.raises(CheckpointError, match="format version 1 .*this code reads 2"):
        read_log(tmp_path / "log.bin")


def test_a_log_set_aside_is_kept_beside_the_new_one(tmp_path):
    """Issue 24 item 1: 'it was set aside' replaced the file; its records were gone."""
    logged_steps(tmp_path / "log.bin", steps=(1, 2), base="checkpoint-A")
    before = (tmp_path / "log.bin").read_bytes()
    _, records, note = ExperienceLog.resume(tmp_path / "log.bin", base="checkpoint-B", run_id="run-A")
    (kept,) = tmp_path.glob("log.bin.set-aside-*")
    assert records == [] and "another checkpoint" in note and f"kept as {kept}" in note
    assert kept.read_bytes() == before and [r.step for r in read_log(kept).records] == [1, 2]
    assert read_log(tmp_path / "log.bin").base == "checkpoint-B" and read_log(tmp_path / "log.bin").records == []
    # A run that continues nothing (resume_mode=disable) keeps the log it finds too.
    _, records, note = ExperienceLog.resume(tmp_path / "log.bin", base="checkpoint-B", run_id=None, fresh=True)
    assert records == [] and "continues none" in note and len(list(tmp_path.glob("log.bin.set-aside-*"))) == 2


def test_a_log_of_another_run_is_refused_and_a_restart_continues_its_own(tmp_path):
    """Issue 24 item 2: a log another run wrote from the same checkpoint was replayed silently."""
    logged_steps(tmp_path / "log.bin", steps=(1, 2), base="checkpoint-A", run_id="run-A")
    before = (tmp_path / "log.bin").read_bytes()
    with pytest.raises(CheckpointError, match=r"log.bin: written by run run-A, but this run is run-B .*another run's "
                                              r"2 steps"):
        ExperienceLog.resume(tmp_path / "log.bin", base="checkpoint-A", run_id="run-B")
    assert (tmp_path / "log.bin").read_bytes() == before
    log, records, _ = ExperienceLog.resume(tmp_path / "log.bin", base="checkpoint-A", run_id="run-A")
    assert [r.step for r in records] == [1, 2] and log.run_id == "run-A"
    # A new run with no checkpoint yet (run id None) is a restart of the run that logged its base.
    log, records, _ = ExperienceLog.resume(tmp_path / "log.bin", base="checkpoint-A", run_id=None)
    assert [r.step for r in records] == [1, 2] and log.run_id == "run-A"


def test_warm_up_steps_log_no_rollouts_and_the_log_holds_no_pickle(tmp_path):
    buf = ExperienceBuffer(ExperienceConfig(group_size=K))
    buf.record_operations()
    buf.update(1, [partial_group(q, K, 2, prompt_ids=np.arange(5)) for q in range(8)], store=False)
    (operation,) = buf.take_operations()
    assert operation.name == "update" and all(group.storable == [] for group in operation.args["groups"])
    log = ExperienceLog.start(tmp_path / "log.bin", base="b", run_id="run-A")
    size = log.append(1, [operation])
    assert size < 2000  # counts and prompts only
    assert b"\x80\x04" not in (tmp_path / "log.bin").read_bytes()  # no pickle protocol marker
