"""Fault injection: SIGKILL a CPU ExGRPO training again and again, resume it, check every resume.

    python scripts/fault_injection.py --kills 12 --save-kills 3 --steps 15 --out outputs/fault_injection

Runs verl's real trainer on the CPU (tiny Qwen2, toy task) with a checkpoint every step and
`trainer.resume_mode=auto`. Each attempt is killed with SIGKILL (the whole process tree: the
driver, Ray and its workers) either at a random moment or inside a checkpoint save (once
`global_step_{M}/exgrpo/`, M > N, exists while verl's tracker still says N), then restarted. After each
restart the harness checks, from the resumed run's log line "ExGRPO: restored <folder> (...,
state sha256 <digest>)", that it loaded the latest complete checkpoint at the moment of the
kill and that the ExGRPO state it loaded is hash-equal to what was on disk then (the digest of
the state's manifest, which covers every file of the state by SHA-256). It also reloads that
checkpoint offline, saves it again and compares every buffer file byte for byte (the load is
lossless). The run must finish. Ends with a table: kill, phase, step killed in, checkpoint
resumed, hash checks, steps lost.

With --experience-log the run keeps the experience log (exgrpo.experience_log, with the buffer's
SHA-256 recorded after every step). After each kill the harness reads the log's last intact
record (the last completed step) and checks that the resumed run's buffer, after replaying the
log ("ExGRPO: experience log ...: ... buffer sha256 <digest>"), is hash-equal to the buffer at
that step: no experience lost. --between-kills lands kills right after such a logged step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from exgrpo_verl.cpu_runtime.launch import cpu_env, cpu_run_overrides, read_metrics
from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig
from exgrpo_verl.experience.journal import read_log
from exgrpo_verl.tasks import char_hunt
from exgrpo_verl.tiny_models import build_tiny_model
from exgrpo_verl.verl_adapters import checkpoint
from exgrpo_verl.verl_adapters.trainer import EXPERIENCE_LOG

RESTORED = re.compile(r"ExGRPO: restored (\S+) \(replay (?:on|off), state sha256 ([0-9a-f]{64})\)")
LOG_REPLAYED = re.compile(r"ExGRPO: experience log \S+: [^\n]*?buffer sha256 ([0-9a-f]{64}|-)")
MARK_ENV = "EXGRPO_FAULT_INJECTION_RUN"  # set in every process of an attempt, to kill exactly those


@dataclass
class Kill:
    number: int
    phase: str  # "random", "in save" or "between checkpoints"
    killed_at_step: int  # the step being run when killed (last logged step + 1)
    latest_complete: int  # verl's tracker at the kill: the checkpoint a resume must load
    digest: str | None  # state manifest SHA-256 of that checkpoint
    resumed_from: int | None = None
    digest_equal: bool | None = None
    reload_equal: bool | None = None
    log_step: int | None = None  # with the experience log: the last step it holds intact at the kill
    log_digest: str | None = None  # the buffer's SHA-256 after that step, as the killed run recorded it
    log_equal: bool | None = None  # the resumed buffer (checkpoint + log) is hash-equal to it
    log_max_step: int | None = None  # the highest step the log holds (a resumed run re-logs lower ones)

    @property
    def steps_lost(self) -> int:
        """Completed steps whose results were lost (run again after the resume)."""
        return self.killed_at_step - 1 - self.latest_complete

    @property
    def experience_steps_lost(self) -> int:
        """Completed steps whose experience the resumed buffer lacks (the log keeps them)."""
        return max(self.killed_at_step - 1 - max(self.latest_complete, self.log_max_step or 0), 0)


def latest_complete(root: Path) -> int:
    tracker = root / "latest_checkpointed_iteration.txt"
    return int(tracker.read_text().strip()) if tracker.exists() else 0


def saving(root: Path, since: float) -> bool:
    """A save is under way: this attempt wrote state into a later step's folder than verl's
    tracker names (a killed save's folder from an earlier attempt is older)."""
    complete = latest_complete(root)
    return any(int(folder.parent.name.rsplit("_", 1)[1]) > complete and folder.stat().st_mtime > since
               for folder in root.glob(f"global_step_*/{checkpoint.STATE_DIR}"))


def last_logged_step(root: Path) -> tuple[int | None, str | None, int | None]:
    """(step, buffer SHA-256) of the experience log's last intact record and the highest step it
    holds, or Nones."""
    path = root / EXPERIENCE_LOG
    records = read_log(path).records if path.exists() else []
    return (records[-1].step, records[-1].buffer_sha256, max(r.step for r in records)) if records else (None, None, None)


def logged_past_checkpoint(root: Path, since: float) -> bool:
    """This attempt has logged a completed step that the latest complete checkpoint does not hold."""
    path = root / EXPERIENCE_LOG
    if not path.exists() or path.stat().st_mtime <= since:
        return False
    step, _, _ = last_logged_step(root)
    return step is not None and step > latest_complete(root)


def reload_is_lossless(step_folder: Path, group_size: int) -> bool:
    """Load the buffer of a checkpoint, save it again, compare every file byte for byte."""
    original = step_folder / checkpoint.STATE_DIR / checkpoint.EXPERIENCE_DIR
    with tempfile.TemporaryDirectory() as scratch:
        ExperienceBuffer.load(original, ExperienceConfig(group_size=group_size)).save(Path(scratch) / "again")
        return all((original / name).read_bytes() == (Path(scratch) / "again" / name).read_bytes()
                   for name in os.listdir(original))


def kill_attempt(process: subprocess.Popen, mark: str) -> None:
    """SIGKILL every process carrying this attempt's mark (Ray daemons may leave the process group)."""
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if f"{MARK_ENV}={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)
        except (OSError, PermissionError):
            continue  # gone already, or not ours
    process.wait()


def run(args) -> list[Kill]:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model()
    train = char_hunt.write_parquet(out / "data" / "train.parquet", 64, seed=0)
    val = char_hunt.write_parquet(out / "data" / "val.parquet", 8, seed=1, split="test", first_index=10_000)
    root = out / "checkpoints"
    overrides = [o for o in cpu_run_overrides(
        str(model), str(train), str(val), batch_size=8, rollouts_per_question=args.k, max_response_length=32,
        total_steps=args.steps, output_dir=str(out), reward_path=char_hunt.__file__,
    ) if not o.startswith(("trainer.resume_mode=", "trainer.logger="))] + [
        "trainer.resume_mode=auto", f"trainer.save_freq={args.save_freq}", "trainer.logger=[console,file]",
        "exgrpo.start_solve_rate=0.1", "exgrpo.sampler_poll_interval_s=0.05", "actor_rollout_ref.actor.optim.lr=1e-3",
        *(["exgrpo.experience_log=true", "exgrpo.experience_log_digests=true"] if args.experience_log else []),
        *args.override,
    ]
    rng = random.Random(args.seed)
    chosen = rng.sample(range(1, args.kills + 1), args.save_kills + args.between_kills)
    phase_of = {number: "in save" if i < args.save_kills else "between checkpoints" for i, number in enumerate(chosen)}
    kills: list[Kill] = []
    for attempt in range(1, args.kills + args.max_clean_attempts + 1):
        mark = uuid.uuid4().hex
        log_path = out / f"attempt_{attempt:02d}.log"
        env = {**cpu_env(str(out / "metrics.jsonl")), MARK_ENV: mark}
        with open(log_path, "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "exgrpo_verl.main", *overrides], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if kills:
            check_resume(kills[-1], log_path, process, args.k, args.experience_log)
        if len(kills) < args.kills:
            number = len(kills) + 1
            phase = phase_of.get(number, "random")
            started = time.time()
            deadline = time.monotonic() + (rng.uniform(*args.random_window) if phase == "random" else args.attempt_timeout)
            while process.poll() is None and time.monotonic() < deadline:
                if phase == "in save" and saving(root, started) or phase == "between checkpoints" and logged_past_checkpoint(root, started):
                    break
                time.sleep(0.02 if phase == "in save" else 0.2)
            if process.poll() is None:
                complete = latest_complete(root)
                logged = read_metrics(str(out / "metrics.jsonl")) if (out / "metrics.jsonl").exists() else []
                kill = Kill(number, phase, (logged[-1]["step"] if logged else 0) + 1,
                            complete, checkpoint.state_digest(root / f"global_step_{complete}"))
                kill_attempt(process, mark)
                if args.experience_log:
                    kill.log_step, kill.log_digest, kill.log_max_step = last_logged_step(root)
                kills.append(kill)
                print(f"kill {number}: {kill.phase}, during step {kill.killed_at_step}, latest complete {complete}, "
                      f"last logged step {kill.log_step}", flush=True)
                continue
        if process.wait() != 0:
            raise SystemExit(f"attempt {attempt} failed on its own (exit {process.returncode}); see {log_path}")
        if latest_complete(root) >= args.steps:
            break
    return kills


def check_resume(kill: Kill, log_path: Path, process: subprocess.Popen, group_size: int, experience_log: bool) -> None:
    """Wait for the resumed run's restore lines; compare them with what was on disk at the kill."""
    if kill.latest_complete == 0:
        kill.resumed_from, kill.digest_equal, kill.reload_equal = 0, True, True  # nothing to resume: a fresh start
    else:
        found = wait_for(RESTORED, log_path, process)
        kill.resumed_from = int(found.group(1).rsplit("global_step_", 1)[1])
        kill.digest_equal = found.group(2) == kill.digest
        kill.reload_equal = reload_is_lossless(Path(found.group(1)), group_size)
    if experience_log:
        replayed = wait_for(LOG_REPLAYED, log_path, process).group(1)
        kill.log_equal = replayed == kill.log_digest if kill.log_step is not None else replayed == "-"


def wait_for(pattern: re.Pattern, log_path: Path, process: subprocess.Popen) -> re.Match:
    while process.poll() is None and not pattern.search(log_path.read_text(errors="replace")):
        time.sleep(0.2)
    found = pattern.search(log_path.read_text(errors="replace"))
    if found is None:
        raise SystemExit(f"the resumed run exited without the line {pattern.pattern!r}; see {log_path}")
    return found


def table(kills: list[Kill], experience_log: bool) -> str:
    columns = ["kill", "phase", "killed in step", "latest complete", "resumed from", "state hash equal",
               "reload lossless", "completed steps lost"]
    if experience_log:
        columns += ["last logged step", "buffer = buffer at that step", "experience steps lost"]
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for k in kills:
        cells = [k.number, k.phase, k.killed_at_step, k.latest_complete, k.resumed_from, k.digest_equal, k.reload_equal,
                 k.steps_lost]
        if experience_log:
            cells += [k.log_step, k.log_equal, k.experience_steps_lost]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--save-kills", type=int, default=3, help="how many of the kills land inside a checkpoint save")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--k", type=int, default=4, help="rollouts per question")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-freq", type=int, default=1, help="checkpoint every this many steps")
    parser.add_argument("--experience-log", action="store_true", help="keep the experience log and check it on every resume")
    parser.add_argument("--between-kills", type=int, default=0,
                        help="with --experience-log: kills right after a step that only the log holds (not a checkpoint)")
    parser.add_argument("--random-window", type=float, nargs=2, default=(40.0, 160.0),
                        help="a random kill lands this many seconds after the attempt starts")
    parser.add_argument("--attempt-timeout", type=float, default=1800.0)
    parser.add_argument("--max-clean-attempts", type=int, default=3, help="restarts allowed after the last kill")
    parser.add_argument("--out", default="outputs/fault_injection")
    parser.add_argument("override", nargs="*", help="extra hydra overrides")
    args = parser.parse_args(argv)
    if args.between_kills and not args.experience_log:
        parser.error("--between-kills needs --experience-log")
    if args.save_kills + args.between_kills > args.kills:
        parser.error("--save-kills + --between-kills must not exceed --kills")
    kills = run(args)
    report = table(kills, args.experience_log)
    Path(args.out, "table.md").write_text(report + "\n")
    Path(args.out, "kills.json").write_text(json.dumps([k.__dict__ for k in kills], indent=1))
    print(report)
    complete = latest_complete(Path(args.out).resolve() / "checkpoints") >= args.steps
    ok = complete and all(k.digest_equal and k.reload_equal and k.resumed_from == k.latest_complete
                          and (k.log_equal or not args.experience_log) for k in kills)
    if len(kills) < args.kills:
        print(f"only {len(kills)} of --kills {args.kills} happened before the run finished: raise --steps")
        ok = False
    print(f"run completed: {complete}; every resume loaded the latest complete checkpoint, hash-equal: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
