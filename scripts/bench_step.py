"""Benchmark of one training step on the CPU runtime: the miniature's GRPO and ExGRPO (same
warm-started model, B = 8, K = 8) through `python -m exgrpo_verl.main`, per-phase medians.

    python scripts/bench_step.py [--steps 10] [--skip 2] [--methods grpo exgrpo] [--eval] [--profile 20]

Each method runs `--steps` steps; the first `--skip` steps (warm-up: first weight sync,
lazy imports, for ExGRPO the steps before replay) and the last one (which saves a checkpoint) are
left out of the medians. ExGRPO runs with `exgrpo.start_solve_rate=0` so that replay, and with it
the selection pass, runs from step 2 on: every measured ExGRPO step pays the full ExGRPO cost.

Printed per method (seconds, medians over the measured steps, from verl's `timing_s/*` metrics):
  step, gen (waiting for the step's rollouts: agent loop, rollout server, TransferQueue, reward;
  verl's V1 trainer times no finer, so `--profile` splits it by process), exgrpo_select (the
  selection pass), old_log_prob,
  adv, update_actor, update_weights (weights to the rollout server), exgrpo_collect, and the
  checkpoint of the last step; then the process start to the first step's metrics (the first
  step included), the ExGRPO / GRPO step ratio, and the load average.
`--eval` also times the held-out evaluation of the warm start (400 questions x 8 samples).
`--profile S` samples every Python process of the ExGRPO run with py-spy for S seconds from its
step `--steps` - 4 on (the later steps are left out of its medians) and prints each process's top
functions (own time), saved under --out/profile/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from exgrpo_verl import miniature
from exgrpo_verl.miniature import RunSpec, StudySettings

PHASES = [
    "step", "gen", "exgrpo_select", "old_log_prob", "adv",
    "update_actor", "update_weights", "exgrpo_collect",
]
PROFILE_RATE_HZ = 50
METHOD_OVERRIDES = {"grpo": [], "exgrpo": ["exgrpo.start_solve_rate=0.0"]}


def profile_after_step(steps: int) -> int:
    """The profiled run's last measured step: py-spy starts once its metrics are in."""
    return steps - 4


def phase_seconds(row: dict) -> dict[str, float]:
    """One step's phases from its metrics row (absent phases are left out)."""
    names = {phase: f"timing_s/{phase}" for phase in PHASES}
    return {phase: float(row[key]) for phase, key in names.items() if key in row}


def medians(rows: list[dict]) -> dict[str, float]:
    by_phase: dict[str, list[float]] = {}
    for row in rows:
        for phase, seconds in phase_seconds(row).items():
            by_phase.setdefault(phase, []).append(seconds)
    return {phase: statistics.median(values) for phase, values in by_phase.items()}


def run_method(method: str, settings: StudySettings, model: Path, data: dict, out: Path, profile_s: float, profile_after: int) -> dict:
    from exgrpo_verl.cpu_runtime.launch import run_training

    run = RunSpec(method, config="defaults")  # the configuration of the first (before) measurement
    run_dir = out / "runs" / method
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    overrides = miniature.run_overrides(settings, run, model, data, run_dir) + METHOD_OVERRIDES[method] + [
        "trainer.resume_mode=disable", f"trainer.save_freq={settings.steps}",
    ]
    first_step_at: list[float] = []
    profiler: list[threading.Thread] = []

    def on_step(row: dict) -> None:
        if "timing_s/step" not in row:
            return
        if not first_step_at:
            first_step_at.append(time.perf_counter())
        print(f"  [{method}] step {row['step']}: {row['timing_s/step']:.2f} s", flush=True)
        if profile_s and row["step"] == profile_after and not profiler:
            profiler.append(threading.Thread(target=profile_processes, args=(run_dir, out / "profile" / method, profile_s)))
            profiler[0].start()

    started = time.perf_counter()
    result = run_training(overrides, str(run_dir / "train.log"), str(run_dir / "metrics-0.jsonl"), timeout_s=1800, on_step=on_step)
    if result.returncode != 0:
        raise RuntimeError(f"{method} failed (exit {result.returncode}); see {run_dir / 'train.log'}")
    for thread in profiler:
        thread.join()
    rows = miniature.run_metrics(run_dir)  # reads <run_dir>/metrics-*.jsonl
    return {"rows": rows, "start_to_first_step_s": first_step_at[0] - started}


def profile_processes(run_dir: Path, folder: Path, seconds: float) -> None:
    """py-spy `raw` profiles of the run's Python processes: its trainer process (the one whose
    command line names `run_dir`) and every Ray worker below it."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = [line.split(None, 2) for line in subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines()]
    listing = [(pid, ppid, args[0] if args else "") for pid, ppid, *args in listing]
    tree = {pid for pid, _, args in listing if "exgrpo_verl.main" in args and str(run_dir) in args}
    for _ in range(4):  # trainer -> raylet -> workers
        tree |= {pid for pid, ppid, _ in listing if ppid in tree}
    targets = {}
    for pid, _, args in listing:
        if pid in tree and ("exgrpo_verl.main" in args or args.startswith("ray::")):
            targets[pid] = args.split()[0].replace("ray::", "").replace("/", "_")[:40] or pid
    spy = shutil.which("py-spy") or str(Path(os.sys.executable).with_name("py-spy"))
    jobs = [
        subprocess.Popen([spy, "record", "--nonblocking", "-p", pid, "-d", str(int(seconds)), "-r", str(PROFILE_RATE_HZ), "-f", "raw",
                          "-o", str(folder / f"{name}-{pid}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for pid, name in targets.items()
    ]
    for job in jobs:
        job.wait()


# Leaf frames where a process waits for work (Ray's task loop, event-loop selects, polls).
IDLE_FRAMES = ("Worker.main_loop", "EpollSelector.select", "Condition.wait", "Poller.poll", "_wait_for_next_poll")


def top_functions(raw_file: Path, count: int = 8) -> tuple[int, list[tuple[str, int]]]:
    """(busy samples, [(function, own samples)]) from a py-spy raw (collapsed stacks) file,
    samples waiting in IDLE_FRAMES left out."""
    own: Counter = Counter()
    for line in raw_file.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        if stack and not leaf.startswith(IDLE_FRAMES):
            own[leaf] += int(samples)
    return sum(own.values()), own.most_common(count)


def evaluation_seconds(model: Path, data: dict, out: Path) -> float:
    cache = out / "eval-start.json"
    cache.unlink(missing_ok=True)
    started = time.perf_counter()
    miniature.evaluate_model(model, data["test"], 8, 64, cache)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip", type=int, default=2, help="first steps left out of the medians")
    parser.add_argument("--methods", nargs="+", default=["grpo", "exgrpo"], choices=sorted(METHOD_OVERRIDES))
    parser.add_argument("--eval", action="store_true", help="time the 3,200-sample held-out evaluation")
    parser.add_argument("--profile", type=float, default=0, help="py-spy seconds per process during the ExGRPO run")
    parser.add_argument("--out", default="outputs/bench_step")
    args = parser.parse_args()
    if args.steps < args.skip + (5 if args.profile else 2):
        raise SystemExit(f"--steps {args.steps}: needs at least --skip + 2 (+ 3 with --profile)")

    out = Path(args.out).resolve()
    settings = replace(StudySettings(), steps=args.steps, checkpoints=1)
    data, models = miniature.prepare(settings, out, {"medium"})
    data = data["medium"]
    report = {"load_average_start": os.getloadavg(), "methods": {}}
    for method in args.methods:
        profile_s = args.profile if method == "exgrpo" else 0
        # py-spy slows what it samples: the steps after it starts are left out of the medians.
        last_measured = profile_after_step(args.steps) if profile_s else args.steps - 1
        result = run_method(method, settings, models["medium"], data, out, profile_s, last_measured)
        measured = [row for row in result["rows"] if args.skip < row["step"] <= last_measured]
        last = [row for row in result["rows"] if row["step"] == args.steps]
        report["methods"][method] = {
            "medians": medians(measured),
            "checkpoint_s": last[0].get("timing_s/save_checkpoint") if last else None,
            "start_to_first_step_s": result["start_to_first_step_s"],
            "measured_steps": len(measured),
        }
    if args.eval:
        report["eval_3200_s"] = evaluation_seconds(models["medium"], data, out)
    report["load_average_end"] = os.getloadavg()
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print_report(report, out / "profile")


def print_report(report: dict, profile_dir: Path) -> None:
    methods = report["methods"]
    print(f"\nload average at start {report['load_average_start']}, at end {report['load_average_end']}")
    print("| phase (median s) | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    for phase in PHASES:
        print(f"| {phase} | " + " | ".join(f"{m['medians'].get(phase, float('nan')):.3f}" for m in methods.values()) + " |")
    print("| checkpoint (last step) | " + " | ".join(f"{m['checkpoint_s'] or float('nan'):.3f}" for m in methods.values()) + " |")
    print("| process start to first step done | " + " | ".join(f"{m['start_to_first_step_s']:.1f}" for m in methods.values()) + " |")
    if {"grpo", "exgrpo"} <= set(methods):
        print(f"ExGRPO / GRPO step: {methods['exgrpo']['medians']['step'] / methods['grpo']['medians']['step']:.3f}")
    if "eval_3200_s" in report:
        print(f"held-out evaluation, 400 questions x 8: {report['eval_3200_s']:.1f} s")
    for raw in sorted(profile_dir.glob("*/*.txt")):
        busy, top = top_functions(raw)
        if busy:
            print(f"\n{raw.relative_to(profile_dir)}: busy {busy / PROFILE_RATE_HZ:.1f} s")
            for function, samples in top:
                print(f"  {100 * samples / busy:5.1f}%  {function}")


if __name__ == "__main__":
    main()
