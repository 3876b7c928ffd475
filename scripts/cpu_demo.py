"""The CPU demo (`make demo`): ExGRPO and its on-policy GRPO baseline, side by side, through
verl's real trainer on this machine. A tiny Qwen2 is built locally and trained on the toy
character-hunt task; the script prints each step, then writes learning curves, the replay
pool's bucket distribution and a summary table (with validation before and after) under
outputs/demo/.

    python scripts/cpu_demo.py [--steps 20] [--batch 8] [--rollouts 4] [--out outputs/demo]
"""

import argparse
from pathlib import Path

from exgrpo_verl.cpu_runtime.launch import cpu_run_overrides, read_metrics, run_training
from exgrpo_verl.tasks import char_hunt
from exgrpo_verl.tiny_models import TinyModelSpec, build_tiny_model
from exgrpo_verl.training_report import plot_bucket_distribution, plot_learning_curves, summary_table, validation_score


def print_step(name: str, total: int):
    def show(row: dict) -> None:
        if validation_score(row) is not None:
            print(f"  [{name}] validation reward (20 questions x 8 samples) at step {row['step']}: {validation_score(row):.3f}", flush=True)
        if "timing_s/step" not in row:
            return
        replay = "on " if row.get("exgrpo/replay_active") else "off"
        print(
            f"  [{name}] step {row['step']:>3}/{total}  fresh reward {row.get('exgrpo/fresh_score_mean', row['critic/score/mean']):.3f}  "
            f"replay {replay if 'exgrpo/replay_active' in row else '-- '}  "
            f"replayed {row.get('exgrpo/replayed_questions', 0):.0f}  pool {row.get('exgrpo/buffer/pool_size', 0):.0f}  "
            f"retired {row.get('exgrpo/buffer/retired', 0):.0f}  {row['timing_s/step']:.1f}s",
            flush=True,
        )

    return show


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8, help="questions per step (B)")
    parser.add_argument("--rollouts", type=int, default=4, help="rollouts per question (K)")
    parser.add_argument("--start-solve-rate", type=float, default=0.2)
    parser.add_argument("--lr", type=float, default=1e-3, help="a tiny random model needs large steps to move in 20 steps")
    parser.add_argument("--out", default="outputs/demo")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(">> building the tiny model and the toy task data")
    model = build_tiny_model(TinyModelSpec(family="qwen2"))
    train = char_hunt.write_parquet(out / "data" / "train.parquet", args.steps * args.batch * 2, seed=0)
    val = char_hunt.write_parquet(out / "data" / "val.parquet", 20, seed=1, split="test", first_index=100_000)

    runs = {}
    for name, replay_ratio in (("ExGRPO", 0.5), ("GRPO (on-policy)", 0.0)):
        run_dir = out / ("exgrpo" if replay_ratio else "grpo")
        run_dir.mkdir(exist_ok=True)
        overrides = cpu_run_overrides(
            str(model), str(train), str(val), batch_size=args.batch, rollouts_per_question=args.rollouts,
            max_response_length=32, total_steps=args.steps, output_dir=str(run_dir), reward_path=char_hunt.__file__,
        ) + [
            f"exgrpo.replay_ratio={replay_ratio}",
            f"exgrpo.start_solve_rate={args.start_solve_rate}",
            "exgrpo.sampler_poll_interval_s=0.05",
            f"actor_rollout_ref.actor.optim.lr={args.lr}",
            "data.seed=0",
            # Validation before and after training on held-out questions, 8 samples each: the fair
            # comparison (ExGRPO retires solved questions, so its later training questions are harder).
            "trainer.val_before_train=True",
            f"trainer.test_freq={args.steps}",
            "actor_rollout_ref.rollout.val_kwargs.n=8",
            f"trainer.experiment_name={run_dir.name}",
        ]
        print(f">> training {name}: {args.steps} steps of {args.batch} questions x {args.rollouts} rollouts (log: {run_dir}/train.log)")
        result = run_training(overrides, str(run_dir / "train.log"), str(run_dir / "metrics.jsonl"), on_step=print_step(name, args.steps))
        if result.returncode != 0:
            raise SystemExit(f"{name} failed (exit {result.returncode}); see {run_dir}/train.log")
        runs[name] = read_metrics(str(run_dir / "metrics.jsonl"))

    curves = plot_learning_curves(runs, out / "learning_curves.png")
    buckets = plot_bucket_distribution(runs["ExGRPO"], args.rollouts, out / "buckets.png")
    table = summary_table(runs)
    (out / "summary.md").write_text(f"# CPU demo: ExGRPO vs GRPO on the toy task\n\n{table}\n\n![curves](learning_curves.png)\n\n![buckets](buckets.png)\n")
    print("\n" + table)
    print(f"\n>> plots: {curves}, {buckets}\n>> table: {out / 'summary.md'}")


if __name__ == "__main__":
    main()
