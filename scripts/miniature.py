"""The miniature study: GRPO vs ExGRPO and the other replay strategies, across regimes, from a
warm-started tiny reasoner, through verl's real trainer on the CPU (exgrpo_verl/miniature.py has
the pieces). Runs use the release's settings (`+preset=release`) unless a plan says otherwise.

    python scripts/miniature.py --plan main            # GRPO and ExGRPO, 3 seeds, medium start, release settings
    python scripts/miniature.py --plan defaults        # the same under the project's defaults
    python scripts/miniature.py --plan screen          # every strategy in every regime, seed 0 (--regimes to pick)
    python scripts/miniature.py --plan ablations       # seven ablations, seed 0
    python scripts/miniature.py --plan confirm --regimes scarce --methods grpo zero_variance_fill --seeds 1 2
                                                       # more seeds for a screened cell that looked promising
    python scripts/miniature.py --plan main --quick    # a smoke run in a few minutes
    python scripts/miniature.py --report-only          # tables and plots from whatever has finished
    python scripts/miniature.py --from-summaries docs/results/miniature/summaries --out docs/results/miniature
                                                       # the results page's tables and plots from committed summaries
    python scripts/miniature.py --plan ablations --methods rho_0.25 rho_0.75 --steps 80 --out outputs/miniature/short
                                                       # some ablations only, on a shorter budget
    python scripts/miniature.py --plan main --seeds 0 --batch 32 --steps 20 --out outputs/miniature/b32
                                                       # B = 32 at the same generated rollouts (a study of its own:
                                                       # the tables compare runs of one batch size)

Every run checkpoints at 25/50/75/100% of its budget and resumes from its latest checkpoint, so
the study can be stopped and started again; finished runs and evaluations are reused. After
each run the tables (`<out>/tables.md`) and plots are rewritten from everything finished so far,
and each finished run's summary is written to `<out>/summaries/` (small JSON files: commit them
with a results page, which `--from-summaries` then regenerates without the runs or models).
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from exgrpo_verl import miniature
from exgrpo_verl.cpu_runtime import THREADS_ENV, rollout_threads
from exgrpo_verl.miniature import REGIMES, STRATEGY_METHODS, RunSpec, StudySettings

ABLATIONS = ["no_shaping", "carry_fresh", "random_trajectory", "uniform_questions", "no_delayed_start", "rho_0.25", "rho_0.75"]


def plan_runs(plan: str, seeds: list[int], regimes: list[str]) -> list[RunSpec]:
    """The runs of a plan, in the order they run (RLEP after the ExGRPO run whose experience it replays)."""
    if plan == "main":
        return [RunSpec(method, seed) for seed in seeds for method in ("grpo", "exgrpo")]
    if plan == "defaults":
        return [RunSpec(method, seed, config="defaults") for seed in seeds for method in ("grpo", "exgrpo")]
    if plan == "ablations":
        return [RunSpec(method, seeds[0]) for method in ABLATIONS]
    if plan == "screen":
        return [RunSpec(method, seeds[0], regime) for regime in regimes for method in ("grpo", *STRATEGY_METHODS)]
    if plan == "confirm":
        return [RunSpec(method, seed, regime) for seed in seeds for regime in regimes for method in ("grpo", *STRATEGY_METHODS)]
    raise SystemExit(f"--plan {plan!r}: expected main, defaults, screen, confirm or ablations")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", nargs="+", default=["main"], help="main, defaults, screen, confirm, ablations (run in the order given)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--methods", nargs="+", default=None, help="run only these methods of the plans")
    parser.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES), help="the screen plan's regimes")
    parser.add_argument("--steps", type=int, default=None, help="update steps per run (default: the study's 160)")
    parser.add_argument("--batch", type=int, default=None, help="questions per step, B (default: the study's 8)")
    parser.add_argument("--out", default="outputs/miniature")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny warm start, 4 steps of 4 x 4")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--from-summaries", default=None, help="render tables and plots into --out from this summaries folder only")
    args = parser.parse_args(argv)
    if args.from_summaries:
        out = Path(args.out)
        text = miniature.render_tables(*miniature.load_summaries(Path(args.from_summaries)), out)
        print(text or f"{args.from_summaries}: no cell with a finished GRPO run")
        return

    settings = StudySettings()
    if args.quick:
        settings = replace(settings, batch=4, rollouts=4, steps=4, checkpoints=2, train_per_level=8, test_per_level=4, eval_samples=2)
    if args.steps:
        settings = replace(settings, steps=args.steps)
    if args.batch:
        settings = replace(settings, batch=args.batch)
    out = Path(args.out).resolve()
    runs = [run for plan in args.plan for run in plan_runs(plan, args.seeds, args.regimes)
            if args.methods is None or run.method in args.methods]
    regimes = {"medium"} | {run.regime for run in runs} | {path.name for path in (out / "data").glob("*") if path.name in REGIMES}
    print(f">> preparing task data and warm starts ({', '.join(sorted(regimes))})", flush=True)
    data, models = miniature.prepare(settings, out, regimes, quick=args.quick)

    started = time.perf_counter()
    if args.parallel > 1:  # split the cores between the runs: oversubscribed OpenMP threads spin against each other
        import torch

        os.environ.setdefault(THREADS_ENV, str(max(1, (os.cpu_count() or 1) // args.parallel)))
        torch.set_num_threads(rollout_threads())  # this process's evaluations (a bad value is refused here)
    if not args.report_only:
        submitted = {}

        def execute(run: RunSpec) -> None:
            if run.replays_from and run.replays_from.name in submitted:  # --parallel: wait for the experience it replays
                submitted[run.replays_from.name].result()
            print(f">> {run.name}: {settings.steps} steps of {settings.batch} questions x {settings.rollouts} rollouts", flush=True)
            run_dir = miniature.train(settings, run, models[run.start], data[run.regime], out, on_step=miniature.progress_printer(run, settings.steps))
            result = miniature.evaluate_run(settings, run_dir, data[run.regime])
            print(f">> {run.name}: held-out accuracy by step {({s: round(r['accuracy'], 3) for s, r in result.items()})}", flush=True)
            miniature.write_tables(settings, out, data, models)

        with ThreadPoolExecutor(args.parallel) as pool:
            for run in runs:
                submitted[run.name] = pool.submit(execute, run)
            for future in submitted.values():
                future.result()
    text = miniature.write_tables(settings, out, data, models)
    print(text or "no finished GRPO run yet")
    print(f">> {time.perf_counter() - started:.0f} s; tables: {out / 'tables.md'}")


if __name__ == "__main__":
    main()
