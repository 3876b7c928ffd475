"""One run owns its checkpoint folder, without Ray: the folder lock between real processes,
checkpoint retention from disk (a real SIGKILL in the middle of a prune), the SIGTERM resume
line, and no hydra run folders in the working directory. The same behaviour inside verl's
trainer is tested end to end in tests/test_e2e_run_ownership.py."""

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from exgrpo_verl import checkpoint_retention, graceful_stop, run_lock
from exgrpo_verl.checkpoint_retention import steps_to_remove
from exgrpo_verl.verl_adapters.checkpoint import resume_folder

REPO = Path(__file__).parents[1]
HOLD_LOCK = "import sys, time; from exgrpo_verl import run_lock; run_lock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)"


def _holder(folder: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_is_refused_naming_the_holders_pid_and_host(tmp_path):
    holder = _holder(tmp_path / "checkpoints")
    try:
        with pytest.raises(run_lock.FolderInUse) as refused:
            run_lock.acquire(tmp_path / "checkpoints")
        message = str(refused.value)
        assert message.startswith(f"trainer.default_local_dir={tmp_path / 'checkpoints'} is in use by another run: "
                                  f"pid {holder.pid} on host {socket.gethostname()}")
        assert "give this run another trainer.default_local_dir" in message
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_holder_is_taken_over_with_a_log_line_and_a_clean_release_leaves_none(tmp_path):
    folder = tmp_path / "checkpoints"
    holder = _holder(folder)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lines = []
    lock = run_lock.acquire(folder, log=lines.append)
    assert len(lines) == 1 and f"was locked by pid {holder.pid} on host {socket.gethostname()}" in lines[0]
    assert "ended without releasing it (killed?); taking it over" in lines[0]
    lock.release()
    assert (folder / run_lock.LOCK_FILE).read_text() == ""  # released: nothing to take over
    again = []
    run_lock.acquire(folder, log=again.append).release()
    assert again == []


def test_without_file_locks_the_run_goes_on_unlocked_and_says_so(tmp_path, monkeypatch):
    """A mock: no file system here lacks flock (NFS mounted with nolock answers ENOLCK)."""
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    lines = []
    run_lock.acquire(tmp_path, log=lines.append).release()
    assert lines == [f"exgrpo: {tmp_path / run_lock.LOCK_FILE}: this file system has no file locks (No locks available); "
                     "trainer.default_local_dir is not locked, so make sure no other run uses it"]


@pytest.mark.parametrize("steps, latest, keep, removed", [
    ([1, 2, 3], 3, 2, [1]),
    ([1, 2, 3, 4, 5], 5, 2, [1, 2, 3]),
    ([1, 2, 3], 3, 1, [1, 2]),
    ([2, 3], 3, 5, []),
    # resumed from step 3 (resume_path) with steps 6, 7 of an abandoned history on disk: those stay,
    # and the latest (4) is kept even though higher step numbers exist.
    ([1, 2, 3, 4, 6, 7], 4, 2, [1, 2]),
])
def test_which_steps_are_pruned(steps, latest, keep, removed):
    assert steps_to_remove(steps, latest, keep) == removed


def _checkpoint_tree(root: Path, files_per_step: dict[int, int], latest: int) -> None:
    for step, files in files_per_step.items():
        actor = root / f"global_step_{step}" / "actor"
        actor.mkdir(parents=True)
        for i in range(files):
            (actor / f"shard_{i}.bin").write_bytes(b"x")
        (root / f"global_step_{step}" / "data.pt").write_bytes(b"loader")
    (root / "latest_checkpointed_iteration.txt").write_text(str(latest))
    (root / "best_model").mkdir()  # a best model kept beside the steps: never pruned
    (root / "best_model" / "model.safetensors").write_bytes(b"best")
    (root / "global_step_final").mkdir()  # not global_step_<digits>: not a step


def test_prune_keeps_the_newest_and_nothing_outside_the_step_folders(tmp_path):
    _checkpoint_tree(tmp_path, {1: 2, 2: 2, 3: 2, 4: 2}, latest=4)
    assert checkpoint_retention.prune(tmp_path, keep=2, log=lambda line: None) == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best_model", "global_step_3", "global_step_4", "global_step_final", "latest_checkpointed_iteration.txt"]
    assert checkpoint_retention.prune(tmp_path, keep=None) == []  # keep all (KEEP_CHECKPOINTS=0)


def test_a_kill_during_pruning_leaves_a_resumable_latest_and_the_next_prune_finishes(tmp_path):
    # Deleting step 1 takes long enough for the kill to land inside it.
    _checkpoint_tree(tmp_path, {1: 8_000, 2: 1, 3: 5}, latest=3)
    pruning = subprocess.Popen(
        [sys.executable, "-c", "import sys; from exgrpo_verl import checkpoint_retention as r; r.prune(sys.argv[1], 1)",
         str(tmp_path)], env={**os.environ, "PYTHONPATH": str(REPO)})
    while not list(tmp_path.glob(".trash-*")) and pruning.poll() is None:
        time.sleep(0.001)
    pruning.send_signal(signal.SIGKILL)
    assert pruning.wait() == -signal.SIGKILL, "the prune finished before the kill: make the steps bigger"

    trash = list(tmp_path.glob(".trash-global_step_*"))
    assert trash  # the killed deletion is under its trash name, not half a global_step_N
    trainer = OmegaConf.create({"resume_mode": "auto", "default_local_dir": str(tmp_path)})
    latest = Path(resume_folder(trainer))
    assert latest == tmp_path / "global_step_3" and len(list((latest / "actor").iterdir())) == 5
    assert checkpoint_retention.latest_step(tmp_path) == 3
    assert 3 not in {int(p.name.split("_")[2].split("-")[0]) for p in trash}

    checkpoint_retention.prune(tmp_path, keep=1, log=lambda line: None)
    assert not list(tmp_path.glob(".trash-*"))
    assert sorted(checkpoint_retention.step_folders(tmp_path)) == [3]
    assert (tmp_path / "best_model" / "model.safetensors").read_bytes() == b"best"


def test_the_sigterm_line_names_the_checkpoint_a_resume_starts_from(tmp_path):
    assert graceful_stop.resume_line(tmp_path) == (
        "exgrpo: stopped by SIGTERM, the step in progress dropped; a resume (trainer.resume_mode=auto) starts from "
        f"step 0: no checkpoint was saved in {tmp_path} yet")
    _checkpoint_tree(tmp_path, {4: 1, 5: 1}, latest=5)
    assert graceful_stop.resume_line(tmp_path).endswith(f"starts from {tmp_path}/global_step_5 (step 5)")


def test_sigterm_inside_an_owned_run_exits_143_with_the_resume_line_and_releases_the_lock(tmp_path):
    """The entry point's wrapper around the trainer, with a sleeping body instead of verl (the
    trainer case, Ray's handlers included, is in tests/test_e2e_run_ownership.py)."""
    _checkpoint_tree(tmp_path, {7: 1}, latest=7)
    body = ("import sys, time; from exgrpo_verl.main import owning_the_run\n"
            "with owning_the_run(sys.argv[1]):\n    print('running', flush=True); time.sleep(600)")
    run = subprocess.Popen([sys.executable, "-c", body, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.stdout.readline().strip() == "running"
    assert f'"pid": {run.pid}' in (tmp_path / run_lock.LOCK_FILE).read_text()
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 143
    assert run.stdout.read().strip().splitlines()[-1].endswith(f"starts from {tmp_path}/global_step_7 (step 7)")
    assert (tmp_path / run_lock.LOCK_FILE).read_text() == ""


def test_the_entry_point_writes_no_hydra_run_folder_into_the_working_directory(tmp_path):
    """A run that stops at the config check (no Ray): hydra has set up its run by then."""
    result = subprocess.run([sys.executable, "-m", "exgrpo_verl.main", "actor_rollout_ref.rollout.n=1"], cwd=tmp_path,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode != 0 and "ExGRPO needs K >= 2" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/<date>/<time>/, no .hydra/, no main.log
