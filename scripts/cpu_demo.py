"""The CPU demo (`make demo`): a short version of the miniature study. A tiny Qwen2 is warm-started
on chain arithmetic (supervised, cached after the first time), then trained from that start with
ExGRPO and with its on-policy GRPO baseline, through verl's real trainer on this machine. The
script prints each step, evaluates held-out accuracy before, halfway and after, and ends with
the table and plots under outputs/demo/.

    python scripts/cpu_demo.py [--steps 20] [--out outputs/demo]

The full study (3 seeds, 160 steps, ablations, start strengths) is scripts/miniature.py.
"""

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from exgrpo_verl import miniature
from exgrpo_verl.miniature import RunSpec, StudySettings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="update steps per method (even)")
    parser.add_argument("--out", default="outputs/demo")
    args = parser.parse_args()

    started = time.perf_counter()
    settings = replace(StudySettings(), steps=args.steps, checkpoints=2, test_per_level=25, eval_samples=4)
    out = Path(args.out).resolve()
    print(">> warm start (a tiny Qwen2 taught chain arithmetic; cached after the first run) and task data", flush=True)
    data, models = miniature.prepare(settings, out, {"medium"})
    runs = [RunSpec("exgrpo", config="defaults"), RunSpec("grpo", config="defaults")]
    print(f">> training ExGRPO and GRPO side by side: {settings.steps} steps of {settings.batch} questions x {settings.rollouts} rollouts", flush=True)

    def execute(run: RunSpec) -> None:
        run_dir = miniature.train(settings, run, models["medium"], data["medium"], out, on_step=miniature.progress_printer(run, settings.steps))
        print(f">> {run.name}: evaluating its checkpoints on {settings.test_per_level * len(settings.task.levels)} held-out questions x {settings.eval_samples}", flush=True)
        miniature.evaluate_run(settings, run_dir, data["medium"])

    # Two runs at a time: each spends much of a step waiting on its pipeline, so they share 2 cores well.
    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(execute, run) for run in runs]:
            future.result()
    text = miniature.write_tables(settings, out, data, models, title="CPU demo")
    print("\n" + (text or ""))
    print(f">> {time.perf_counter() - started:.0f} s; table {out / 'tables.md'}, plots {out / 'accuracy_medium_defaults.png'}, {out / 'buckets_medium_defaults.png'}")


if __name__ == "__main__":
    main()
