"""The experience buffer: ExGRPO's memory of partly solved questions and their correct rollouts.

One training step, as the trainer adapter drives it:

    buf = ExperienceBuffer(ExperienceConfig(group_size=8, seed=0))
    qids = buf.sample_questions(n)                  # experience questions for this step
    for qid in qids:
        cands = buf.candidates(qid)                 # Trajectory copies, oldest first
        scores = ...                                # current-policy entropy, iff config.needs_forward_pass
        traj = buf.select(qid, scores)              # the one to replay
    buf.mark_replayed([traj.id, ...], step)
    buf.update(step, [GroupResult(...), ...], store=True)   # collect; accuracies, buckets, retirement
    buf.save(directory); buf = ExperienceBuffer.load(directory)

With `record_operations()` on, every call that changes the buffer is also kept as an `Operation`
(journal.py); `take_operations()` hands them over, and `replay(operations)` repeats them on the
buffer they started from, giving back the same state: the experience log between checkpoints.

What happens in `update`, per group of n members with k correct (n = K: for a replayed question
its K-1 fresh rollouts plus the replayed member, `GroupResult.replayed_correct`, which counts as
correct but is not stored again):
- k == n: the question is retired for good (never sampled again; its trajectories are freed).
- k == 0: accuracy 0; "drop_from_pool" takes it out of the pool (trajectories kept),
  "keep_stale" leaves it in its old bucket.
- 0 < k < n: accuracy k/n, bucket `bucket_of(k, n, K)` (the nearest count out of K); with
  store=True every rollout that is correct, ended with EOS and has finite log-probs is stored
  unless the question already holds the same token ids (then the per-question cap applies).
  A step's cost is about one pass over the stored rollouts' arrays: they are copied into the
  arena, their log-probs checked there (in the cache), and duplicates found by comparing with
  the question's trajectories of the same length (no hashing).
A question is in the pool (sampleable) iff it has a bucket and holds at least one trajectory
(a retired question has neither). After the groups, max_age_steps and then max_total_tokens evict the oldest
trajectories (see `_enforce_token_cap`), and the token arena reclaims its holes (arena.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from . import checkpoint_layout as layout
from .arena import TokenArena
from .config import ExperienceConfig
from .journal import Operation
from .persistence import RESUME_ADVICE, ArrayChunks, CheckpointError, read_checkpoint, write_checkpoint
from .pool import QuestionPool
from .results import CheckedGroup, GroupResult, check_group
from .sampling import bucket_of, sample_questions
from .selection import select_index

EVICTION_REASONS = ("question_cap", "token_cap", "max_age", "retired")
BYTES_PER_TOKEN = 8  # int32 token id + float32 log-prob
# Per-question visit counts are reported as how many questions fall in each bin (lower bounds).
FRESH_VISIT_BINS = (1, 2, 3, 5)
REPLAY_BINS = (1, 2, 3, 5, 9)


@dataclass(frozen=True)
class Trajectory:
    """A stored trajectory, with copies of its arrays. Its age is `buffer.step - step`."""

    id: int
    question_id: int
    step: int  # the step it was collected in
    response_ids: np.ndarray  # int32
    log_probs: np.ndarray  # float32, behaviour policy at collection
    reward: float
    entropy_mean: float | None  # token-mean entropy at collection, if entropies were given
    replay_count: int
    last_replayed_step: int | None


@dataclass(frozen=True)
class QuestionView:
    """What the buffer knows about one question (copies)."""

    question_id: int
    accuracy: float  # latest k/n
    bucket: int | None  # its pool bucket; None when it is not sampleable
    num_trajectories: int
    last_step: int  # the step of its latest result
    prompt_ids: np.ndarray | None
    payload: dict | None


@dataclass(slots=True)
class _Stored:
    id: int
    question_id: int
    step: int
    length: int
    reward: float
    entropy_mean: float | None
    replay_count: int = 0
    last_replayed_step: int | None = None


@dataclass(slots=True)
class _Question:
    question_id: int
    accuracy: float
    last_step: int
    bucket: int | None = None  # from the latest result, after the zero-accuracy policy
    traj_ids: list[int] = field(default_factory=list)  # collection order, oldest first
    fresh_visits: int = 0  # groups of fresh rollouts it had (warm-up included); kept after retirement
    replays: int = 0  # replays of its stored trajectories; kept after they are freed
    # Kept only while the question holds trajectories: they exist to rebuild a replay row.
    prompt_ids: np.ndarray | None = None
    payload: dict | None = None


def all_finite(values: np.ndarray) -> bool:
    """True iff every float32 value is finite, in one pass: their float64 sum is finite
    (finite float32 values cannot overflow it; any inf or NaN makes it inf or NaN)."""
    return math.isfinite(np.add.reduce(values, dtype=np.float64))


def visit_histogram(name: str, counts: Sequence[int], lower_bounds: Sequence[int]) -> dict[str, int]:
    """How many of `counts` fall in each bin [lower_bounds[i], lower_bounds[i+1]), the last bin
    open: {"name/1": ..., "name/3-4": ..., "name/9+": ...}. Counts below the first bound (questions
    never visited that way) are left out."""
    edges = np.asarray(lower_bounds, dtype=np.int64)
    per_bin = np.bincount(np.searchsorted(edges, np.asarray(counts, dtype=np.int64), side="right"),
                          minlength=len(edges) + 1)[1:]
    labels = [str(low) if high - low == 1 else f"{low}-{high - 1}" for low, high in zip(edges[:-1], edges[1:])]
    labels.append(f"{edges[-1]}+")
    return {f"{name}/{label}": int(count) for label, count in zip(labels, per_bin)}


class ExperienceBuffer:
    def __init__(self, config: ExperienceConfig | None = None):
        self.config = config if config is not None else ExperienceConfig()
        self._rng = np.random.default_rng(self.config.seed)
        self.step = 0  # the step of the latest update
        self._arena = TokenArena()
        self._trajectories: OrderedDict[int, _Stored] = OrderedDict()  # id order = collection order
        self._questions: dict[int, _Question] = {}
        self._retired: set[int] = set()
        self._pool = QuestionPool(self.config.group_size)
        self._next_id = 0
        self._step_sum = 0  # sum of the stored trajectories' collection steps, for the mean age
        self._evictions = dict.fromkeys(EVICTION_REASONS, 0)
        self._counters = {"collected_total": 0, "duplicates_skipped": 0, "replays_total": 0}
        self._replayed_stored = 0  # stored trajectories replayed at least once
        self._operations: list[Operation] | None = None  # None: not recording

    # ---- collect ---------------------------------------------------------------------------
    def update(self, step: int, groups: Sequence[GroupResult], store: bool = True) -> None:
        """Record one step's results; with store=False (warm-up) only accuracies and retirement change.

        The whole step is validated before anything changes. Groups are applied in order, so a
        question that appears twice ends with the later group's accuracy.
        """
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < self.step:
            raise ValueError(f"update: step={step!r} must be an int >= the previous step {self.step}")
        require_entropies = store and self.config.selection_metric == "stored_entropy"
        checked = [check_group(group, self.config.group_size, require_entropies, self.config.store_failures) for group in groups]
        if not store:  # nothing of them is stored: the log need not carry the rollouts
            checked = [copy.copy(group) for group in checked]
            for group in checked:
                group.storable = []
        self._record("update", step=int(step), groups=checked, store=bool(store))
        self._apply_step(int(step), checked, store)

    def _apply_step(self, step: int, checked: Sequence[CheckedGroup], store: bool) -> None:
        self.step = step
        for group in checked:
            self._apply(group, store)
        self._evict_stale()
        self._enforce_token_cap()
        self._arena.compact()

    def _apply(self, group: CheckedGroup, store: bool) -> None:
        qid = group.question_id
        if qid in self._retired:  # retirement is permanent; late results are ignored
            return
        k, n = group.num_correct, group.num_rollouts
        question = self._questions.setdefault(qid, _Question(question_id=qid, accuracy=k / n, last_step=self.step))
        question.accuracy, question.last_step = k / n, self.step
        question.fresh_visits += 1
        if k == n:
            self._retire(qid, question)
            return
        if k == 0:
            if self.config.zero_accuracy_policy == "drop_from_pool":
                question.bucket = None
        else:
            question.bucket = bucket_of(k, n, self.config.group_size)
            if store:
                self._store(qid, question, group)
        if question.traj_ids:
            if group.prompt_ids is not None:
                question.prompt_ids = group.prompt_ids
            if group.payload is not None:
                question.payload = group.payload
        self._sync_pool(qid)

    def _store(self, qid: int, question: _Question, group: CheckedGroup) -> None:
        for rollout in group.storable:
            if self._holds(question, rollout.token_ids):
                self._counters["duplicates_skipped"] += 1
                continue
            record = _Stored(id=self._next_id, question_id=qid, step=self.step, length=rollout.token_ids.shape[0],
                             reward=rollout.reward, entropy_mean=rollout.entropy_mean)
            self._arena.append(record.id, rollout.token_ids, rollout.log_probs)
            if not all_finite(self._arena.view(record.id)[1]):
                self._arena.release(record.id)
                continue
            self._next_id += 1
            self._trajectories[record.id] = record
            question.traj_ids.append(record.id)
            self._step_sum += record.step
            self._counters["collected_total"] += 1
            cap = self.config.max_trajectories_per_question
            if cap is not None and len(question.traj_ids) > cap:
                self._evict(self._trajectories[question.traj_ids[0]], "question_cap")

    def _holds(self, question: _Question, token_ids: np.ndarray) -> bool:
        """Whether the question already stores exactly these token ids."""
        length = token_ids.shape[0]
        return any(self._trajectories[traj_id].length == length
                   and np.array_equal(self._arena.view(traj_id)[0], token_ids) for traj_id in question.traj_ids)

    def _retire(self, qid: int, question: _Question) -> None:
        """Out of the pool for good: no bucket, no trajectories, and `_apply` ignores it from now on."""
        question.bucket = None
        self._retired.add(qid)
        for traj_id in list(question.traj_ids):
            self._evict(self._trajectories[traj_id], "retired")
        self._sync_pool(qid)

    def _sync_pool(self, qid: int) -> None:
        """Keep the pool equal to: has a bucket and holds a trajectory (retired questions have neither)."""
        question = self._questions[qid]
        self._pool.place(qid, question.bucket if question.traj_ids else None)

    # ---- eviction --------------------------------------------------------------------------
    def _oldest(self) -> _Stored:
        return next(iter(self._trajectories.values()))

    def _evict_stale(self) -> None:
        """Evict trajectories with age = step - step_collected > max_age_steps (oldest first)."""
        if self.config.max_age_steps is None:
            return
        while self._trajectories and self.step - self._oldest().step > self.config.max_age_steps:
            self._evict(self._oldest(), "max_age")

    def _enforce_token_cap(self) -> None:
        """Evict the globally oldest trajectories until the stored tokens fit max_total_tokens.

        Oldest first even when it is a question's last trajectory: a question whose newest
        success is the oldest thing in the buffer has the most off-policy data, and it returns
        to the pool as soon as it is solved partly again (its accuracy is kept).
        """
        if self.config.max_total_tokens is None:
            return
        while self._arena.live > self.config.max_total_tokens:
            self._evict(self._oldest(), "token_cap")

    def _evict(self, record: _Stored, reason: str) -> None:
        del self._trajectories[record.id]
        question = self._questions[record.question_id]
        question.traj_ids.remove(record.id)
        if not question.traj_ids:
            question.prompt_ids = question.payload = None
        self._arena.release(record.id)
        self._step_sum -= record.step
        self._replayed_stored -= record.replay_count > 0
        self._evictions[reason] += 1
        self._sync_pool(record.question_id)

    # ---- sampling and selection ------------------------------------------------------------
    def sample_questions(self, n: int) -> list[int]:
        """min(n, pool size) distinct pooled question ids, by config.question_sampling."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"sample_questions: n={n!r} must be an int >= 0")
        cfg = self.config
        self._record("sample_questions", n=int(n))
        return sample_questions(self._pool, int(n), cfg.question_sampling, cfg.bucket_mu, cfg.sigma, self._rng)

    def _candidate_records(self, qid: int) -> list[_Stored]:
        """The question's most recent max_candidates_per_question trajectories (None: all), oldest first."""
        question = self._questions.get(qid)
        if question is None:
            return []
        limit = self.config.max_candidates_per_question
        ids = question.traj_ids if limit is None else question.traj_ids[-limit:]
        return [self._trajectories[t] for t in ids]

    def candidates(self, qid: int) -> list[Trajectory]:
        """What `select` chooses from, in the order `scores` must follow ([] if none stored)."""
        return [self._view(record) for record in self._candidate_records(qid)]

    def select(self, qid: int, scores=None, among: Sequence[int] | None = None) -> Trajectory:
        """The trajectory to replay; `scores` (one per candidate) iff config.needs_forward_pass.

        among: trajectory ids of `candidates(qid)` the caller can use (e.g. those that fit its length
        limit); the choice is made among them only, and `scores` then has one entry per id in `among`,
        in candidate order.
        """
        records = self._candidate_records(qid)
        if among is not None:
            allowed = set(among)
            unknown = allowed - {r.id for r in records}
            if unknown:
                raise ValueError(f"select: trajectories {sorted(unknown)[:5]} are not candidates of question {qid}")
            records = [r for r in records if r.id in allowed]
        if not records:
            raise ValueError(f"select: question {qid} has no stored trajectories" + ("" if among is None else " among those given"))
        if self._operations is not None:  # converted only when recording
            self._record("select", qid=int(qid), scores=None if scores is None else np.asarray(scores, dtype=np.float64),
                         among=None if among is None else [int(i) for i in among])
        index = select_index(self.config.selection_metric, [r.entropy_mean for r in records], scores, self._rng)
        return self._view(records[index])

    def mark_replayed(self, traj_ids: Iterable[int], step: int) -> None:
        """Count one replay of each trajectory at `step` (all ids are checked first)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"mark_replayed: step={step!r} must be an int >= 0")
        records = []
        for traj_id in traj_ids:
            record = self._trajectories.get(int(traj_id))
            if record is None:
                raise ValueError(f"mark_replayed: trajectory {traj_id} is not stored (never collected or evicted)")
            records.append(record)
        self._record("mark_replayed", traj_ids=[record.id for record in records], step=int(step))
        for record in records:
            self._replayed_stored += record.replay_count == 0
            record.replay_count += 1
            record.last_replayed_step = int(step)
            self._questions[record.question_id].replays += 1
            self._counters["replays_total"] += 1

    def _view(self, record: _Stored) -> Trajectory:
        response_ids, log_probs = self._arena.read(record.id)
        return Trajectory(id=record.id, question_id=record.question_id, step=record.step,
                          response_ids=response_ids, log_probs=log_probs, reward=record.reward,
                          entropy_mean=record.entropy_mean, replay_count=record.replay_count,
                          last_replayed_step=record.last_replayed_step)

    # ---- questions -------------------------------------------------------------------------
    def question(self, qid: int) -> QuestionView | None:
        """What the buffer knows about a question; None if it never saw it."""
        question = self._questions.get(qid)
        if question is None:
            return None
        return QuestionView(
            question_id=qid, accuracy=question.accuracy, bucket=self._pool.bucket(qid),
            num_trajectories=len(question.traj_ids), last_step=question.last_step,
            prompt_ids=None if question.prompt_ids is None else question.prompt_ids.copy(),
            payload=copy.deepcopy(question.payload))

    def is_retired(self, qid: int) -> bool:
        return qid in self._retired

    @property
    def retired_ids(self) -> frozenset[int]:
        """Questions solved K/K: the data sampler should skip them."""
        return frozenset(self._retired)

    # ---- metrics ---------------------------------------------------------------------------
    @property
    def pool_size(self) -> int:
        """Questions that can be sampled now (metrics()["pool_size"] without the other metrics)."""
        return len(self._pool)

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the logger (the caller adds its own prefix)."""
        stored = len(self._trajectories)
        prompt_tokens = sum(q.prompt_ids.size for q in self._questions.values() if q.prompt_ids is not None)
        metrics = {
            "pool_size": len(self._pool),
            "questions_known": len(self._questions),
            "retired": len(self._retired),
            "trajectories": stored,
            "tokens": self._arena.live,
            "bytes": BYTES_PER_TOKEN * self._arena.live + 4 * prompt_tokens,
            "mean_age": self.step - self._step_sum / stored if stored else 0.0,
            "max_age": self.step - self._oldest().step if stored else 0.0,
            "replayed_trajectories": self._replayed_stored,
            **self._counters,
        }
        for bucket, size in zip(range(1, self.config.group_size), self._pool.sizes()):
            metrics[f"bucket/{bucket}"] = size
        for reason, count in self._evictions.items():
            metrics[f"evicted/{reason}"] = count
        questions = self._questions.values()
        metrics.update(visit_histogram("question_fresh_visits", [q.fresh_visits for q in questions], FRESH_VISIT_BINS))
        metrics.update(visit_histogram("question_replays", [q.replays for q in questions], REPLAY_BINS))
        return {key: float(value) for key, value in metrics.items()}

    # ---- the experience log ------------------------------------------------------------------
    def record_operations(self) -> None:
        """From now on, keep every call that changes the buffer (see `take_operations`)."""
        self._operations = []

    def take_operations(self) -> list[Operation]:
        """The calls kept since the previous take, oldest first."""
        if self._operations is None:
            raise RuntimeError("take_operations: call record_operations() first")
        operations, self._operations = self._operations, []
        return operations

    def replay(self, operations: Sequence[Operation]) -> None:
        """Repeat recorded calls in order (not recording them again)."""
        recording, self._operations = self._operations, None
        try:
            for operation in operations:
                if operation.name == "update":
                    self._apply_step(operation.args["step"], operation.args["groups"], operation.args["store"])
                else:
                    getattr(self, operation.name)(**operation.args)
        finally:
            self._operations = recording

    def _record(self, name: str, **args) -> None:
        if self._operations is not None:
            self._operations.append(Operation(name, args))

    def state_sha256(self) -> str:
        """SHA-256 of everything a checkpoint would hold (arrays, RNG, counters, config): equal
        digests mean equal buffers. A pass over the stored tokens: for checks, not every step at scale."""
        arrays, state = self._export_state()
        digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode())
        for name in sorted(arrays):
            value = arrays[name]
            pieces = value.pieces if isinstance(value, ArrayChunks) else [np.ascontiguousarray(value)]
            digest.update(name.encode())
            for piece in pieces:
                digest.update(np.ascontiguousarray(piece).data)
        return digest.hexdigest()

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write a checkpoint directory atomically (format: persistence.py)."""
        arrays, state = self._export_state()
        write_checkpoint(directory, arrays, state)

    @classmethod
    def load(cls, directory: str | Path, config: ExperienceConfig | None = None) -> "ExperienceBuffer":
        """A new buffer from a checkpoint; `config` (same group_size) replaces the saved config.

        Raises CheckpointError, naming the file and the problem, for a missing, truncated,
        corrupt, wrong-version or mismatched checkpoint; nothing that exists is modified.
        """
        arrays, state = read_checkpoint(directory)
        try:
            buf = cls._from_state(arrays, state)
        except CheckpointError:
            raise
        except Exception as error:  # the files passed their checksums: a writer bug or a hand edit
            raise CheckpointError(f"experience checkpoint {directory}: contents are inconsistent ({error!r}). "
                                  f"{RESUME_ADVICE}") from None
        if config is not None:
            if config.group_size != buf.config.group_size:
                raise CheckpointError(
                    f"experience checkpoint {directory}: saved with group_size={buf.config.group_size}, but this "
                    f"run has group_size={config.group_size}; buckets are counts out of K, so the buffer cannot "
                    f"carry over. Use group_size={buf.config.group_size} or start with a fresh buffer.")
            buf.config = config  # new caps apply from the next update; the RNG keeps its saved state
        return buf

    def _export_state(self) -> tuple[dict[str, np.ndarray | ArrayChunks], dict]:
        """The whole buffer as named arrays (layout: checkpoint_layout.py) and a JSON-able dict."""
        records, questions = list(self._trajectories.values()), list(self._questions.values())
        runs = list(self._arena.runs(self._trajectories))
        arrays = {
            layout.TOKENS: ArrayChunks(np.int32, self._arena.live, (ids for ids, _ in runs)),
            layout.LOG_PROBS: ArrayChunks(np.float32, self._arena.live, (logp for _, logp in runs)),
            **layout.to_columns(layout.TRAJECTORY_COLUMNS, records),
            **layout.to_columns(layout.QUESTION_COLUMNS, questions),
            **layout.to_ragged(layout.PROMPTS, (q.prompt_ids for q in questions)),
            **layout.to_ragged(layout.POOL, (self._pool.members(b) for b in range(1, self.config.group_size))),
            layout.RETIRED: np.array(sorted(self._retired), dtype=np.int64),
        }
        state = {
            "config": self.config.to_dict(),
            "step": self.step,
            "next_id": self._next_id,
            "rng": self._rng.bit_generator.state,
            "evictions": self._evictions,
            "counters": self._counters,
            "payloads": {str(q.question_id): q.payload for q in questions if q.payload is not None},
        }
        return arrays, state

    @classmethod
    def _from_state(cls, arrays: dict, state: dict) -> "ExperienceBuffer":
        """The inverse of `_export_state`; raises on anything inconsistent. The token arrays are
        `ArrayFile`s, read straight into the arena (CheckpointError if their checksum fails)."""
        buf = cls(ExperienceConfig.from_dict(state["config"]))
        buf._rng.bit_generator.state = state["rng"]
        buf.step, buf._next_id = int(state["step"]), int(state["next_id"])
        buf._evictions = {reason: int(state["evictions"][reason]) for reason in EVICTION_REASONS}
        buf._counters = {name: int(state["counters"][name]) for name in buf._counters}
        buf._retired = set(layout.array(arrays, layout.RETIRED, np.int64).tolist())
        buf._restore_questions(arrays, {int(qid): payload for qid, payload in state["payloads"].items()})
        buf._restore_trajectories(arrays)
        buf._restore_pool(arrays)
        return buf

    def _restore_questions(self, arrays: dict, payloads: dict[int, dict]) -> None:
        q = layout.from_columns(arrays, layout.QUESTION_COLUMNS)
        prompts = layout.from_ragged(arrays, layout.PROMPTS)
        layout.check(len(prompts) == len(q["question_id"]), f"{layout.PROMPTS.lengths}: one per question")
        for qid, accuracy, last_step, bucket, fresh_visits, replays, prompt in zip(
                q["question_id"], q["accuracy"], q["last_step"], q["bucket"], q["fresh_visits"], q["replays"], prompts):
            self._questions[qid] = _Question(question_id=qid, accuracy=accuracy, last_step=last_step, bucket=bucket,
                                             fresh_visits=fresh_visits, replays=replays,
                                             prompt_ids=None if prompt is None else prompt.copy(),
                                             payload=payloads.get(qid))

    def _restore_trajectories(self, arrays: dict) -> None:
        """Records in collection order; their spans read from the checkpoint into the arena."""
        t = layout.from_columns(arrays, layout.TRAJECTORY_COLUMNS)
        tokens = layout.array(arrays, layout.TOKENS, np.int32)
        log_probs = layout.array(arrays, layout.LOG_PROBS, np.float32)
        ids, lengths = t["id"], np.array(t["length"], dtype=np.int64)
        layout.check(tokens.size == log_probs.size == lengths.sum() and bool(np.all(lengths > 0)),
                     "tokens / log_probs sizes != sum of traj_length (or a length <= 0)")
        layout.check(all(a < b for a, b in zip(ids, ids[1:])) and not any(i >= self._next_id for i in ids),
                     "traj_id must increase and stay below next_id")
        for traj_id, qid, step, length, reward, entropy, replays, last_replayed in zip(
                ids, t["question_id"], t["step"], t["length"], t["reward"], t["entropy_mean"], t["replay_count"],
                t["last_replayed_step"]):
            self._trajectories[traj_id] = _Stored(id=traj_id, question_id=qid, step=step, length=length, reward=reward,
                                                  entropy_mean=entropy, replay_count=replays,
                                                  last_replayed_step=last_replayed)
            self._questions[qid].traj_ids.append(traj_id)
            self._step_sum += step
            self._replayed_stored += replays > 0
        destinations = self._arena.reserve(ids, lengths)
        tokens.read_into(token_ids for token_ids, _ in destinations)
        log_probs.read_into(logp for _, logp in destinations)

    def _restore_pool(self, arrays: dict) -> None:
        """The saved member order of every bucket (seeded draws depend on it), checked against the questions."""
        buckets = layout.from_ragged(arrays, layout.POOL)
        layout.check(len(buckets) == self.config.group_size - 1, f"{layout.POOL.lengths}: one per bucket 1..K-1")
        for bucket, members in enumerate(buckets, start=1):
            for qid in members.tolist():
                self._pool.place(qid, bucket)
        sampleable = {qid: q.bucket for qid, q in self._questions.items() if q.bucket is not None and q.traj_ids}
        layout.check(len(self._pool) == len(sampleable) and all(self._pool.bucket(qid) == bucket
                                                                for qid, bucket in sampleable.items()),
                     "pool does not match the questions")
