"""Checkpoints: exact round trips, and clear errors for damaged, missing or foreign checkpoints."""

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from experience_testkit import assert_same_state, group, partial_group, small_segments
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exgrpo_verl.experience import CheckpointError, ExperienceBuffer, ExperienceConfig, persistence

FILES = ["manifest.json", "state.json", "tables.npz", "tokens.npy", "log_probs.npy"]


def rich_buffer(metric="random") -> ExperienceBuffer:
    """A buffer that has been through everything: caps, retirement, zero results, replays, RNG use."""
    with small_segments():
        buf = ExperienceBuffer(ExperienceConfig(group_size=4, selection_metric=metric, max_total_tokens=60,
                                                max_trajectories_per_question=3, seed=5))
        for step in range(1, 7):
            entropies = [np.full(4, 0.1 * step, np.float32)] * 4
            groups = [partial_group(q, 4, 1 + (q + step) % 3, tag=step, entropies=entropies,
                                    prompt_ids=np.arange(q + 1), payload={"row": q, "tag": [step]}) for q in range(5)]
            groups.append(group(10 + step, [1, 1, 1, 1]))
            groups.append(group(3, [0, 0, 0, 0]) if step == 4 else group(20, [0, 1, 0, 0]))
            buf.update(step, groups)
            picked = [buf.select(q) for q in buf.sample_questions(3)]
            buf.mark_replayed([t.id for t in picked], step)
    return buf


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "experience"
    rich_buffer().save(path)
    return path


def test_round_trip_is_exact_and_behaviour_continues_identically(tmp_path):
    buf = rich_buffer()
    assert buf.metrics()["evicted/token_cap"] > 0 and buf.metrics()["retired"] > 0  # the history is rich
    buf.save(tmp_path / "exp")
    loaded = ExperienceBuffer.load(tmp_path / "exp")
    assert_same_state(buf, loaded)
    assert loaded.metrics() == buf.metrics() and loaded.config == buf.config
    assert loaded.retired_ids == buf.retired_ids and loaded.step == buf.step
    for q in range(5):
        ours, theirs = buf.question(q), loaded.question(q)
        assert replace(ours, prompt_ids=None) == replace(theirs, prompt_ids=None)
        assert np.array_equal(ours.prompt_ids, theirs.prompt_ids) and ours.prompt_ids.dtype == np.int32
        assert [t.id for t in loaded.candidates(q)] == [t.id for t in buf.candidates(q)]
    for step in (7, 8):  # same draws, same random picks, same collection afterwards
        draws = buf.sample_questions(3)
        assert loaded.sample_questions(3) == draws
        assert [loaded.select(q).id for q in draws] == [buf.select(q).id for q in draws]
        for b in (buf, loaded):
            b.update(step, [partial_group(q, 4, 2, tag=step) for q in range(3)])
    assert_same_state(buf, loaded)


def test_an_empty_buffer_round_trips(tmp_path):
    ExperienceBuffer().save(tmp_path / "exp")
    assert_same_state(ExperienceBuffer.load(tmp_path / "exp"), ExperienceBuffer())


def test_files_are_plain_numpy_and_json(pristine):
    with np.load(pristine / "tables.npz", allow_pickle=False) as tables:
        assert all(tables[name].dtype != object for name in tables.files)
    assert np.load(pristine / "tokens.npy", allow_pickle=False).dtype == np.int32
    assert np.load(pristine / "log_probs.npy", allow_pickle=False).dtype == np.float32
    state = json.loads((pristine / "state.json").read_text())
    assert state["config"]["group_size"] == 4
    assert json.loads((pristine / "manifest.json").read_text())["format_version"] == persistence.FORMAT_VERSION


def copy_of(pristine: Path, into: str) -> Path:
    target = Path(into) / "experience"
    shutil.copytree(pristine, target)
    return target


def assert_load_fails_naming(path: Path, *names: str) -> str:
    before = {f.name: f.read_bytes() for f in path.iterdir()}
    with pytest.raises(CheckpointError) as error:
        ExperienceBuffer.load(path)
    message = str(error.value)
    assert any(name in message for name in names), message
    assert {f.name: f.read_bytes() for f in path.iterdir()} == before  # loading never writes
    return message


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FILES), position=st.floats(0, 1, exclude_max=True), flip=st.integers(1, 255))
def test_any_flipped_byte_is_detected(pristine, name, position, flip):
    with tempfile.TemporaryDirectory() as scratch:
        path = copy_of(pristine, scratch)
        data = bytearray((path / name).read_bytes())
        data[int(position * len(data))] ^= flip
        (path / name).write_bytes(bytes(data))
        # A flip inside a checksum in the manifest is reported against the file it describes.
        assert_load_fails_naming(path, name, *(FILES if name == "manifest.json" else []))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(FILES), keep=st.floats(0, 1, exclude_max=True))
def test_a_truncated_file_is_detected(pristine, name, keep):
    with tempfile.TemporaryDirectory() as scratch:
        path = copy_of(pristine, scratch)
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[:int(keep * len(data))])
        message = assert_load_fails_naming(path, name)
        assert "truncated" in message or "manifest" in name


@pytest.mark.parametrize("name", FILES)
def test_a_missing_file_is_named(pristine, tmp_path, name):
    path = copy_of(pristine, tmp_path)
    (path / name).unlink()
    message = assert_load_fails_naming(path, name)
    assert "missing" in message and "another checkpoint" in message


def rewrite_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_bytes(persistence._canonical(manifest))


def test_a_wrong_version_says_which_versions(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    rewrite_manifest(path, format_version=99)
    message = assert_load_fails_naming(path, "manifest.json")
    assert "format version 99" in message and "reads versions 1, 2" in message


def test_a_version_1_checkpoint_loads_with_zero_visit_counts(pristine, tmp_path):
    """Version 1 (before per-question visit counts) had no visit columns; everything else is the same."""
    path = copy_of(pristine, tmp_path)
    with np.load(path / "tables.npz", allow_pickle=False) as tables:
        old = {name: tables[name] for name in tables.files if name not in ("question_fresh_visits", "question_replays")}
    assert len(old) == len(np.load(path / "tables.npz").files) - 2
    np.savez(path / "tables.npz", **old)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["tables.npz"] = {"bytes": (path / "tables.npz").stat().st_size,
                                       "sha256": persistence._sha256(path / "tables.npz")}
    rewrite_manifest(path, format_version=1, files=manifest["files"])
    saved, loaded = ExperienceBuffer.load(pristine), ExperienceBuffer.load(path)
    assert saved.metrics()["question_replays/1"] + saved.metrics()["question_replays/2"] > 0  # the counts were there
    counts = [key for key in saved.metrics() if key.startswith(("question_replays/", "question_fresh_visits/"))]
    assert counts and all(loaded.metrics()[key] == 0 for key in counts)
    assert {k: v for k, v in loaded.metrics().items() if k not in counts} == \
        {k: v for k, v in saved.metrics().items() if k not in counts}


def test_a_foreign_manifest_or_no_directory_is_refused(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    rewrite_manifest(path, format="something-else")
    assert "not an exgrpo-experience manifest" in assert_load_fails_naming(path, "manifest.json")
    with pytest.raises(CheckpointError, match="no such directory"):
        ExperienceBuffer.load(tmp_path / "nowhere")


def test_loading_with_another_group_size_is_refused_other_keys_are_taken(pristine):
    with pytest.raises(CheckpointError, match="group_size=4.*group_size=8"):
        ExperienceBuffer.load(pristine, ExperienceConfig(group_size=8))
    loaded = ExperienceBuffer.load(pristine, ExperienceConfig(group_size=4, selection_metric="recent"))
    assert loaded.config.selection_metric == "recent" and loaded.metrics()["trajectories"] > 0


def test_saving_over_a_checkpoint_replaces_it_and_leaves_no_temporaries(tmp_path):
    first, second = ExperienceBuffer(ExperienceConfig(group_size=4)), rich_buffer()
    first.update(1, [partial_group(1, 4, 2)])
    first.save(tmp_path / "exp")
    second.save(tmp_path / "exp")
    assert_same_state(ExperienceBuffer.load(tmp_path / "exp"), second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    buf = rich_buffer()
    buf.save(tmp_path / "exp")

    def disk_full(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(persistence, "_write_npy_chunks", disk_full)
    with pytest.raises(OSError, match="No space"):
        ExperienceBuffer().save(tmp_path / "exp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    assert_same_state(ExperienceBuffer.load(tmp_path / "exp"), buf)


def test_saving_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="refusing to replace"):
        ExperienceBuffer().save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def rewrite_with_valid_checksum(path: Path, name: str, data: bytes) -> None:
    """A hand edit that keeps the manifest consistent, so only the contents are wrong."""
    (path / name).write_bytes(data)
    files = json.loads((path / "manifest.json").read_text())["files"]
    files[name] = {"bytes": len(data), "sha256": persistence._sha256(path / name)}
    rewrite_manifest(path, files=files)


def test_inconsistent_contents_with_valid_checksums_are_refused(pristine, tmp_path):
    path = copy_of(pristine, tmp_path)
    state = json.loads((path / "state.json").read_text())
    state["config"]["group_size"] = 1
    rewrite_with_valid_checksum(path, "state.json", json.dumps(state).encode())
    assert "group_size" in assert_load_fails_naming(path, "contents are inconsistent")
    shutil.rmtree(path)
    path = copy_of(pristine, tmp_path)
    tokens = np.load(path / "tokens.npy")
    np.save(path / "short.npy", tokens[:-1])
    rewrite_with_valid_checksum(path, "tokens.npy", (path / "short.npy").read_bytes())
    assert "traj_length" in assert_load_fails_naming(path, "contents are inconsistent")


def test_a_failed_rename_puts_the_previous_checkpoint_back(tmp_path, monkeypatch):
    buf = rich_buffer()
    buf.save(tmp_path / "exp")
    real_rename, calls = persistence.os.rename, []

    def rename(source, target):
        calls.append(Path(source).name)
        if Path(source).name.startswith(".exp.tmp-"):
            raise OSError("rename failed")
        real_rename(source, target)

    monkeypatch.setattr(persistence.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        ExperienceBuffer().save(tmp_path / "exp")
    monkeypatch.undo()
    assert calls[0] == "exp" and sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    assert_same_state(ExperienceBuffer.load(tmp_path / "exp"), buf)
