"""Learning curves, bucket distributions and a summary table from a run's per-step metrics
(verl's file logger JSONL, read with `cpu_runtime.launch.read_metrics` or any JSONL reader).
Used by the CPU demo; works on the metrics of any ExGRPO run."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over the last `window` steps (fewer at the start)."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def _series(rows: list[dict], key: str, default: float = np.nan) -> list[float]:
    return [float(row.get(key, default)) for row in rows]


def _fresh_score(row: dict) -> float:
    # verl's critic/score counts replayed rows (always reward 1); the fresh score does not.
    return float(row.get("exgrpo/fresh_score_mean", row.get("critic/score/mean", np.nan)))


def validation_score(row: dict) -> float | None:
    """verl's validation reward in a metrics row (mean over its `val-core/<source>/<var>/mean@n`
    entries), or None when the row has no validation."""
    values = [v for k, v in row.items() if k.startswith("val-core/") and "/mean@" in k]
    return float(np.mean(values)) if values else None


def training_rows(rows: list[dict]) -> list[dict]:
    """The rows of training steps (verl also logs a validation-only row at step 0)."""
    return [row for row in rows if "timing_s/step" in row]


def plot_learning_curves(runs: dict[str, list[dict]], path: str | Path, window: int = 5) -> Path:
    """Fresh-rollout reward per step (moving average) for each run, and the replay share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (reward_ax, replay_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name, all_rows in runs.items():
        rows = training_rows(all_rows)
        steps = [row["step"] for row in rows]
        reward_ax.plot(steps, moving_average([_fresh_score(r) for r in rows], window), label=name)
        replay_ax.plot(steps, _series(rows, "exgrpo/replay_fraction", 0.0), label=name)
    reward_ax.set(title=f"reward of fresh rollouts ({window}-step mean)", xlabel="step", ylabel="mean reward")
    replay_ax.set(title="replayed share of the batch", xlabel="step", ylabel="replayed rows / rows")
    for ax in (reward_ax, replay_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_bucket_distribution(rows: list[dict], group_size: int, path: str | Path) -> Path:
    """Questions per accuracy bucket k/K in the replay pool, per step (stacked), plus retired."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = training_rows(rows)
    steps = [row["step"] for row in rows]
    buckets = range(1, group_size)
    counts = np.array([_series(rows, f"exgrpo/buffer/bucket/{k}", 0.0) for k in buckets])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.stackplot(steps, counts, labels=[f"k={k}/{group_size}" for k in buckets], alpha=0.85)
    ax.plot(steps, _series(rows, "exgrpo/buffer/retired", 0.0), "k--", label="retired (K/K)")
    ax.set(title="replay pool by accuracy bucket", xlabel="step", ylabel="questions")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


TIMERS = ("gen", "exgrpo_select", "old_log_prob", "adv", "update_actor", "exgrpo_collect", "step")


def summary_table(runs: dict[str, list[dict]], window: int = 5) -> str:
    """Markdown: validation reward before and after training, training reward at the start and
    end, replay figures, mean time per stage."""
    lines = [
        "| run | steps | validation reward, before | validation reward, after | fresh reward, first {w} "
        "| fresh reward, last {w} | replayed share (mean) | pool (end) | retired (end) |".format(w=window),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, all_rows in runs.items():
        validations = [score for score in map(validation_score, all_rows) if score is not None]
        before, after = (f"{validations[0]:.3f}", f"{validations[-1]:.3f}") if len(validations) > 1 else ("–", "–")
        rows = training_rows(all_rows)
        rewards = [_fresh_score(r) for r in rows]
        lines.append(
            f"| {name} | {len(rows)} | {before} | {after} | {np.mean(rewards[:window]):.3f} | {np.mean(rewards[-window:]):.3f} "
            f"| {np.mean(_series(rows, 'exgrpo/replay_fraction', 0.0)):.3f} "
            f"| {rows[-1].get('exgrpo/buffer/pool_size', 0):.0f} | {rows[-1].get('exgrpo/buffer/retired', 0):.0f} |"
        )
    lines += ["", "Mean seconds per step and stage (the first step, with warm-up, left out):", ""]
    lines += ["| run | " + " | ".join(TIMERS) + " |", "|---|" + "---|" * len(TIMERS)]
    for name, all_rows in runs.items():
        rows = training_rows(all_rows)
        later = rows[1:] or rows
        cells = [f"{np.mean(_series(later, f'timing_s/{t}', 0.0)):.2f}" for t in TIMERS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
