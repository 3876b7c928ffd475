"""What the exgrpo plugin adds to a bare `import verl`: time, peak memory, modules loaded.

verl loads every `verl.plugins` entry point in each process that imports it: the driver,
the task runner, FSDP workers and vLLM's workers alike. This measures, in fresh processes,
`import verl` with no plugin (VERL_USE_EXTERNAL_PLUGINS=none) against `import verl` with
ours alone (VERL_USE_EXTERNAL_PLUGINS=exgrpo), and lists which heavy modules each left loaded.

    python scripts/bench_plugin_import.py               # GPU processes (no CPU runtime)
    python scripts/bench_plugin_import.py --cpu-runtime # with EXGRPO_CPU_RUNTIME=1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

# Modules a worker that only generates (vLLM) or only computes (FSDP) should not pay for.
HEAVY_MODULES = [
    "verl.trainer.ppo.v1.trainer_base",
    "verl.trainer.ppo.core_algos",
    "transfer_queue",
    "exgrpo_verl.verl_adapters.trainer",
    "exgrpo_verl.verl_adapters.advantage",
]

PROBE = f"""
import json, resource, sys, time
start, cpu_start = time.perf_counter(), time.process_time()
import verl
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
print(json.dumps({{
    "seconds": seconds,
    "cpu_seconds": cpu_seconds,
    "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "modules": len(sys.modules),
    "heavy": [name for name in {HEAVY_MODULES!r} if name in sys.modules],
}}))
"""


def measure(plugins: str, cpu_runtime: bool, repeats: int, warm_up: bool) -> dict:
    """Median over `repeats` fresh interpreters (after one warm-up run for the disk cache, if `warm_up`)."""
    env = {key: value for key, value in os.environ.items() if key != "EXGRPO_CPU_RUNTIME"}
    env["VERL_USE_EXTERNAL_PLUGINS"] = plugins
    if cpu_runtime:
        env["EXGRPO_CPU_RUNTIME"] = "1"
    runs = []
    for _ in range(repeats + int(warm_up)):
        result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
    runs = runs[int(warm_up):]
    return {
        "seconds": statistics.median(run["seconds"] for run in runs),
        "cpu_seconds": statistics.median(run["cpu_seconds"] for run in runs),
        "max_rss_mb": statistics.median(run["max_rss_mb"] for run in runs),
        "modules": statistics.median(run["modules"] for run in runs),
        "heavy": runs[-1]["heavy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="fresh interpreters per case (median reported)")
    parser.add_argument("--cpu-runtime", action="store_true", help="measure with EXGRPO_CPU_RUNTIME=1")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the unmeasured first run (a busy machine)")
    args = parser.parse_args()

    bare = measure("none", args.cpu_runtime, args.repeats, not args.no_warm_up)
    plugin = measure("exgrpo", args.cpu_runtime, args.repeats, not args.no_warm_up)
    print(f"`import verl`, median of {args.repeats} fresh processes{' (CPU runtime on)' if args.cpu_runtime else ''}:")
    print("| case | wall s | CPU s | peak RSS (MB) | modules | heavy modules loaded |")
    print("|---|---|---|---|---|---|")
    for name, row in (("verl alone", bare), ("verl + exgrpo plugin", plugin)):
        heavy = ", ".join(row["heavy"]) or "none"
        print(f"| {name} | {row['seconds']:.2f} | {row['cpu_seconds']:.2f} | {row['max_rss_mb']:.0f} | {row['modules']:.0f} | {heavy} |")
    print(
        f"| plugin adds | {plugin['seconds'] - bare['seconds']:+.2f} | {plugin['cpu_seconds'] - bare['cpu_seconds']:+.2f} "
        f"| {plugin['max_rss_mb'] - bare['max_rss_mb']:+.0f} | {plugin['modules'] - bare['modules']:+.0f} | |"
    )
    print("CPU seconds are the process's own (user + system); wall seconds also count waiting on a busy machine.")


if __name__ == "__main__":
    main()
