"""Configuration of the experience manager, validated when it is built."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from exgrpo_verl.validation import check_bool, check_choice, check_int, check_real

QUESTION_SAMPLING = ("gaussian", "uniform")


@dataclass(frozen=True)
class SelectionMetric:
    """One way to pick the stored trajectory of a question to replay (`selection_metric`)."""

    name: str
    help: str
    forward_pass: bool  # its scores are computed by the caller under the current policy


# The one list of selection metrics: validation, selection, the docs' tables and their tests read it.
SELECTION_METRICS: dict[str, SelectionMetric] = {metric.name: metric for metric in (
    SelectionMetric("entropy", "argmin of the token-mean entropy of each candidate under the current policy, "
                    "temperature 1 (the paper's criterion)", True),
    SelectionMetric("entropy_sum", "argmin of the summed entropy under the current policy (the release's score in "
                    "effect; favours short answers)", True),
    SelectionMetric("perplexity", "argmin of exp(-token-mean log-prob) under the current policy", True),
    SelectionMetric("stored_entropy", "argmin of the token-mean entropy recorded at collection (then `update` "
                    "requires `entropies`)", False),
    SelectionMetric("recent", "the most recently collected", False),
    SelectionMetric("random", "uniform, from the buffer's generator", False),
)}
FORWARD_PASS_METRICS = tuple(name for name, metric in SELECTION_METRICS.items() if metric.forward_pass)
ZERO_ACCURACY_POLICIES = ("drop_from_pool", "keep_stale")


@dataclass(frozen=True)
class ExperienceConfig:
    """Every knob of the experience buffer.

    group_size: K, rollouts per question group (buckets are k = 1..K-1).
    bucket_mu, bucket_sigma: the Gaussian N(acc; mu, sigma) that weights buckets by accuracy;
        sigma None means 1/K (one success in accuracy units, as in the paper).
    question_sampling: "gaussian" (bucket-weighted) or "uniform" over the pool.
    selection_metric: how one stored trajectory of a question is picked for replay:
        "entropy" / "entropy_sum" (the release's score) / "perplexity" (argmin of scores the caller
        computes under the current policy),
        "stored_entropy" (argmin of the token-mean entropy recorded at collection),
        "recent" (most recently collected), "random".
    max_candidates_per_question: at most this many (the most recent) trajectories are candidates.
        None = every stored one (the release).
    max_trajectories_per_question: per-question cap; storing beyond it evicts that question's oldest.
        None = no per-question cap (the release keeps every success); max_total_tokens still bounds
        the whole buffer.
    max_total_tokens: global cap on stored response tokens (8 bytes each: int32 id + float32 log-prob);
        beyond it the globally oldest trajectories are evicted. None = unbounded.
    max_age_steps: trajectories older than this many steps are evicted. None = no staleness limit.
    zero_accuracy_policy: what a later 0/n result does to a pooled question:
        "drop_from_pool" (accuracy 0, out of the pool, trajectories kept) or
        "keep_stale" (stays in its old bucket, as the authors' release does).
    seed: seed of the sampling RNG (its state is saved with the buffer).
    store_failures: also store complete failed rollouts of partly solved questions, with their
        rewards (set by the replay strategy that needs them, see exgrpo_verl.strategies).
    """

    group_size: int = 8
    bucket_mu: float = 0.5
    bucket_sigma: float | None = None
    question_sampling: str = "gaussian"
    selection_metric: str = "entropy"
    max_candidates_per_question: int | None = 8
    max_trajectories_per_question: int | None = 16
    max_total_tokens: int | None = 400_000_000
    max_age_steps: int | None = None
    zero_accuracy_policy: str = "drop_from_pool"
    seed: int = 0
    store_failures: bool = False

    def __post_init__(self):
        check_int(_key("group_size"), self.group_size, minimum=2)
        check_real(_key("bucket_mu"), self.bucket_mu, "a finite number")
        if self.bucket_sigma is not None:
            check_real(_key("bucket_sigma"), self.bucket_sigma, "a finite number > 0 or None",
                       lambda v: math.isfinite(v) and v > 0)
        check_choice(_key("question_sampling"), self.question_sampling, QUESTION_SAMPLING)
        check_choice(_key("selection_metric"), self.selection_metric, tuple(SELECTION_METRICS))
        for name in ("max_candidates_per_question", "max_trajectories_per_question"):
            if getattr(self, name) is not None:
                check_int(_key(name), getattr(self, name), minimum=1)
        if self.max_total_tokens is not None:
            check_int(_key("max_total_tokens"), self.max_total_tokens, minimum=1)
        if self.max_age_steps is not None:
            check_int(_key("max_age_steps"), self.max_age_steps, minimum=0)
        check_choice(_key("zero_accuracy_policy"), self.zero_accuracy_policy, ZERO_ACCURACY_POLICIES)
        check_int(_key("seed"), self.seed, minimum=0)
        check_bool(_key("store_failures"), self.store_failures)

    @property
    def sigma(self) -> float:
        """The bucket Gaussian's standard deviation in accuracy units (default 1/K)."""
        return 1.0 / self.group_size if self.bucket_sigma is None else float(self.bucket_sigma)

    @property
    def needs_forward_pass(self) -> bool:
        """True when `select` needs scores computed under the current policy."""
        return self.selection_metric in FORWARD_PASS_METRICS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ExperienceConfig":
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"experience: unknown keys {unknown}; allowed: {sorted(f.name for f in dataclasses.fields(cls))}")
        return cls(**values)


def _key(name: str) -> str:
    """How errors name a key: as it sits in the trainer config, under `exgrpo.`."""
    return f"experience.{name}"
