"""Replay strategies: which stored trajectories a GRPO step trains on, and how.

A strategy is registered under a name (`exgrpo.strategy`), as verl registers its advantage
estimators, with its help text and its settings (`exgrpo.strategy_settings`). The trainer asks
it, in order:

    experience_question_count  how many of the step's B questions come from the buffer
    fresh_rollouts             how many rollouts each question gets generated
    requests                   after rewards are known: which stored trajectories may join which
                               group, how many, which fresh rows they replace, and whether they
                               share the group's advantage baseline
    replay_starts / stores     when replay switches on, whether a step's rollouts are stored
    (stores_failures)          whether failed rollouts are stored too, with their rewards

Nothing here imports verl: groups arrive as `GroupOutcome`s, stored trajectories as the
buffer's `Trajectory`s, and the trainer adapter turns `JoinRequest`s into rows.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, ClassVar, Sequence

import numpy as np

from exgrpo_verl.experience import ExperienceBuffer, Trajectory
from exgrpo_verl.experience.persistence import CheckpointError
from exgrpo_verl.mixing import experience_question_count, replay_starts, stores_successes
from exgrpo_verl.validation import check_bool, check_choice, check_int


@dataclass(frozen=True)
class GroupOutcome:
    """One question group of the step, its rewards known, before any stored trajectory joins.

    sessions: the session ids of its fresh rows; rewards: theirs, in the same order.
    from_buffer: the experience marker its prompt row carried (drawn from the buffer)."""

    uid: str
    question_id: int
    sessions: tuple[int, ...]
    rewards: np.ndarray
    from_buffer: bool

    @property
    def zero_variance(self) -> bool:
        return bool(np.ptp(self.rewards) == 0) if self.rewards.size else True


@dataclass(frozen=True)
class JoinRequest:
    """Stored trajectories that may join one group.

    candidates: what may join, oldest first (the trainer keeps those it can replay on the
        group's prompt and within the response length).
    count: None = one, chosen by the buffer's selection metric; M = the last M usable ones.
    replaced_sessions: fresh rows that leave the group once something joins it.
    separate_advantage: the joined rows get their own group baseline (RePO), not the group's.
    drop_group_if_none: nothing usable leaves the group out of the step (ExGRPO: a K-1 group
        has no place in it)."""

    uid: str
    question_id: int
    candidates: list[Trajectory]
    count: int | None = None
    replaced_sessions: tuple[int, ...] = ()
    separate_advantage: bool = False
    drop_group_if_none: bool = False


CandidatesOf = Callable[[int], Sequence[Trajectory]]


def successes(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    return [t for t in trajectories if t.reward == 1]


def failures(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    return [t for t in trajectories if t.reward != 1]


def signal_gained(group: GroupOutcome, kept_rewards: np.ndarray, joined_rewards: np.ndarray, separate: bool) -> bool:
    """Whether a group without signal (all fresh rewards equal, so every GRPO advantage 0) has
    some after the join: a non-zero reward spread among the rows sharing a baseline,

        before: max r - min r = 0 over the fresh rows;
        after:  spread > 0 over kept + joined rows (shared baseline), or within either part
                (separate baselines)."""
    if not group.zero_variance or joined_rewards.size == 0:
        return False
    if separate:
        return bool(np.ptp(joined_rewards) > 0 or (kept_rewards.size and np.ptp(kept_rewards) > 0))
    return bool(np.ptp(np.concatenate([kept_rewards, joined_rewards])) > 0)


# ---- settings --------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoSettings:
    """ExGRPO's settings are the top-level `exgrpo.*` keys (replay_ratio, start_solve_rate, ...)."""


@dataclass(frozen=True)
class FillSettings:
    """replaced_row: which all-failed fresh row the stored success replaces: "last" (the highest
        session id, as ExGRPO's replayed slot) or "random" (seeded by seed, step and question).
    mirror_all_correct: also give an all-correct group a stored failure of its question, when one
        is stored (failures are then stored too).
    seed: for replaced_row=random."""

    replaced_row: str = "last"
    mirror_all_correct: bool = False
    seed: int = 0

    def __post_init__(self):
        check_choice("exgrpo.strategy_settings.replaced_row", self.replaced_row, ("last", "random"))
        check_bool("exgrpo.strategy_settings.mirror_all_correct", self.mirror_all_correct)
        check_int("exgrpo.strategy_settings.seed", self.seed, minimum=0)


@dataclass(frozen=True)
class RePOSettings:
    """replayed_per_question: M, the stored rollouts (successes and failures, most recent first)
    joined to every question of the step that has them; >= 2, since they are normalised among
    themselves (the paper: 8 on-policy + 8 off-policy)."""

    replayed_per_question: int = 8

    def __post_init__(self):
        check_int("exgrpo.strategy_settings.replayed_per_question", self.replayed_per_question, minimum=2)


@dataclass(frozen=True)
class RLEPSettings:
    """source: an earlier run's checkpoint folder (global_step_N) or its exgrpo/experience folder;
        its stored successes are the frozen replay set.
    replayed_per_question: M, successes of the set joined to each question of the step it holds.
    seed: which M of a question's successes (drawn uniformly, per step and question)."""

    source: str | None = None
    replayed_per_question: int = 2
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source:
            raise ValueError("exgrpo.strategy_settings.source: the rlep strategy needs the path of an earlier run's "
                             "checkpoint (…/global_step_N) whose experience it replays")
        check_int("exgrpo.strategy_settings.replayed_per_question", self.replayed_per_question, minimum=1)
        check_int("exgrpo.strategy_settings.seed", self.seed, minimum=0)


# ---- strategies ------------------------------------------------------------------------------
class ReplayStrategy:
    """Base: no question from the buffer, K fresh rollouts each, replay on from step 1, every
    step stored, PPO's clip kept on fresh tokens."""

    name: ClassVar[str]
    help: ClassVar[str]
    settings_class: ClassVar[type] = NoSettings
    frozen_source: ClassVar[bool] = False  # replays an earlier run's set, not this run's buffer

    def __init__(self, settings, group_size: int):
        self.settings = settings
        self.group_size = group_size

    @property
    def stores_failures(self) -> bool:
        return False

    def experience_question_count(self, pool_size: int, batch_size: int, replay_ratio: float, started: bool) -> int:
        return 0

    def fresh_rollouts(self, from_buffer: bool) -> int:
        return self.group_size

    def replay_starts(self, was_started: bool, solve_rate: float, threshold: float, replay_ratio: float) -> bool:
        return True

    def stores(self, was_started: bool, started: bool, collect_during_warmup: bool, from_switch_step: bool) -> bool:
        return True

    def removes_on_policy_clip(self, started: bool) -> bool:
        return False

    def requests(self, groups: Sequence[GroupOutcome], candidates_of: CandidatesOf, step: int) -> list[JoinRequest]:
        raise NotImplementedError

    def generations_saved(self, groups: Sequence[GroupOutcome]) -> int:
        """Rollouts never generated because a stored trajectory takes their place: K less the
        fresh rollouts of each question drawn from the buffer."""
        return sum(self.group_size - self.fresh_rollouts(True) for group in groups if group.from_buffer)


class ExGRPOStrategy(ReplayStrategy):
    name = "exgrpo"
    help = ("ExGRPO (the paper): round(rho B) questions drawn from the buffer's accuracy buckets get K-1 fresh "
            "rollouts plus one stored success chosen by experience.selection_metric; replay starts once a step's "
            "solve rate passes start_solve_rate, and PPO's clip then leaves fresh tokens")

    def experience_question_count(self, pool_size, batch_size, replay_ratio, started):
        return experience_question_count(pool_size, replay_ratio, batch_size) if started else 0

    def fresh_rollouts(self, from_buffer):
        return self.group_size - 1 if from_buffer else self.group_size

    def replay_starts(self, was_started, solve_rate, threshold, replay_ratio):
        return replay_starts(was_started, solve_rate, threshold, replay_ratio)

    def stores(self, was_started, started, collect_during_warmup, from_switch_step):
        return stores_successes(was_started, started, collect_during_warmup, from_switch_step)

    def removes_on_policy_clip(self, started):
        return started

    def requests(self, groups, candidates_of, step):
        return [JoinRequest(g.uid, g.question_id, successes(candidates_of(g.question_id)), drop_group_if_none=True)
                for g in groups if g.from_buffer]


class ZeroVarianceFillStrategy(ReplayStrategy):
    name = "zero_variance_fill"
    help = ("AR3PO-style response reuse: a question whose K fresh rollouts all failed gets one of them replaced by "
            "a stored success of that question (chosen by experience.selection_metric); optionally the mirror for "
            "all-correct groups with a stored failure; stores from step 1")
    settings_class = FillSettings

    @property
    def stores_failures(self):
        return self.settings.mirror_all_correct

    def requests(self, groups, candidates_of, step):
        requests = []
        for group in groups:
            if not group.zero_variance or not group.sessions:
                continue
            all_correct = bool((group.rewards == 1).all())
            if all_correct and not self.settings.mirror_all_correct:
                continue
            stored = candidates_of(group.question_id)
            candidates = failures(stored) if all_correct else successes(stored)
            if candidates:
                requests.append(JoinRequest(group.uid, group.question_id, candidates,
                                            replaced_sessions=(self._replaced_session(group, step),)))
        return requests

    def _replaced_session(self, group: GroupOutcome, step: int) -> int:
        if self.settings.replaced_row == "last":
            return max(group.sessions)
        rng = np.random.default_rng([self.settings.seed, step, group.question_id])
        return group.sessions[int(rng.integers(len(group.sessions)))]


class RePOStrategy(ReplayStrategy):
    name = "repo"
    help = ("RePO-style: every question of the step keeps its K fresh rollouts and gets its M most recent stored "
            "rollouts (successes and failures) added; the added ones are normalised among themselves, as the "
            "paper's separate off-policy advantage; stores from step 1")
    settings_class = RePOSettings

    @property
    def stores_failures(self):
        return True

    def requests(self, groups, candidates_of, step):
        requests = []
        for group in groups:
            stored = list(candidates_of(group.question_id))
            if stored:
                requests.append(JoinRequest(group.uid, group.question_id, stored,
                                            count=self.settings.replayed_per_question, separate_advantage=True))
        return requests


class RLEPStrategy(ReplayStrategy):
    name = "rlep"
    help = ("RLEP-style: a frozen set of verified successes from an earlier run's experience checkpoint; every "
            "question of the step that the set holds keeps its K fresh rollouts and gets M of them added, one "
            "group baseline over all K+M; nothing is stored")
    settings_class = RLEPSettings
    frozen_source = True

    def stores(self, was_started, started, collect_during_warmup, from_switch_step):
        return False

    def requests(self, groups, candidates_of, step):
        requests = []
        for group in groups:
            stored = successes(candidates_of(group.question_id))
            if stored:
                # A uniform draw of M: the trainer takes the last M usable of this order.
                order = np.random.default_rng([self.settings.seed, step, group.question_id]).permutation(len(stored))
                requests.append(JoinRequest(group.uid, group.question_id, [stored[i] for i in order],
                                            count=self.settings.replayed_per_question))
        return requests


STRATEGIES: dict[str, type[ReplayStrategy]] = {}


def register_strategy(cls: type[ReplayStrategy]) -> type[ReplayStrategy]:
    """Add a strategy to the registry under `cls.name` (a second class under one name is an error)."""
    if STRATEGIES.get(cls.name, cls) is not cls:
        raise ValueError(f"replay strategy {cls.name!r} is already registered as {STRATEGIES[cls.name].__name__}")
    STRATEGIES[cls.name] = cls
    return cls


for _strategy in (ExGRPOStrategy, ZeroVarianceFillStrategy, RePOStrategy, RLEPStrategy):
    register_strategy(_strategy)


def strategy_class(name: str) -> type[ReplayStrategy]:
    """The registered strategy `name`; an unknown one is an error listing the known ones."""
    if name not in STRATEGIES:
        raise ValueError(f"exgrpo.strategy={name!r}: unknown replay strategy; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def strategy_settings(name: str, values: dict | None):
    """The strategy's validated settings from `exgrpo.strategy_settings` (unknown keys are errors)."""
    settings_class = strategy_class(name).settings_class
    values = dict(values or {})
    allowed = sorted(f.name for f in dataclasses.fields(settings_class))
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"exgrpo.strategy_settings: unknown keys {unknown} for strategy {name}; allowed: {allowed}")
    return settings_class(**values)


def frozen_replay_set(source: str) -> ExperienceBuffer:
    """An earlier run's experience, read once and never changed (RLEP): `source` is its checkpoint
    folder (global_step_N, holding exgrpo/experience) or that experience folder itself."""
    folder = os.path.join(source, "exgrpo", "experience")
    folder = folder if os.path.isdir(folder) else source
    try:
        return ExperienceBuffer.load(folder)
    except (OSError, ValueError, CheckpointError) as error:
        raise ValueError(f"exgrpo.strategy_settings.source={source!r}: no experience checkpoint there ({error}); give an "
                         "earlier run's checkpoint folder (…/global_step_N)") from error


def build_strategy(name: str, values: dict | None, group_size: int) -> ReplayStrategy:
    return strategy_class(name)(strategy_settings(name, values), group_size)
