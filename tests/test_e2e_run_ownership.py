"""One run owns its checkpoint folder, through verl's real trainer on the CPU, in one launch
sequence on one `trainer.default_local_dir` (checkpoint every step, keep 2, experience log on):

1. run A starts; once it has a checkpoint, run B is started on the same folder and refused
   before it touches anything, naming A's pid and host; A carries on;
2. A gets SIGTERM in the middle of a step: it exits 143 with one line naming the checkpoint a
   resume starts from (no C stack), and releases its lock;
3. three resumes, one step each: each loads the checkpoint named, and after each exactly the
   2 newest step folders are on disk (verl alone forgets, at a restart, what it may delete);
4. no hydra `outputs/` folder appeared in the working directory of any of these runs.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exgrpo_verl import checkpoint_retention, run_lock
from exgrpo_verl.cpu_runtime.launch import cpu_env, cpu_run_overrides, read_metrics
from exgrpo_verl.tasks import char_hunt

pytestmark = pytest.mark.slow  # four trainer launches (lock, SIGTERM, three resumes): `make test-slow`

KEEP, RESUMES = 2, 3
STARTUP_TIMEOUT_S = 900


def _overrides(model, train, val, out: Path, total_steps: int) -> list[str]:
    return [o for o in cpu_run_overrides(
        str(model), str(train), str(val), batch_size=8, rollouts_per_question=4, max_response_length=32,
        total_steps=total_steps, output_dir=str(out), reward_path=char_hunt.__file__,
    ) if not o.startswith(("trainer.resume_mode=", "trainer.logger="))] + [
        "trainer.resume_mode=auto", "trainer.save_freq=1", f"trainer.max_actor_ckpt_to_keep={KEEP}",
        "trainer.logger=[console,file]", "exgrpo.experience_log=true", "exgrpo.start_solve_rate=0.1",
        "exgrpo.sampler_poll_interval_s=0.05",
    ]


def _start(overrides, env, cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "exgrpo_verl.main", *overrides], env=env, cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until(condition, process: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not condition():
        assert process.poll() is None, f"the run exited ({process.returncode}) before {what}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} after {STARTUP_TIMEOUT_S} s"
        time.sleep(0.2)


def _exgrpo_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if line.startswith("exgrpo: ")]


def test_one_run_owns_its_folder_stops_cleanly_on_sigterm_and_keeps_2_checkpoints_across_resumes(
        tiny_qwen2, char_hunt_files, tmp_path):
    train, val = char_hunt_files
    out, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    root = out / "checkpoints"
    metrics = out / "metrics.jsonl"
    env = cpu_env(str(metrics))

    # 1. Run A, and run B on the same folder while A holds it.
    a_log = tmp_path / "a.log"
    run_a = _start(_overrides(tiny_qwen2, train, val, out, total_steps=20), env, cwd, a_log)
    try:
        _wait_until(lambda: checkpoint_retention.latest_step(root) is not None, run_a, a_log, "A's first checkpoint")
        refused = subprocess.run([sys.executable, "-m", "exgrpo_verl.main", *_overrides(tiny_qwen2, train, val, out, 20)],
                                 env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
        first_line = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 1, refused.stdout[-3000:] + refused.stderr[-3000:]
        assert first_line.startswith(f"exgrpo: trainer.default_local_dir={root} is in use by another run: "
                                     f"pid {run_a.pid} on host {socket.gethostname()} (started "), first_line
        assert run_a.poll() is None  # A carries on, its state untouched: B did not even set its metrics aside
        assert f'"pid": {run_a.pid}' in (root / run_lock.LOCK_FILE).read_text() and not list(out.glob("metrics.part*"))

        # 2. SIGTERM in the middle of a step (the step after the second checkpoint has begun).
        _wait_until(lambda: (checkpoint_retention.latest_step(root) or 0) >= 2 and metrics.exists()
                    and any(row["step"] >= 2 for row in read_metrics(str(metrics))), run_a, a_log, "A's second step")
        time.sleep(2)
        run_a.send_signal(signal.SIGTERM)
        assert run_a.wait(timeout=300) == 128 + signal.SIGTERM, a_log.read_text()[-4000:]
    finally:
        if run_a.poll() is None:
            os.killpg(run_a.pid, signal.SIGKILL)
            run_a.wait()
    stopped_at = checkpoint_retention.latest_step(root)
    text = a_log.read_text(errors="replace")
    assert "SIGTERM received at time" not in text  # the first line of Ray's C stack on SIGTERM
    assert _exgrpo_lines(a_log)[-1] == (f"exgrpo: stopped by SIGTERM, the step in progress dropped; a resume "
                                        f"(trainer.resume_mode=auto) starts from {root}/global_step_{stopped_at} "
                                        f"(step {stopped_at})")
    assert (root / run_lock.LOCK_FILE).read_text() == ""  # released: the next run takes it over silently
    assert sorted(checkpoint_retention.step_folders(root))[-1] == stopped_at

    # 3. Three resumes of one step each; keep 2 holds across them.
    for resume in range(1, RESUMES + 1):
        log = tmp_path / f"resume_{resume}.log"
        run = _start(_overrides(tiny_qwen2, train, val, out, total_steps=stopped_at + resume), env, cwd, log)
        assert run.wait(timeout=STARTUP_TIMEOUT_S) == 0, log.read_text()[-4000:]
        assert f"ExGRPO: restored {root}/global_step_{stopped_at + resume - 1} " in log.read_text()
        assert "taking it over" not in log.read_text()
        assert sorted(checkpoint_retention.step_folders(root)) == [stopped_at + resume - 1, stopped_at + resume]
    assert not list(root.glob(".trash-*"))
    assert [row["step"] for row in read_metrics(str(metrics))][-RESUMES:] == [stopped_at + r for r in range(1, RESUMES + 1)]

    # 4. No hydra run folder anywhere in the working directory.
    assert list(cwd.iterdir()) == []
