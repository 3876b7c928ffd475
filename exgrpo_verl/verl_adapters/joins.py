"""A step's joins: which stored trajectories enter which group, in which session, which fresh
rows leave, and the accounting of it all. Pure bookkeeping over TransferQueue keys; the trainer
reads and writes the rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from exgrpo_verl.algorithm import fresh_rows_mean_advantage
from exgrpo_verl.experience import Trajectory
from exgrpo_verl.strategies import GroupOutcome, JoinRequest, signal_gained
from exgrpo_verl.verl_adapters.rows import session_of_key, trajectory_key, uid_of_key


def separate_advantage_uid(uid: str) -> str:
    """The `uid` field of rows normalised apart from their group (verl groups advantages by it)."""
    return f"{uid}-replayed"


@dataclass(frozen=True)
class Placement:
    uid: str
    session: int
    trajectory: Trajectory
    separate_advantage: bool


@dataclass
class Joined:
    placed: list[Placement] = field(default_factory=list)
    replaced: set[tuple[str, int]] = field(default_factory=set)  # (uid, session) of fresh rows that leave
    dropped: set[str] = field(default_factory=set)  # groups that leave the step
    groups_given_signal: int = 0
    fresh_advantages: list[float] = field(default_factory=list)  # per group sharing its baseline with joined rows
    keys: list[str] = field(default_factory=list)  # the new rows, once built
    rows: list[dict] = field(default_factory=list)
    tags: list[dict] = field(default_factory=list)

    @property
    def trajectories(self) -> list[Trajectory]:
        return [p.trajectory for p in self.placed]

    def add_row(self, row: dict, tag: dict, placement: Placement) -> None:
        self.keys.append(trajectory_key(placement.uid, placement.session))
        self.rows.append(row)
        self.tags.append(tag)

    def leaves(self, key: str) -> bool:
        uid, session = uid_of_key(key), session_of_key(key)
        return uid in self.dropped or (uid, session) in self.replaced

    def leaving_keys(self, keys: list[str]) -> list[str]:
        return [key for key in keys if self.leaves(key)]

    def kept_positions(self, keys: list[str]) -> list[int]:
        return [i for i, key in enumerate(keys) if not self.leaves(key)]

    def metrics(self, groups: dict[str, GroupOutcome], rows_before: int, step: int, generations_saved: int) -> dict:
        """The step's replay accounting (exgrpo/...): what was generated, replayed, replaced, dropped,
        and how many groups without signal got some."""
        rows_after = rows_before - len(self.replaced) - sum(len(g.sessions) for uid, g in groups.items() if uid in self.dropped) + len(self.placed)
        ages = [step - p.trajectory.step for p in self.placed]
        return {
            "exgrpo/generated_rollouts": sum(len(g.sessions) for g in groups.values()),
            "exgrpo/generations_saved": generations_saved,
            "exgrpo/replayed_questions": len({p.uid for p in self.placed}),
            "exgrpo/replayed_rows": len(self.placed),
            "exgrpo/replaced_rows": len(self.replaced),
            "exgrpo/replay_fraction": len(self.placed) / max(rows_after, 1),
            "exgrpo/replay_dropped_groups": len(self.dropped),
            "exgrpo/replayed_mean_age": float(np.mean(ages)) if ages else 0.0,
            "exgrpo/zero_variance_groups": sum(g.zero_variance for g in groups.values()),
            "exgrpo/groups_given_signal": self.groups_given_signal,
            # The fresh rows' mean advantage in groups joined by stored trajectories (0 when none).
            "exgrpo/experience_groups": len(self.fresh_advantages),
            "exgrpo/experience_group_fresh_advantage": float(np.mean(self.fresh_advantages)) if self.fresh_advantages else 0.0,
        }


def build_joins(requests: list[JoinRequest], chosen: dict[str, list[Trajectory]], groups: dict[str, GroupOutcome]) -> Joined:
    """Place each request's chosen trajectories: into the sessions of the fresh rows they replace
    first, then after the group's last session (ExGRPO: K-1 fresh rows 0..K-2, its replayed row K-1).
    A request with nothing chosen drops its group if it says so, and changes nothing otherwise."""
    joined = Joined()
    for request in requests:
        group, trajectories = groups[request.uid], chosen[request.uid]
        if not trajectories:
            if request.drop_group_if_none:
                joined.dropped.add(request.uid)
            continue
        replaced = request.replaced_sessions[: len(trajectories)]
        after = max(group.sessions, default=-1) + 1
        sessions = list(replaced) + list(range(after, after + len(trajectories) - len(replaced)))
        joined.replaced.update((request.uid, s) for s in replaced)
        joined.placed.extend(Placement(request.uid, s, t, request.separate_advantage) for s, t in zip(sessions, trajectories))
        kept = np.asarray([r for s, r in zip(group.sessions, group.rewards) if s not in replaced], dtype=np.float64)
        added = np.asarray([t.reward for t in trajectories], dtype=np.float64)
        joined.groups_given_signal += signal_gained(group, kept, added, request.separate_advantage)
        if not request.separate_advantage:
            joined.fresh_advantages.append(fresh_rows_mean_advantage(kept, added))
    return joined
