"""One training step with verl's vLLM rollout (vLLM's CPU build) vs the project's `hf` rollout
server, on this machine: GRPO, B x K = 8 x 8, the tiny Qwen2 with vLLM-compatible heads, the toy
task, 32-token answers. Three steps each; step 1 includes the first weight sync into a fresh
engine, so steps 2 and 3 are reported with verl's own timers (timing_s/step, timing_s/gen).
This compares two CPU rollouts on a CPU; CPU vLLM is not a GPU benchmark.

    .venv-vllm/bin/python scripts/bench_rollout_step.py --out outputs/bench_rollout_step
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from exgrpo_verl.cpu_runtime.launch import cpu_run_overrides, read_metrics, run_training
from exgrpo_verl.tasks import char_hunt
from exgrpo_verl.tiny_models import VLLM_CPU_QWEN2, build_tiny_model

TIMERS = ("timing_s/step", "timing_s/gen", "timing_s/update_weights", "timing_s/update_actor", "timing_s/old_log_prob")


def run(rollout: str, model: Path, train: Path, val: Path, out: Path, batch: int, k: int, steps: int) -> dict:
    overrides = cpu_run_overrides(str(model), str(train), str(val), batch_size=batch, rollouts_per_question=k,
                                  max_response_length=32, total_steps=steps, output_dir=str(out / rollout),
                                  reward_path=char_hunt.__file__, rollout=rollout) + ["exgrpo.replay_ratio=0"]
    started = time.perf_counter()
    result = run_training(overrides, str(out / f"{rollout}.log"), str(out / f"{rollout}.jsonl"))
    if result.returncode != 0:
        raise SystemExit(f"the {rollout} run failed: see {out / f'{rollout}.log'}")
    rows = read_metrics(str(out / f"{rollout}.jsonl"))
    return {"wall_s": round(time.perf_counter() - started, 1),
            "steps": [{"step": row["step"], **{t: round(row[t], 2) for t in TIMERS if t in row}} for row in rows]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=f"{tempfile.gettempdir()}/bench_rollout_step")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_tiny_model(VLLM_CPU_QWEN2, out / "tiny-qwen2-head32")
    train = char_hunt.write_parquet(out / "train.parquet", 64, seed=0)
    val = char_hunt.write_parquet(out / "val.parquet", 8, seed=1, split="test", first_index=10_000)
    results = {rollout: run(rollout, model, train, val, out, args.batch, args.k, args.steps) for rollout in ("hf", "vllm")}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
