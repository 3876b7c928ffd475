"""The paper's comparison in miniature: GRPO vs ExGRPO (and ablations) from a warm-started tiny
reasoner, through verl's real trainer on the CPU runtime.

A *run* is one training of one method from one warm start with one seed: `python -m
exgrpo_verl.main` with the CPU runtime, checkpoints (model, optimiser, ExGRPO state) at fixed
fractions of the budget, so a stopped run resumes where it stopped (`trainer.resume_mode=auto`).
Each checkpoint's HF model is then evaluated on the held-out set (avg@k at temperature 1 with
the release's reward), once, cached as JSON beside it. `study_table` and the plots read runs
back from their folders: a study can be split over many invocations.

Used by `scripts/miniature.py` (the study) and `scripts/cpu_demo.py` (`make demo`, a short
version).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from exgrpo_verl.tasks import arithmetic
from exgrpo_verl.tasks.arithmetic import ArithmeticTask
from exgrpo_verl.tasks.warm_start import STRENGTHS, WarmStartSpec, warm_start

# Methods as exgrpo overrides over the run's configuration (CONFIGS). GRPO is ExGRPO minus replay:
# the same loss, aggregation and update rules, replay_ratio 0. The last three are the replay
# strategies of exgrpo_verl/strategies.py (docs/strategies.md), each at its documented defaults.
METHODS: dict[str, list[str]] = {
    "grpo": ["exgrpo.replay_ratio=0"],
    "exgrpo": [],
    "uniform_questions": ["exgrpo.experience.question_sampling=uniform"],
    "random_trajectory": ["exgrpo.experience.selection_metric=random"],
    "no_shaping": ["exgrpo.loss.policy_shaping=false"],
    "carry_fresh": ["exgrpo.unused_fresh_questions=carry"],  # under the preset: keep, not discard, unused fresh questions
    "no_delayed_start": ["exgrpo.start_solve_rate=0.0"],
    "rho_0.25": ["exgrpo.replay_ratio=0.25"],
    "rho_0.75": ["exgrpo.replay_ratio=0.75"],
    "zero_variance_fill": ["exgrpo.strategy=zero_variance_fill"],
    "repo": ["exgrpo.strategy=repo"],
    "rlep": ["exgrpo.strategy=rlep"],  # + the frozen set: the same cell's ExGRPO run, at its last checkpoint
}
STRATEGY_METHODS = ("exgrpo", "zero_variance_fill", "repo", "rlep")

# Configurations: the release's settings (what the GPU recipes run by default) or the project's defaults.
CONFIGS: dict[str, list[str]] = {"release": ["+preset=release"], "defaults": []}


@dataclass(frozen=True)
class Regime:
    """A training condition: which warm start, which RL pool, which extra overrides.

    train_levels: the levels the RL pool draws from (None: all); train_per_level: pool questions
    per drawn level (None: the study's setting). The held-out set is the same in every regime."""

    start: str
    description: str
    train_levels: tuple[int, ...] | None = None
    train_per_level: int | None = None
    overrides: tuple[str, ...] = ()


REGIMES: dict[str, Regime] = {
    "medium": Regime("medium", "the medium start; 640 questions of the 4 levels (GRPO draws each once every 80 steps)"),
    "weak": Regime("weak", "the weak start with replay allowed from step 1 (start_solve_rate 0): fresh groups rarely "
                   "succeed, so stored rare successes are most of the signal", overrides=("exgrpo.start_solve_rate=0.0",)),
    "hard": Regime("medium", "the medium start trained on 640 level-4 questions only (5 operations, which the "
                   "start solves about 1 time in 6): all-fail groups are common", train_levels=(4,), train_per_level=640),
    "scarce": Regime("medium", "the medium start on a pool of 160 questions (40 a level): GRPO draws each once every "
                     "20 steps",
                     train_per_level=40),
}
QUICK_WARM_START_STEPS = 20
REWARD_PATH = str(Path(__file__).with_name("reward.py"))


@dataclass(frozen=True)
class StudySettings:
    """One study's shared settings. batch: questions per step (B); rollouts: K; steps: the budget
    in update steps; checkpoints: how many evenly spaced evaluations (the last at `steps`)."""

    task: ArithmeticTask = field(default_factory=ArithmeticTask)
    train_per_level: int = 160  # 640 questions: B x steps / 2, so each is drawn about twice, as in the paper
    test_per_level: int = 100
    eval_samples: int = 8
    batch: int = 8
    rollouts: int = 8
    steps: int = 160
    checkpoints: int = 4
    lr: float = 1e-4
    max_response_length: int = 64
    max_prompt_length: int = 48  # the longest chat-rendered question is 37 tokens

    @property
    def checkpoint_steps(self) -> list[int]:
        return [round(self.steps * (i + 1) / self.checkpoints) for i in range(self.checkpoints)]


@dataclass(frozen=True)
class RunSpec:
    """One run: a method in a regime under a configuration, one seed (data order and sampling)."""

    method: str
    seed: int = 0
    regime: str = "medium"
    config: str = "release"

    def __post_init__(self):
        for field_name, value, known in (("method", self.method, METHODS), ("regime", self.regime, REGIMES), ("config", self.config, CONFIGS)):
            if value not in known:
                raise ValueError(f"RunSpec.{field_name}={value!r}: unknown; known: {', '.join(known)}")

    @property
    def name(self) -> str:
        return f"{self.method}-{self.regime}-{self.config}-s{self.seed}"

    @property
    def cell(self) -> str:
        """The study's table cell: regime and configuration."""
        return f"{self.regime}/{self.config}"

    @property
    def start(self) -> str:
        return REGIMES[self.regime].start

    @property
    def replays_from(self) -> "RunSpec | None":
        """The run whose stored experience this one replays (RLEP: the same cell's ExGRPO run)."""
        return RunSpec("exgrpo", self.seed, self.regime, self.config) if self.method == "rlep" else None

    @classmethod
    def from_name(cls, name: str) -> "RunSpec":
        method, regime, config, seed = name.rsplit("-", 3)
        return cls(method, int(seed[1:]), regime, config)


def prepare(settings: StudySettings, out: Path, regimes: set[str], quick: bool = False) -> tuple[dict[str, dict[str, Path]], dict[str, Path]]:
    """Each regime's task data ({regime: {"train", "test"}}; one held-out set for all) and the
    warm-started models ({start: path}), built or reused (`quick`: a few supervised steps only)."""
    data = {}
    for name in sorted(regimes):
        regime = REGIMES[name]
        data[name] = arithmetic.write_splits(settings.task, out / "data" / name, regime.train_per_level or settings.train_per_level,
                                             settings.test_per_level, train_levels=regime.train_levels)
    starts = {"medium"} | {REGIMES[name].start for name in regimes}
    steps = {name: QUICK_WARM_START_STEPS if quick else STRENGTHS[name] for name in starts}
    models = {name: warm_start(WarmStartSpec(steps=steps[name], task=settings.task)) for name in sorted(starts)}
    return data, models


def run_overrides(settings: StudySettings, run: RunSpec, model: Path, data: dict[str, Path], run_dir: Path) -> list[str]:
    """The trainer's hydra overrides for one run."""
    from exgrpo_verl.cpu_runtime.launch import cpu_run_overrides

    save_every = settings.checkpoint_steps[0]
    if any(step % save_every for step in settings.checkpoint_steps):
        raise ValueError(f"StudySettings: steps={settings.steps} must be a multiple of checkpoints={settings.checkpoints}")
    return cpu_run_overrides(
        str(model), str(data["train"]), str(data["test"]), batch_size=settings.batch,
        rollouts_per_question=settings.rollouts, max_prompt_length=settings.max_prompt_length,
        max_response_length=settings.max_response_length, total_steps=settings.steps,
        output_dir=str(run_dir), reward_path=REWARD_PATH,
    ) + CONFIGS[run.config] + METHODS[run.method] + list(REGIMES[run.regime].overrides) + _frozen_set(settings, run, run_dir) + [
        f"actor_rollout_ref.actor.optim.lr={settings.lr}",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean",
        # fp32 throughout: verl's default bf16 mixed precision is several times slower on a CPU.
        "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
        f"data.seed={run.seed}",
        f"actor_rollout_ref.rollout.seed={run.seed}",
        "exgrpo.sampler_poll_interval_s=0.05",
        f"trainer.save_freq={save_every}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
        "trainer.resume_mode=auto",
        f"trainer.experiment_name={run.name}",
    ]


def _frozen_set(settings: StudySettings, run: RunSpec, run_dir: Path) -> list[str]:
    """RLEP replays a frozen set from an earlier run: the ExGRPO run of the same cell and seed,
    at its last checkpoint (that run must have finished first)."""
    if run.replays_from is None:
        return []
    source = run_dir.parent / run.replays_from.name / "checkpoints" / f"global_step_{settings.steps}"
    if not source.is_dir():
        raise FileNotFoundError(f"{run.name}: RLEP replays the experience of {source}, which does not exist; run the "
                                "same cell's exgrpo first (scripts/miniature.py orders it before rlep)")
    return [f"+exgrpo.strategy_settings.source={source}"]


# ---- running ---------------------------------------------------------------------------------
def run_dir_of(out: Path, run: RunSpec) -> Path:
    return out / "runs" / run.name


def train(settings: StudySettings, run: RunSpec, model: Path, data: dict[str, Path], out: Path, on_step=None) -> Path:
    """Train one run to its budget, resuming from its latest checkpoint if it has one. Each
    attempt writes its own metrics file (verl's file logger truncates on reopen)."""
    from exgrpo_verl.cpu_runtime.launch import run_training

    run_dir = run_dir_of(out, run)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _last_checkpoint(run_dir) >= settings.steps:
        return run_dir
    attempt = len(list(run_dir.glob("metrics-*.jsonl")))
    result = run_training(
        run_overrides(settings, run, model, data, run_dir),
        str(run_dir / f"train-{attempt}.log"),
        str(run_dir / f"metrics-{attempt}.jsonl"),
        timeout_s=6 * 3600,
        on_step=on_step,
    )
    if result.returncode != 0:
        raise RuntimeError(f"run {run.name} failed (exit {result.returncode}); see {run_dir}/train-{attempt}.log")
    return run_dir


def _last_checkpoint(run_dir: Path) -> int:
    tracker = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    return int(tracker.read_text().strip()) if tracker.exists() else 0


def run_metrics(run_dir: Path) -> list[dict]:
    """Per-step training metrics of a run over all its attempts (a resumed step: the latest)."""
    from exgrpo_verl.cpu_runtime.launch import read_metrics

    by_step: dict[int, dict] = {}
    for path in sorted(run_dir.glob("metrics-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])):
        for row in read_metrics(str(path)):
            if "timing_s/step" in row:
                by_step[row["step"]] = row
    return [by_step[step] for step in sorted(by_step)]


def evaluate_model(model_path: Path, test_file: Path, samples: int, max_tokens: int, cache: Path, seed: int = 1234) -> dict:
    """avg@k on the held-out set at temperature 1 with the release's reward, cached in `cache`."""
    if cache.exists():
        return json.loads(cache.read_text())
    import pandas as pd

    from exgrpo_verl.evaluation.generation import generate
    from exgrpo_verl.evaluation.metrics import avg_at_k
    from exgrpo_verl.reward import release_reward

    rows = pd.read_parquet(test_file).to_dict("records")
    outputs = generate(str(model_path), [list(r["prompt"]) for r in rows], n=samples, temperature=1.0, max_tokens=max_tokens, backend="hf", batch_size=256, seed=seed)
    records, lengths, by_level = [], [], {}
    for row, responses in zip(rows, outputs):
        for response in responses:
            score = release_reward(response.text, row["reward_model"]["ground_truth"])
            records.append({"data_source": row["data_source"], "question_id": row["extra_info"]["index"], "score": score})
            by_level.setdefault(int(row["extra_info"]["level"]), []).append(score)
            lengths.append(response.num_tokens)
    per_question = np.array([np.mean([r["score"] for r in records[i * samples : (i + 1) * samples]]) for i in range(len(rows))])
    result = {
        "accuracy": avg_at_k(records)[arithmetic.DATA_SOURCE]["accuracy"],
        "standard_error": float(per_question.std(ddof=1) / math.sqrt(len(per_question))),
        "by_level": {f"L{level}": float(np.mean(scores)) for level, scores in sorted(by_level.items())},
        "mean_response_tokens": float(np.mean(lengths)),
        "questions": len(rows),
        "samples_per_question": samples,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2))
    return result


def evaluate_run(settings: StudySettings, run_dir: Path, data: dict[str, Path]) -> dict[int, dict]:
    """Held-out results at each checkpoint of a run: {step: result}."""
    results = {}
    for step in settings.checkpoint_steps:
        model = run_dir / "checkpoints" / f"global_step_{step}" / "actor" / "huggingface"
        if model.exists():
            results[step] = evaluate_model(model, data["test"], settings.eval_samples, settings.max_response_length, run_dir / "eval" / f"step_{step}.json")
    return results


# ---- summarising -----------------------------------------------------------------------------
def generated_rollouts_per_step(rows: list[dict], batch: int, rollouts: int) -> np.ndarray:
    """Rollouts the server generated each step: the trainer's count (`exgrpo/generated_rollouts`,
    right for every replay strategy), or for rows logged without it B*K less one per replayed
    question (ExGRPO: its replayed trajectory takes the place of a K-th rollout never generated)."""
    return np.array([row.get("exgrpo/generated_rollouts", batch * rollouts - row.get("exgrpo/replayed_questions", 0.0))
                     for row in rows])


def compute_per_step(rows: list[dict], batch: int, rollouts: int) -> np.ndarray:
    """Each step's compute in token-forward units (one forward pass of one token = 1, so a
    backward pass = 2), from the trainer's own counts:

        C = R_gen (P + L) + 4 T + S

    R_gen the generated rollouts, P and L the step's mean prompt and response lengths (the
    generation's prefill and decoding: one forward per token; L averages over every row, replayed
    ones included), T the tokens of the training batch (old log-probs: 1 forward; the update:
    forward + backward = 3), S the selection pass's scored tokens. A proxy for FLOPs; generation
    costs more per token than this on real hardware, and "equal generated rollouts" is that limit."""
    generated = generated_rollouts_per_step(rows, batch, rollouts)
    return np.array([
        g * (row.get("prompt_length/mean", 0.0) + row.get("response_length/mean", 0.0))
        + 4 * row.get("perf/total_num_tokens", 0.0) + row.get("exgrpo/selection_tokens", 0.0)
        for g, row in zip(generated, rows)
    ])


def interpolate(x: np.ndarray, y: np.ndarray, at: float) -> float:
    """y at x = `at` on the piecewise-linear curve through (x, y); NaN outside its range."""
    if at < x[0] or at > x[-1]:
        return float("nan")
    return float(np.interp(at, x, y))


def first_crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """The smallest x where the piecewise-linear curve through (x, y) reaches `level`; NaN if never.

    Between points (x0, y0) and (x1, y1) with y0 < level <= y1:  x = x0 + (level - y0) (x1 - x0) / (y1 - y0).
    """
    if y[0] >= level:
        return float(x[0])
    for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:]):
        if y0 < level <= y1:
            return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0))
    return float("nan")


@dataclass
class RunSummary:
    """What the tables and plots need from one finished run."""

    run: RunSpec
    steps: list[int]  # evaluation points, 0 first
    rollouts: list[float]  # generated rollouts at those steps
    compute: list[float]  # compute spent by those steps (compute_per_step, token-forward units)
    accuracy: list[float]
    standard_error: list[float]
    by_level: list[dict]
    train_rows: list[dict]
    cumulative_rollouts: np.ndarray  # generated rollouts after each training step
    eval_length: float
    seconds_per_step: float

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1]


def summarise_run(settings: StudySettings, run: RunSpec, out: Path, start_result: dict, data: dict[str, Path]) -> RunSummary | None:
    """None when the run has not reached its budget yet."""
    run_dir = run_dir_of(out, run)
    rows = run_metrics(run_dir)
    evals = evaluate_run(settings, run_dir, data)
    if len(evals) < len(settings.checkpoint_steps) or len(rows) < settings.steps:
        return None
    cumulative = np.concatenate([[0.0], np.cumsum(generated_rollouts_per_step(rows, settings.batch, settings.rollouts))])
    compute = np.concatenate([[0.0], np.cumsum(compute_per_step(rows, settings.batch, settings.rollouts))])
    steps = [0, *settings.checkpoint_steps]
    results = [start_result, *(evals[s] for s in settings.checkpoint_steps)]
    timed = [row["timing_s/step"] for row in rows[1:]]  # step 1 includes warm-up compilation and caches
    return RunSummary(
        run=run, steps=steps, rollouts=[float(cumulative[s]) for s in steps], compute=[float(compute[s]) for s in steps],
        accuracy=[r["accuracy"] for r in results], standard_error=[r["standard_error"] for r in results],
        by_level=[r["by_level"] for r in results], train_rows=rows, cumulative_rollouts=cumulative[1:],
        eval_length=results[-1]["mean_response_tokens"], seconds_per_step=float(np.mean(timed)),
    )


# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30 (standard table values).
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
          2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_interval_95(values) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval over n paired values (seeds):

        mean ± t_{0.975, n-1} * s / sqrt(n),   s the sample standard deviation (ddof = 1).

    Beyond 30 degrees of freedom the normal quantile 1.96 is used (within 2% of t)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {n}")
    quantile = _T_975[n - 2] if n - 1 <= len(_T_975) else 1.96
    return float(values.mean()), float(quantile * values.std(ddof=1) / math.sqrt(n))


def _mean_std(values) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}"


def _tail_mean(rows: list[dict], key: str, last: int = 10) -> float:
    values = [row[key] for row in rows[-last:] if key in row]
    return float(np.mean(values)) if values else float("nan")


def _after_start_mean(rows: list[dict], key: str) -> float:
    values = [row[key] for row in rows if row.get("exgrpo/replay_active") and key in row]
    return float(np.mean(values)) if values else float("nan")


def accuracy_at(summary: RunSummary, budget: str, at: float) -> float:
    """Held-out accuracy of a run when it had spent `at` of `budget` ("rollouts" or "compute"),
    read off the piecewise-linear curve through its evaluation points."""
    return interpolate(np.array(getattr(summary, budget)), np.array(summary.accuracy), at)


def comparison_table(summaries: dict[str, list[RunSummary]], baseline: str = "grpo") -> str:
    """Markdown: held-out accuracy at equal steps, at equal generated rollouts and at equal compute
    (mean ± std over seeds), rollouts needed to reach the baseline's final accuracy, entropy,
    length, time."""
    base = summaries[baseline]
    equal = {budget: min(getattr(s, budget)[-1] for runs in summaries.values() for s in runs) for budget in ("rollouts", "compute")}
    base_final = float(np.mean([s.final_accuracy for s in base]))
    base_rollouts = float(np.mean([s.rollouts[-1] for s in base]))
    base_time = float(np.mean([s.seconds_per_step for s in base]))
    checkpoints = base[0].steps[1:]  # every run of a study shares its evaluation steps
    header = (
        "| method | seeds | start | " + " | ".join(f"{step} steps" for step in checkpoints) + " | at equal rollouts "
        f"({equal['rollouts']:,.0f}) | at equal compute ({equal['compute']:.3g}) | rollouts to reach {baseline}'s final "
        f"({base_final:.3f}) | final entropy | response tokens | s / step (vs " + baseline + ") |\n|" + "---|" * (9 + len(checkpoints))
    )
    lines = [header]
    for method, runs in summaries.items():
        at_equal = {budget: [accuracy_at(s, budget, at) for s in runs] for budget, at in equal.items()}
        mean_curve_x = np.mean([s.rollouts for s in runs], axis=0)
        mean_curve_y = np.mean([s.accuracy for s in runs], axis=0)
        reach = first_crossing(mean_curve_x, mean_curve_y, base_final)
        if mean_curve_y[0] >= base_final:
            reach_text = f"at the start ({baseline} ended at or below it)"
        else:
            reach_text = "not reached" if math.isnan(reach) else f"{reach:,.0f} ({reach / base_rollouts:.2f}x)"
        time = float(np.mean([s.seconds_per_step for s in runs]))
        lines.append(
            f"| {method} | {len(runs)} | {_mean_std([s.accuracy[0] for s in runs])} | "
            + "".join(f"{_mean_std([s.accuracy[i] for s in runs])} | " for i in range(1, len(checkpoints) + 1))
            + f"{_mean_std(at_equal['rollouts'])} | {_mean_std(at_equal['compute'])} | {reach_text} | "
            f"{_mean_std([_tail_mean(s.train_rows, 'actor/entropy') for s in runs])} | "
            f"{_mean_std([s.eval_length for s in runs])} | {time:.2f} ({time / base_time:.2f}x) |"
        )
    return "\n".join(lines)


def seed_differences(method_runs: list[RunSummary], baseline_runs: list[RunSummary]) -> dict[str, list[float]]:
    """Per seed present in both: method minus baseline at equal steps (the final evaluation), at
    equal generated rollouts and at equal compute (each pair at the smaller of its two budgets)."""
    by_seed = {s.run.seed: s for s in baseline_runs}
    differences = {"seed": [], "baseline": [], "method": [], "steps": [], "rollouts": [], "compute": []}
    for s in method_runs:
        b = by_seed.get(s.run.seed)
        if b is None:
            continue
        differences["seed"].append(s.run.seed)
        differences["baseline"].append(b.final_accuracy)
        differences["method"].append(s.final_accuracy)
        differences["steps"].append(s.final_accuracy - b.final_accuracy)
        for budget in ("rollouts", "compute"):
            at = min(getattr(s, budget)[-1], getattr(b, budget)[-1])
            differences[budget].append(accuracy_at(s, budget, at) - accuracy_at(b, budget, at))
    return differences


def _interval_cell(values: list[float], name_single_seed: bool = True) -> str:
    if len(values) < 2:
        return f"{values[0]:+.3f}{' (1 seed)' if name_single_seed else ''}" if values else "n/a"
    return "{:+.3f} ± {:.3f}".format(*t_interval_95(values))


def paired_differences(summaries: dict[str, list[RunSummary]], method: str, baseline: str = "grpo") -> str:
    """Per seed: method minus baseline at the final step, at equal generated rollouts and at equal
    compute; then the mean with its 95% t-interval."""
    d = seed_differences(summaries[method], summaries[baseline])
    lines = ["| seed | final, " + baseline + " | final, " + method + " | difference at equal steps | at equal rollouts | at equal compute |",
             "|---|---|---|---|---|---|"]
    for i, seed in enumerate(d["seed"]):
        lines.append(f"| {seed} | {d['baseline'][i]:.3f} | {d['method'][i]:.3f} | {d['steps'][i]:+.3f} | {d['rollouts'][i]:+.3f} | {d['compute'][i]:+.3f} |")
    if len(d["seed"]) > 1:
        lines.append(f"| mean ± 95% interval (t, {len(d['seed']) - 1} d.f.) | | | {_interval_cell(d['steps'])} | "
                     f"{_interval_cell(d['rollouts'])} | {_interval_cell(d['compute'])} |")
    return "\n".join(lines)


def screening_table(finished: dict[str, dict[str, list[RunSummary]]], baseline: str = "grpo") -> str:
    """Markdown: one row per cell (regime/configuration), one column per method: the method's
    held-out accuracy minus the baseline's at equal generated rollouts / at equal compute, mean
    over the seeds both ran (with the 95% t-interval where there are several)."""
    methods = [m for m in METHODS if m != baseline and any(m in cell for cell in finished.values())]
    lines = ["| " + " | ".join(["cell", f"{baseline} final", *methods]) + " |", "|---|---|" + "---|" * len(methods)]
    for cell, runs in finished.items():
        if baseline not in runs:
            continue
        cells = []
        for method in methods:
            if method not in runs:
                cells.append("")
                continue
            d = seed_differences(runs[method], runs[baseline])
            pair = f"{_interval_cell(d['rollouts'], False)} / {_interval_cell(d['compute'], False)}"
            cells.append(pair + (" (1 seed)" if len(d["seed"]) == 1 else "") if d["seed"] else "")
        base = _mean_std([s.final_accuracy for s in runs[baseline]])
        lines.append("| " + " | ".join([cell, f"{base} ({len(runs[baseline])} seed{'s' if len(runs[baseline]) > 1 else ''})", *cells]) + " |")
    return "\n".join(lines)


def screening_finals(finished: dict[str, dict[str, list[RunSummary]]]) -> str:
    """Markdown: one row per cell, one column per method: final held-out accuracy (mean over
    seeds) and, for a replaying method, the replayed rows a step and the steps with any, which
    tell a strategy that replayed nothing (a GRPO run by another path) from one that did."""
    methods = [m for m in METHODS if any(m in cell for cell in finished.values())]
    lines = ["| " + " | ".join(["cell", *methods]) + " |", "|---|" + "---|" * len(methods)]
    for cell, runs in finished.items():
        cells = []
        for method in methods:
            if method not in runs:
                cells.append("")
                continue
            replayed = [[row.get("exgrpo/replayed_rows", 0.0) for row in s.train_rows] for s in runs[method]]
            activity = "" if method == "grpo" else (f" ({np.mean([np.mean(r) for r in replayed]):.2f} rows; "
                                                    f"{np.mean([sum(v > 0 for v in r) for r in replayed]):.0f} steps)")
            cells.append(f"{np.mean([s.final_accuracy for s in runs[method]]):.3f}{activity}")
        lines.append("| " + " | ".join([cell, *cells]) + " |")
    return "\n".join(lines)


def replayed_weight_share(token_fraction: float, shaped_weight_mean: float) -> float:
    """The replayed tokens' share of the policy loss's token weights, fresh tokens weighing 1 and
    replayed ones f(w) (advantages left out):  q f̄ / (q f̄ + 1 - q),  q the replayed token fraction."""
    replayed = token_fraction * shaped_weight_mean
    return replayed / (replayed + 1.0 - token_fraction) if replayed + 1.0 - token_fraction > 0 else float("nan")


def _mean_where(rows: list[dict], key: str, condition_key: str) -> float:
    """Mean of `key` over the steps where `condition_key` is positive (NaN if none)."""
    values = [row[key] for row in rows if row.get(condition_key, 0) > 0 and key in row]
    return float(np.mean(values)) if values else float("nan")


def _replay_start_step(rows: list[dict]) -> float:
    return next((row["step"] for row in rows if row.get("exgrpo/replay_active")), float("nan"))


def _after_start(key: str):
    return lambda rows: _after_start_mean(rows, key)


# What replay did, one statistic of a run's training rows per column.
REPLAY_DIAGNOSTICS = [
    ("replay start step", _replay_start_step),
    ("replayed share of rows", _after_start("exgrpo/replay_fraction")),
    ("mean w on replayed tokens", _after_start("exgrpo/replay_importance_weight_mean")),
    ("mean f(w) on replayed tokens", _after_start("exgrpo/replay_shaped_weight_mean")),
    ("replayed share of loss weight", lambda rows: replayed_weight_share(
        _after_start_mean(rows, "actor/exgrpo/replay_token_fraction"), _after_start_mean(rows, "exgrpo/replay_shaped_weight_mean"))),
    ("experience groups a step", _after_start("exgrpo/experience_groups")),
    ("fresh rows' mean advantage in them",
     lambda rows: _mean_where(rows, "exgrpo/experience_group_fresh_advantage", "exgrpo/experience_groups")),
    ("pool size", _after_start("exgrpo/buffer/pool_size")),
    ("retired", _after_start("exgrpo/buffer/retired")),
    ("fresh solve rate", _after_start("exgrpo/fresh_score_mean")),
]


def replay_diagnostics(summaries: dict[str, list[RunSummary]]) -> str:
    """Markdown: what replay did in each method's runs (means over steps after replay started;
    the fresh rows' advantage over steps that had experience groups)."""
    lines = ["| method | " + " | ".join(label for label, _ in REPLAY_DIAGNOSTICS) + " |", "|---|" + "---|" * len(REPLAY_DIAGNOSTICS)]
    for method, runs in summaries.items():
        if method == "grpo":
            continue
        cells = [_mean_std([statistic(s.train_rows) for s in runs]) for _, statistic in REPLAY_DIAGNOSTICS]
        cells[0] = cells[0].replace(".000", "")  # the start step is an integer
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_VISIT_HISTOGRAMS = {"fresh groups": "exgrpo/buffer/question_fresh_visits/", "replays": "exgrpo/buffer/question_replays/"}


def _visit_counts(summaries: dict[str, list[RunSummary]]) -> tuple[dict[str, list[dict]], list[tuple[str, str]], set[str]]:
    """({method: the last training row of each run that counted per-question visits}, the
    histogram columns as (kind, metric key), the methods whose replays the buffer counted).
    Runs from before the buffer kept the counts have none. A strategy replaying a frozen set
    (RLEP) counts its fresh groups but not its replays: those are trajectories of another buffer,
    which shows as a replay total short of the replayed rows the run logged."""
    counted, replays_counted = {}, set()
    for method, runs in summaries.items():
        runs = [s for s in runs if any(k.startswith(_VISIT_HISTOGRAMS["replays"]) for k in s.train_rows[-1])]
        if runs:
            counted[method] = [s.train_rows[-1] for s in runs]
            if all(s.train_rows[-1]["exgrpo/buffer/replays_total"] == sum(row.get("exgrpo/replayed_rows", 0.0) for row in s.train_rows)
                   for s in runs):
                replays_counted.add(method)
    columns = [(kind, key) for kind, prefix in _VISIT_HISTOGRAMS.items()
               for key in (next(iter(counted.values()))[0] if counted else {}) if key.startswith(prefix)]
    return counted, columns, replays_counted


def question_visits(summaries: dict[str, list[RunSummary]]) -> str | None:
    """Markdown: at the end of each method's runs, how many questions had 1, 2, ... groups of fresh
    rollouts and had their stored trajectories replayed 1, 2, ... times (the buffer's histograms,
    mean over seeds), and the replays per replayed question. None when no run counted them."""
    counted, columns, replays_counted = _visit_counts(summaries)
    if not counted:
        return None
    lines = ["| method | seeds | " + " | ".join(f"{kind}: {key.rsplit('/', 1)[1]}" for kind, key in columns)
             + " | replays per replayed question |", "|---|---|" + "---|" * (len(columns) + 1)]
    for method, rows in counted.items():
        if method not in replays_counted:
            cells = [f"{np.mean([row[key] for row in rows]):.1f}" if kind != "replays" else "-" for kind, key in columns]
            lines.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " | not counted (replays another run's buffer) |")
            continue
        replayed = [sum(row[key] for kind, key in columns if kind == "replays") for row in rows]
        per_question = [row["exgrpo/buffer/replays_total"] / n for row, n in zip(rows, replayed) if n]
        lines.append(f"| {method} | {len(rows)} | " + " | ".join(f"{np.mean([row[key] for row in rows]):.1f}" for _, key in columns)
                     + f" | {_mean_std(per_question) if per_question else 'none replayed'} |")
    return "\n".join(lines)


def plot_question_visits(summaries: dict[str, list[RunSummary]], path: Path, title: str) -> Path | None:
    """Bars: questions per count of fresh groups and of replays at the end of the runs (mean over
    seeds), one bar per method; None (no plot) when no run counted them."""
    counted, columns, replays_counted = _visit_counts(summaries)
    if not counted:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(_VISIT_HISTOGRAMS), figsize=(12, 4))
    for ax, kind in zip(axes, _VISIT_HISTOGRAMS):
        keys = [key for k, key in columns if k == kind]
        width = 0.8 / len(counted)
        for i, (method, rows) in enumerate(counted.items()):
            if kind == "replays" and method not in replays_counted:
                continue
            ax.bar(np.arange(len(keys)) + i * width, [np.mean([row[key] for row in rows]) for key in keys], width,
                   label=f"{method} ({len(rows)} seed{'s' if len(rows) > 1 else ''})")
        ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [key.rsplit("/", 1)[1] for key in keys])
        ax.set(title=f"{kind} per question ({title})", xlabel=kind, ylabel="questions")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_and_entropy(summaries: dict[str, list[RunSummary]], path: Path, title: str) -> Path:
    """Held-out accuracy and training entropy vs generated rollouts, mean over seeds with a ±1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from exgrpo_verl.training_report import moving_average

    fig, (acc_ax, ent_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method, runs in summaries.items():
        x = np.mean([s.rollouts for s in runs], axis=0)
        y = np.array([s.accuracy for s in runs])
        line = acc_ax.plot(x, y.mean(0), marker="o", label=f"{method} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")[0]
        if len(runs) > 1:
            acc_ax.fill_between(x, y.mean(0) - y.std(0, ddof=1), y.mean(0) + y.std(0, ddof=1), color=line.get_color(), alpha=0.15)
        entropy = np.mean([moving_average([r.get("actor/entropy", np.nan) for r in s.train_rows], 10) for s in runs], axis=0)
        ent_ax.plot(np.mean([s.cumulative_rollouts for s in runs], axis=0), entropy, color=line.get_color(), label=method)
    acc_ax.set(title=f"held-out accuracy ({title})", xlabel="generated rollouts", ylabel="avg@k, temperature 1")
    ent_ax.set(title="policy entropy on training rows (10-step mean)", xlabel="generated rollouts", ylabel="token entropy")
    for ax in (acc_ax, ent_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_buckets(summary: RunSummary, path: Path) -> Path:
    """Replay-pool occupancy per accuracy bucket (k successes of K) over training steps, one run
    (K - 1 is the highest bucket the trainer logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = "exgrpo/buffer/bucket/"
    rollouts = 1 + max((int(key[len(prefix):]) for row in summary.train_rows for key in row if key.startswith(prefix)), default=1)
    steps = [row["step"] for row in summary.train_rows]
    sizes = [[row.get(f"exgrpo/buffer/bucket/{k}", 0.0) for row in summary.train_rows] for k in range(1, rollouts)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.stackplot(steps, sizes, labels=[f"{k}/{rollouts}" for k in range(1, rollouts)], cmap=None)
    ax.set(title=f"replay pool by bucket ({summary.run.name})", xlabel="step", ylabel="questions in the pool")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---- reporting -------------------------------------------------------------------------------
def progress_printer(run: RunSpec, total: int):
    """on_step callback printing one line per training step."""
    def show(row: dict) -> None:
        if "timing_s/step" not in row:
            return
        score = row.get("exgrpo/fresh_score_mean", row.get("critic/score/mean", float("nan")))
        replay = "replay on " if row.get("exgrpo/replay_active") else ""
        print(f"  [{run.name}] step {row['step']:>3}/{total}  solve rate {score:.3f}  {replay}{row['timing_s/step']:.1f}s", flush=True)

    return show


def write_tables(settings: StudySettings, out: Path, data: dict, models: dict, title: str = "Miniature study") -> str | None:
    """Tables (`out/tables.md`) and plots from every finished run under `out`, and each finished
    run's summary as JSON in `out/summaries/` (what a results page commits); returns the markdown
    (None while no GRPO run has finished). data: {regime: paths}, models: {start: path}."""
    held_out = next(iter(data.values()))["test"]  # one held-out set for every regime
    starts = {
        start: evaluate_model(model, held_out, settings.eval_samples, settings.max_response_length, out / "eval" / f"start-{start}.json")
        for start, model in models.items()
    }
    finished: dict[str, dict[str, list]] = {}
    for run_dir in sorted((out / "runs").glob("*")):
        run = RunSpec.from_name(run_dir.name)
        if run.start not in starts or run.regime not in data:
            continue
        summary = summarise_run(settings, run, out, starts[run.start], data[run.regime])
        if summary is not None:
            finished.setdefault(run.cell, {}).setdefault(run.method, []).append(summary)
    save_summaries(out / "summaries", str(settings), starts, finished)
    return render_tables(str(settings), starts, finished, out, title)


# Training-metric keys a summary keeps (the tables and plots read no others).
_SUMMARY_METRIC_PREFIXES = ("step", "timing_s/step", "actor/entropy", "actor/grad_norm", "actor/exgrpo/", "critic/score/mean", "exgrpo/",
                            "prompt_length/mean", "response_length/mean", "perf/total_num_tokens")


def save_summaries(folder: Path, settings_text: str, starts: dict, finished: dict[str, dict[str, list]]) -> None:
    """One JSON per finished run (`<run name>.json`) plus `study.json` (settings and starting
    points): small, diffable files from which `load_summaries` rebuilds every table and plot."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps({"settings": settings_text, "starts": starts}, indent=1))
    for methods in finished.values():
        for summaries in methods.values():
            for summary in summaries:
                record = {key: value for key, value in summary.__dict__.items() if key not in ("run", "train_rows", "cumulative_rollouts")}
                record["run"] = summary.run.__dict__
                record["cumulative_rollouts"] = summary.cumulative_rollouts.tolist()
                record["train_rows"] = [
                    {k: v for k, v in row.items() if k.startswith(_SUMMARY_METRIC_PREFIXES)} for row in summary.train_rows
                ]
                (folder / f"{summary.run.name}.json").write_text(json.dumps(record))


def load_summaries(folder: Path) -> tuple[str, dict, dict[str, dict[str, list]]]:
    """(settings text, starting points, {cell: {method: [RunSummary]}}) from `save_summaries`' folder."""
    study_file = folder / "study.json"
    if not study_file.exists():
        raise FileNotFoundError(f"{study_file}: no study.json; expected a folder written by scripts/miniature.py (<out>/summaries)")
    study = json.loads(study_file.read_text())
    finished: dict[str, dict[str, list]] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == "study.json":
            continue
        record = json.loads(path.read_text())
        record["run"] = RunSpec(**record["run"])
        record["cumulative_rollouts"] = np.asarray(record["cumulative_rollouts"])
        summary = RunSummary(**record)
        finished.setdefault(summary.run.cell, {}).setdefault(summary.run.method, []).append(summary)
    return study["settings"], study["starts"], finished


MAIN_CELL = "medium/release"


def render_tables(settings_text: str, starts: dict, finished: dict[str, dict[str, list]], out: Path, title: str = "Miniature study") -> str | None:
    """Write `out/tables.md` and the plots from run summaries: per cell (regime/configuration)
    the comparison of every method that ran, paired differences, replay diagnostics and a plot;
    then the screening table over cells. None while no cell has a finished GRPO run."""
    cells = [cell for cell in sorted(finished, key=lambda c: (c != MAIN_CELL, c)) if "grpo" in finished[cell]]
    if not cells:
        return None
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}: tables\n\nSettings: `{settings_text}`\n",
             "Differences are method minus GRPO, held-out accuracy, mean over paired seeds ± the 95% t-interval.\n"]
    for cell in cells:
        methods = {method: finished[cell][method] for method in METHODS if method in finished[cell]}  # a fixed order
        regime, config = cell.split("/")
        slug = cell.replace("/", "_")
        parts += [f"## {cell}: {REGIMES[regime].description}; {config} settings\n", comparison_table(methods), ""]
        for method in methods:
            if method != "grpo":
                parts += [f"### {method} minus grpo, paired by seed (same data order)\n", paired_differences(methods, method), ""]
        if len(methods) > 1:
            parts += ["### What replay did\n", replay_diagnostics(methods), ""]
        visits = question_visits(methods)
        if visits:
            plot = plot_question_visits(methods, out / f"visits_{slug}.png", cell)
            parts += ["### Per-question visits by the end (questions per count; the buffer's counts)\n", visits, "",
                      f"![per-question visits]({plot.name})", ""]
        plot_accuracy_and_entropy(methods, out / f"accuracy_{slug}.png", cell)
        if "exgrpo" in methods:
            plot_buckets(methods["exgrpo"][0], out / f"buckets_{slug}.png")
    parts += ["## Screening: every method in every cell (difference at equal rollouts / at equal compute)\n",
              screening_table({cell: finished[cell] for cell in cells}), "",
              "### Final held-out accuracy, and replayed rows a step (steps with any)\n",
              screening_finals({cell: finished[cell] for cell in cells}), ""]
    parts += ["## Starting points (held-out, temperature 1)\n", "| start | accuracy | by level |", "|---|---|---|"]
    parts += [f"| {name} | {r['accuracy']:.3f} ± {r['standard_error']:.3f} | {r['by_level']} |" for name, r in starts.items()]
    text = "\n".join(parts) + "\n"
    (out / "tables.md").write_text(text)
    return text
