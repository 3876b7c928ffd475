"""ExGRPO in verl 0.9.1's V1 trainer: `trainer.v1.trainer_mode=exgrpo`.

A subclass of verl's synchronous trainer. One step reads forward through the hooks below:

    prepare_step          the replay strategy (exgrpo_verl.strategies) says how many questions
                          come from the buffer; ExGRPO samples them
    _fetch_one_gen_batch  their prompt rows, marked `exgrpo_experience` = 1 (the marker travels
                          onto every trajectory row), with the strategy's rollout count each
                          (`__rollout_n__`: K-1 for ExGRPO) + fresh rows, skipping retired
                          questions                            -> verl rollout + reward
    _balance_batch        the strategy's join requests, rewards known: stored trajectories
                          usable on the group's prompt, scored under the current policy when the
                          selection metric needs it (one batched forward pass), written into
                          their groups (joins.py), replaced or dropped rows cleared
                                                               -> verl balance
    _compute_old_log_prob verl's pass, then each replayed row's old log-probs := the stored
                          ones it carries in rollout_log_probs
                                                               -> advantage ("exgrpo"), update
                                                                  (our loss, set_loss_fn)
    step                  collect the step's results into the buffer; start replay once the
                          solve rate passes the threshold; metrics under exgrpo/
    _save/_load_checkpoint  the buffer and phase beside verl's checkpoint; with
                          exgrpo.experience_log, the log of the buffer's calls since then

The algorithm itself lives in exgrpo_verl.algorithm / mixing / experience; this module
moves rows between verl and those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import uuid
from typing import NamedTuple

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import OmegaConf, open_dict
from tensordict import TensorDict
from transfer_queue import KVBatchMeta

from exgrpo_verl import best_model, checkpoint_retention
from exgrpo_verl.algorithm import trajectory_selection_score
from exgrpo_verl.config import ExGRPOConfig, raise_on_incompatible_verl_settings
from exgrpo_verl.data.rows import row_index
from exgrpo_verl.experience import ExperienceBuffer
from exgrpo_verl.experience.journal import ExperienceLog, new_run_id
from exgrpo_verl.hf_generation import eos_token_ids
from exgrpo_verl.mixing import solve_rate
from exgrpo_verl.strategies import GroupOutcome, JoinRequest, frozen_replay_set
from exgrpo_verl.verl_adapters import checkpoint, reward_manager
from exgrpo_verl.verl_adapters.grad_norm_guard import SKIPPED_METRIC
from exgrpo_verl.verl_adapters.joins import Joined, build_joins, separate_advantage_uid
from exgrpo_verl.verl_adapters.loss import replay_weight_means, worker_loss_fn
from exgrpo_verl.verl_adapters.rows import (
    EXPERIENCE_MARKER,
    GROUP_FIELDS,
    STEP_FIELDS,
    build_replayed_row,
    group_results_from_step,
    groups_of_rows,
    replayable_candidates,
    replayed_row_tag,
    trajectory_key,
    uid_of_key,
)
from verl import DataProto
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.dataset.rl_dataset import collate_fn
from verl.utils.debug import marked_timer
from verl.utils.debug.metrics import calculate_debug_metrics
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.workers.utils.padding import response_from_nested

logger = logging.getLogger(__name__)

TRAINER_NAME = "exgrpo"
EXPERIENCE_LOG = "exgrpo_experience.log"  # in trainer.default_local_dir


def question_positions(extra_infos) -> dict[int, int]:
    """Map each training row's question id (extra_info.index) to its dataset position.

    ExGRPO tracks questions by this id across steps and checkpoints, so every row needs a
    unique integer one (verl silently uses 0 when it is missing)."""
    positions: dict[int, int] = {}
    for position, extra_info in enumerate(extra_infos):
        index = row_index({"extra_info": extra_info})
        if index is None:
            raise ValueError(
                f"training row {position}: extra_info.index={(extra_info or {}).get('index')!r}; ExGRPO needs a unique "
                "integer question id in every row's extra_info.index (scripts/prepare_data.py writes it)"
            )
        if index in positions:
            raise ValueError(
                f"training rows {positions[index]} and {position} share extra_info.index={index}; "
                "question ids must be unique"
            )
        positions[index] = position
    return positions


class Sibling(NamedTuple):
    """A fresh row of a group (its fields) and its TransferQueue tag."""

    row: dict
    tag: dict


def inference_micro_batch(rows: int, ranks: int, configured: int | None, dynamic: bool) -> int | None:
    """Rows per micro-batch for a forward pass over `rows` rows on `ranks` data-parallel ranks:
    the configured log-prob micro-batch, but no larger than one rank's share (so that a few
    candidates are not padded up to a micro-batch of B*K rows); None under token-budget
    micro-batches (verl sizes those itself)."""
    if dynamic:
        return None
    return min(configured, -(-rows // ranks))


def update_batch_multiple(group_size: int, ranks: int, micro_batch_per_rank: int | None, mini_batches: int) -> int:
    """The multiple of rows verl pads a step's batch to (with its no-op rows) before the update:
    `mini_batches` equal mini-batches, each divisible by the group size (verl's mini-batch is
    ppo_mini_batch_size x n rows) and by ranks x micro-batch rows (verl splits a rank's share into
    micro-batches of that size; None under token-budget micro-batches).

    verl pads to a multiple of its configured mini-batch instead, which turns a batch that a
    strategy enlarged (RePO and RLEP add rows) into one more optimizer step, on the rows beyond
    the first mini-batch and verl's padding. For a batch of B x n rows both multiples leave it as
    it is."""
    return math.lcm(group_size, ranks * (micro_batch_per_rank or 1)) * mini_batches


def _padded(nested: torch.Tensor) -> torch.Tensor:
    return torch.nested.to_padded_tensor(nested, 0.0) if nested.is_nested else nested


@register_trainer(TRAINER_NAME)
class ExGRPOTrainer(PPOTrainerSync):
    def __init__(self, config):
        self.settings = ExGRPOConfig.from_dict(OmegaConf.to_container(config.get("exgrpo") or {}, resolve=True))
        if self.settings.enabled:
            raise_on_incompatible_verl_settings(config)
        self.group_size = int(config.actor_rollout_ref.rollout.n)
        self.strategy = self.settings.replay_strategy(self.group_size)
        self.experience = ExperienceBuffer(self.settings.experience_config(self.group_size))
        self._frozen_set = frozen_replay_set(self.strategy.settings.source) if self.strategy.frozen_source else None
        self.replay_started = False
        self._fresh_carry: list[int] = []  # question ids fetched from the data loader, not yet used
        self._step_questions: set[int] = set()  # every question of the current step
        self._step_experience: list[int] = []  # experience question ids still to submit this step
        self._experience_log: ExperienceLog | None = None
        self._run_id: str | None = None  # set by _load_checkpoint; in the manifest of every checkpoint it saves
        # verl's base class means "sync" wherever it checks the mode; ours is sync too.
        with open_dict(config):
            config.trainer.v1.trainer_mode = "sync"
        super().__init__(config)
        self.replay_buffer.poll_interval = self.settings.sampler_poll_interval_s

    @property
    def _replay_source(self) -> ExperienceBuffer:
        """Where replayed trajectories come from: this run's buffer (as restored on resume), or an
        earlier run's, frozen (RLEP)."""
        return self._frozen_set if self._frozen_set is not None else self.experience

    # ---- set-up ------------------------------------------------------------------------------
    def _init_dataloader(self):
        super()._init_dataloader()
        self._position_of = question_positions(self.train_dataset.dataframe["extra_info"])
        self._data_fingerprint = checkpoint.fingerprint_of_rows(list(self._position_of), self.train_dataset.dataframe,
                                                                self.config.data.get("prompt_key", "prompt"))

    def on_init_end(self):
        super().on_init_end()
        generation_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.model).generation_config
        self._eos_ids = set(eos_token_ids(self.tokenizer, generation_config))
        self._install_loss()

    def _install_loss(self):
        """Our worker loss, for the current phase (the on-policy clip goes when replay starts),
        carrying the gradient-norm threshold to the engine (grad_norm_guard); rho = 0 gets the
        warm-up loss for good (worker_loss_fn)."""
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        started = self.strategy.removes_on_policy_clip(self.replay_started)
        self.actor_rollout_wg.set_loss_fn(worker_loss_fn(actor_config, self.settings, replay_started=started))

    # ---- 1. which prompts this step ----------------------------------------------------------
    def _add_async_warmup_batches(self, num_warmup_batches) -> None:
        # Only verl's async trainers call this: their prepare_step submits the next batch before the
        # previous one trains, which the replay hooks (and the buffer's step order) cannot serve.
        raise RuntimeError("ExGRPO's replay hooks run in the synchronous trainer only (trainer.v1.trainer_mode=exgrpo); "
                           "an async trainer would submit the next batch before the previous one trains")

    def prepare_step(self) -> dict:
        count = self.strategy.experience_question_count(self.experience.pool_size, self.config.data.train_batch_size,
                                                        self.settings.replay_ratio, self.replay_started)
        self._step_experience = self.experience.sample_questions(count) if count else []
        missing = [qid for qid in self._step_experience if qid not in self._position_of]
        if missing:
            raise ValueError(
                f"questions {missing[:5]} of the experience buffer are not in data.train_files: resume with "
                "the training data the checkpoint was made with"
            )
        self._step_questions = set(self._step_experience)
        self._drop_unused_fresh_questions()
        return super().prepare_step()

    def _drop_unused_fresh_questions(self) -> None:
        """exgrpo.unused_fresh_questions=discard (the release): what the previous step fetched but did
        not use is dropped, so this step's fresh questions come from a new draw (carry: they wait)."""
        if self.settings.unused_fresh_questions == "discard":
            self._fresh_carry = []

    def _fetch_one_gen_batch(self) -> TensorDict:
        """One generation batch: this step's experience questions first, then fresh questions."""
        size = self.config.data.get("gen_batch_size", None) or self.config.data.train_batch_size
        experience, self._step_experience = self._step_experience[:size], self._step_experience[size:]
        questions = experience + self._take_fresh_questions(size - len(experience))

        batch = collate_fn([self.train_dataset[self._position_of[qid]] for qid in questions])
        batch["uid"] = np.array([str(uuid.uuid4()) for _ in questions], dtype=object)
        from_buffer = [True] * len(experience) + [False] * (len(questions) - len(experience))
        batch["__rollout_n__"] = torch.tensor([self.strategy.fresh_rollouts(f) for f in from_buffer], dtype=torch.int64)
        batch[EXPERIENCE_MARKER] = torch.tensor(from_buffer, dtype=torch.int64)  # travels onto every trajectory row
        batch["is_replay"] = torch.zeros(len(questions), dtype=torch.int64)
        return tu.get_tensordict(batch)

    def _take_fresh_questions(self, count: int) -> list[int]:
        """The next `count` questions in data-loader order that are neither retired nor already in
        this step; questions fetched beyond `count` wait in the carry for the next step."""
        taken: list[int] = []
        fetches_without_progress = 0
        while len(taken) < count:
            if not self._fresh_carry:
                self._fresh_carry = [int(qid) for qid in super()._fetch_one_gen_batch()["index"]]
            qid = self._fresh_carry.pop(0)
            if self.experience.is_retired(qid) or qid in self._step_questions:
                fetches_without_progress += 1
                if fetches_without_progress > 2 * len(self._position_of):  # two whole epochs of nothing
                    raise RuntimeError(
                        "every training question is retired (solved K/K) or already in this step: add questions "
                        "to data.train_files or lower data.train_batch_size"
                    )
                continue
            fetches_without_progress = 0
            taken.append(qid)
            self._step_questions.add(qid)
        return taken

    # ---- 2. replayed rows into their groups --------------------------------------------------
    def _balance_batch(self, batch: KVBatchMeta, metrics, *args, **kwargs):
        if batch.partition_id == "train":  # before the update: too many failed reward calls stop the run
            metrics.update(reward_manager.step_reward_metrics(batch, self.settings.reward.max_failed_fraction))
        if batch.partition_id == "train" and self.settings.enabled:
            batch = self._join_replayed_rows(batch, metrics)
        return super()._balance_batch(batch, metrics, *args, **kwargs)

    def _join_replayed_rows(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """Let the strategy say which stored trajectories join which group, then put them in.

        Filter, then score, then select: candidates that cannot be replayed on the group's prompt
        are set aside first, and only the usable ones are scored."""
        groups = self._step_groups(batch)
        requests = self.strategy.requests(list(groups.values()), self._replay_source.candidates, self.global_steps)
        siblings = self._sibling_rows(batch, requests)
        chosen = self._choose(requests, siblings, metrics)
        joined = build_joins(requests, chosen, groups)
        self._put_joined_rows(batch, joined, siblings)
        if joined.trajectories and not self.strategy.frozen_source:
            self.experience.mark_replayed([t.id for t in joined.trajectories], self.global_steps)
        if joined.dropped:
            logger.warning("ExGRPO: %d experience groups had no usable stored trajectory and were dropped", len(joined.dropped))
        metrics.update(joined.metrics(groups, len(batch.keys), self.global_steps,
                                      self.strategy.generations_saved(list(groups.values()))))
        keep = joined.kept_positions(batch.keys)
        return KVBatchMeta(partition_id=batch.partition_id, keys=[batch.keys[i] for i in keep] + joined.keys,
                           tags=[batch.tags[i] for i in keep] + joined.tags, extra_info=batch.extra_info)

    def _step_groups(self, batch: KVBatchMeta) -> dict[str, GroupOutcome]:
        """The step's groups as the strategy sees them: fresh rows, rewards, and the experience
        marker each row carries from its prompt row (so any order of verl's hooks is fine)."""
        rows = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=GROUP_FIELDS)
        return groups_of_rows(batch.keys, rows)

    def _sibling_rows(self, batch: KVBatchMeta, requests: list[JoinRequest]) -> dict[str, Sibling]:
        """One fresh row of each requested group, with its tag: the prompt a replayed row is built on."""
        first: dict[str, int] = {}
        for position, key in enumerate(batch.keys):
            first.setdefault(uid_of_key(key), position)
        if not requests:
            return {}
        positions = [first[r.uid] for r in requests]
        rows = tq.kv_batch_get(keys=[batch.keys[p] for p in positions], partition_id=batch.partition_id)
        siblings = {}
        for i, (request, position) in enumerate(zip(requests, positions)):
            row = rows[i]  # indexing TransferQueue's lazily stacked rows is costly: once per row, not per field
            siblings[request.uid] = Sibling({key: row[key] for key in row.keys()}, batch.tags[position])
        return siblings

    def _choose(self, requests: list[JoinRequest], siblings: dict[str, Sibling], metrics: dict) -> dict[str, list]:
        """The trajectories joining each group, among those replayable on its prompt: the last
        `count` of them, or one chosen by the buffer's selection metric (scored in one forward
        pass when the metric needs it)."""
        max_length = self.config.data.max_response_length
        usable = {r.uid: replayable_candidates(self._replay_source, r.question_id, r.candidates,
                                               siblings[r.uid].row["prompts"].numpy(), max_length) for r in requests}
        by_metric = [r for r in requests if r.count is None and usable[r.uid]]
        scores = {}
        if by_metric and self.experience.config.needs_forward_pass:
            with marked_timer("exgrpo_select", self.timing_raw, color="cyan"):
                scores = self._selection_scores([(r.uid, siblings[r.uid].row, usable[r.uid]) for r in by_metric], metrics)
        chosen = {}
        for request in requests:
            candidates = usable[request.uid]
            if request.count is not None or not candidates:
                chosen[request.uid] = candidates[-request.count:] if request.count else candidates
            else:
                chosen[request.uid] = [self._replay_source.select(request.question_id, scores.get(request.uid),
                                                                   among=[c.id for c in candidates])]
        return chosen

    def _put_joined_rows(self, batch: KVBatchMeta, joined: Joined, siblings: dict[str, Sibling]) -> None:
        """Clear the rows that leave the step, then write the joined rows: first, since a row that
        replaces a fresh one takes its key (its session)."""
        leaving = joined.leaving_keys(batch.keys)
        if leaving:
            tq.kv_clear(keys=leaving, partition_id=batch.partition_id)
        for placement in joined.placed:
            sibling = siblings[placement.uid]
            trajectory = placement.trajectory
            response = torch.from_numpy(trajectory.response_ids.astype(np.int64))
            row = build_replayed_row(sibling.row, response, torch.from_numpy(trajectory.log_probs), trajectory.reward, placement.session)
            if placement.separate_advantage:
                row["uid"] = separate_advantage_uid(placement.uid)
            joined.add_row(row, replayed_row_tag(sibling.tag, len(sibling.row["prompts"]), len(response)), placement)
        if joined.keys:
            tq.kv_batch_put(keys=joined.keys, partition_id=batch.partition_id, fields=list_of_dict_to_tensordict(joined.rows), tags=joined.tags)

    def _selection_scores(self, groups: list[tuple[str, dict, list]], metrics: dict) -> dict[str, np.ndarray]:
        """Score the usable candidates of every (uid, sibling row, candidates) group in one batched
        forward pass of the current policy (temperature 1): token-mean entropy (or perplexity)
        over its response. Returns the scores by group uid, in candidate order. A group with one
        usable candidate has nothing to choose: it is not scored (score 0)."""
        rows, owners = [], []
        scores: dict[str, list[float]] = {uid: [0.0] for uid, _, candidates in groups if len(candidates) == 1}
        for uid, sibling, candidates in groups:
            if uid in scores:
                continue
            for candidate in candidates:
                response = torch.from_numpy(candidate.response_ids.astype(np.int64))
                rows.append(build_replayed_row(sibling, response, torch.from_numpy(candidate.log_probs), candidate.reward, 0))
                owners.append(uid)
        if not rows:
            metrics["exgrpo/selection_tokens"] = 0
            return {uid: np.asarray(values) for uid, values in scores.items()}
        prefix = f"exgrposelect{uuid.uuid4().hex}"
        keys = [trajectory_key(prefix, i) for i in range(len(rows))]
        tags = [replayed_row_tag({"status": "success"}, len(row["prompts"]), len(row["responses"])) for row in rows]
        tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(rows), tags=tags)
        candidates = KVBatchMeta(partition_id="train", keys=keys, tags=tags)
        # Inference only: pad to what the log-prob pass splits into (data-parallel ranks x
        # micro-batches), with micro-batches no larger than the candidates need; verl's
        # _balance_batch would pad to a whole PPO mini-batch of B*K rows.
        ranks, micro_batch = self._log_prob_split(len(rows))
        candidates = upsample_batch_to_divisible_size(candidates, ranks * (micro_batch or 1), self.tokenizer.eos_token_id)
        candidates.extra_info.update({"calculate_entropy": True, "compute_loss": False, "temperature": 1.0})
        if micro_batch:
            candidates.extra_info["micro_batch_size_per_gpu"] = micro_batch
        self.actor_rollout_wg.compute_log_prob(candidates)
        data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["entropy", "log_probs", "response_mask"])
        tq.kv_clear(keys=candidates.keys, partition_id="train")

        mask = _padded(data["response_mask"])
        entropy = _padded(response_from_nested(data["entropy"], data["response_mask"]))
        log_prob = _padded(response_from_nested(data["log_probs"], data["response_mask"]))
        row_scores = trajectory_selection_score(self.experience.config.selection_metric, entropy, log_prob, mask)

        selection_tokens = sum(tag["seq_len"] for tag in tags)
        metrics["exgrpo/selection_tokens"] = selection_tokens
        for uid, score in zip(owners, row_scores.tolist()):
            scores.setdefault(uid, []).append(score)
        return {uid: np.asarray(values) for uid, values in scores.items()}

    def _log_prob_split(self, rows: int) -> tuple[int, int | None]:
        """(data-parallel ranks, rows per micro-batch) for a log-prob pass over `rows` rows."""
        dispatch = self.actor_rollout_wg._dispatch_info
        if "actor" not in dispatch:
            dispatch["actor"] = self.actor_rollout_wg._query_dispatch_info("actor")
        ranks = max(dispatch["actor"]) + 1
        rollout = self.config.actor_rollout_ref.rollout
        return ranks, inference_micro_batch(rows, ranks, rollout.log_prob_micro_batch_size_per_gpu, rollout.log_prob_use_dynamic_bsz)

    def _get_required_batch_multiple(self, dp_size: int) -> int:
        if not self.settings.enabled:
            return super()._get_required_batch_multiple(dp_size)
        actor = self.config.actor_rollout_ref.actor
        micro = None if actor.use_dynamic_bsz else actor.ppo_micro_batch_size_per_gpu
        return update_batch_multiple(self.group_size, dp_size, micro, self._actor_mini_batches)

    @property
    def _actor_mini_batches(self) -> int:
        return self.config.data.train_batch_size // self.config.actor_rollout_ref.actor.ppo_mini_batch_size

    # ---- 3. stored behaviour log-probs for replayed rows -------------------------------------
    def _compute_old_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        batch = super()._compute_old_log_prob(batch, metrics)
        if self.settings.enabled:
            metrics["exgrpo/old_log_prob_tokens"] = sum(tag["seq_len"] for tag in batch.tags if not tag.get("is_padding"))
        replayed = [key for key, tag in zip(batch.keys, batch.tags) if tag.get("is_replay") and not tag.get("is_padding")]
        if replayed and self.config.actor_rollout_ref.rollout.calculate_log_probs:
            fresh_only = self._fresh_rollout_mismatch_metrics(batch)
            # verl's values over every row stay, renamed: exgrpo/all_rows/<name>.
            metrics.update({f"exgrpo/all_rows/{key.split('/', 1)[1]}": metrics[key] for key in fresh_only if key in metrics})
            metrics.update(fresh_only)
        if replayed:
            rows = tq.kv_batch_get(keys=replayed, partition_id=batch.partition_id, select_fields=["rollout_log_probs", "old_log_probs"])
            # TransferQueue keeps one dtype per field: the stored log-probs go in the dtype verl
            # holds old log-probs in (bf16 on CPU). They were collected from that same field, so
            # the cast is exact.
            stored = rows["rollout_log_probs"].to(rows["old_log_probs"].dtype)
            tq.kv_batch_put(keys=replayed, partition_id=batch.partition_id, fields=TensorDict({"old_log_probs": stored}, batch_size=len(replayed)))
        return batch

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """verl's update in the configured number of mini-batches whatever the batch's rows (see
        update_batch_multiple). verl sizes the mini-batch from actor.ppo_mini_batch_size as it
        sends the batch, so for this call that is the batch's rows / (mini-batches x n): the
        configured value for a batch of B x n rows."""
        if not self.settings.enabled:
            return super()._update_actor(batch, metrics)
        metrics["exgrpo/update_rows"] = len(batch)
        metrics["exgrpo/update_padding_rows"] = sum(bool(tag.get("is_padding")) for tag in batch.tags)
        actor = self.config.actor_rollout_ref.actor
        configured = actor.ppo_mini_batch_size
        actor.ppo_mini_batch_size = len(batch) // (self._actor_mini_batches * self.group_size)
        try:
            return super()._update_actor(batch, metrics)
        finally:
            actor.ppo_mini_batch_size = configured

    def _fresh_rollout_mismatch_metrics(self, batch: KVBatchMeta) -> dict:
        """verl's rollout-vs-actor metrics (training/rollout_probs_diff_*, rollout_actor_probs_pearson_corr)
        over the fresh rows only. verl computes them over every row, and a replayed row's
        rollout_log_probs are its stored ones (an older policy's), which would inflate them exactly
        when replay runs and hide real vLLM/FSDP drift."""
        fresh = [key for key, tag in zip(batch.keys, batch.tags) if not tag.get("is_replay") and not tag.get("is_padding")]
        if not fresh:
            return {"training/rollout_probs_diff_valid": 0}
        fields = ["old_log_probs", "rollout_log_probs", "response_mask", "responses"]
        rows = tq.kv_batch_get(keys=fresh, partition_id=batch.partition_id, select_fields=fields)
        return calculate_debug_metrics(DataProto(batch=rows.to_padded_tensor()))

    # ---- 4. learn from the step --------------------------------------------------------------
    def step(self, metrics: dict, timing_raw: dict) -> KVBatchMeta:
        batch = super().step(metrics, timing_raw)
        if self.settings.enabled:
            with marked_timer("exgrpo_collect", timing_raw, color="green"):
                self._collect(batch, metrics)
        return batch

    def _collect(self, batch: KVBatchMeta, metrics: dict) -> None:
        rows = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=STEP_FIELDS)
        is_padding = [bool(tag.get("is_padding", False)) for tag in batch.tags]
        groups, fresh_rewards = group_results_from_step(rows, is_padding, self._eos_ids, self.group_size)
        step_solve_rate = solve_rate(fresh_rewards)

        was_started = self.replay_started
        self.replay_started = self.strategy.replay_starts(was_started, step_solve_rate, self.settings.start_solve_rate,
                                                          self.settings.replay_ratio)
        store = self.strategy.stores(was_started, self.replay_started, self.settings.collect_during_warmup,
                                     self.settings.store_from_switch_step)
        # After a resume that replayed the experience log, the buffer is ahead of the re-run steps.
        self.experience.update(max(self.global_steps, self.experience.step), groups, store=store)
        if self.replay_started and not was_started:
            logger.info("ExGRPO: solve rate %.3f > %.3f at step %d: replay starts", step_solve_rate, self.settings.start_solve_rate, self.global_steps)
            self._install_loss()
        if self._experience_log is not None:
            digest = self.experience.state_sha256() if self.settings.experience_log_digests else None
            started = time.perf_counter()
            metrics["exgrpo/experience_log_bytes"] = self._experience_log.append(
                self.global_steps, self.experience.take_operations(), {"replay_started": self.replay_started}, digest)
            metrics["exgrpo/experience_log_seconds"] = time.perf_counter() - started

        metrics["exgrpo/replay_active"] = float(self.replay_started)
        metrics["exgrpo/solve_rate"] = step_solve_rate
        metrics["exgrpo/fresh_score_mean"] = float(fresh_rewards.mean()) if fresh_rewards.size else 0.0
        metrics.update({f"exgrpo/buffer/{key}": value for key, value in self.experience.metrics().items()})
        if "exgrpo/selection_tokens" in metrics:
            metrics["exgrpo/selection_token_fraction"] = metrics["exgrpo/selection_tokens"] / max(metrics["exgrpo/old_log_prob_tokens"], 1)
        metrics.update({key.replace("actor/exgrpo/", "exgrpo/"): value for key, value in replay_weight_means(metrics).items()})
        if "actor/" + SKIPPED_METRIC in metrics:
            metrics[SKIPPED_METRIC] = metrics.pop("actor/" + SKIPPED_METRIC)

    # ---- the best-by-validation model ---------------------------------------------------------
    def _validate(self):
        val_metrics = super()._validate()
        if self.global_steps > 0:  # a trained model, as the release (validation before training keeps nothing)
            self._keep_best_model(val_metrics)
        return val_metrics

    def _keep_best_model(self, val_metrics: dict) -> None:
        """Save the actor as the best model when this validation beats the kept one (best_model)."""
        folder = self.config.trainer.default_local_dir
        scores = best_model.validation_scores(val_metrics)
        if not best_model.improves(scores, best_model.read_best(folder)):
            return
        candidate = best_model.new_folder(folder, self.global_steps)
        self.actor_rollout_wg.save_checkpoint(str(candidate), None, self.global_steps, None)  # model only (engine)
        record = best_model.publish(folder, candidate, self.global_steps, scores)
        print(f"ExGRPO: best model {os.path.join(folder, best_model.BEST_LINK)} <- step {self.global_steps} "
              f"(score {record['score']:.4f})", flush=True)

    # ---- checkpoints -------------------------------------------------------------------------
    def _save_checkpoint(self):
        # Our state first: verl writes latest_checkpointed_iteration.txt last, so any checkpoint
        # it would resume from holds a complete ExGRPO state.
        folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        state = checkpoint.TrainerState(self.replay_started, list(self._fresh_carry),
                                        checkpoint.run_settings(self.settings, self.group_size), self._run_id)
        checkpoint.save_state(folder, self.experience, state, self._data_fingerprint)
        super()._save_checkpoint()
        if self._experience_log is not None:  # the checkpoint now holds everything logged
            self._experience_log = ExperienceLog.start(self._experience_log.path, checkpoint.state_digest(folder),
                                                       self._run_id)
        checkpoint.tidy(self.config.trainer.default_local_dir)
        # From disk, so that checkpoints written before a restart are pruned too (verl forgets them).
        checkpoint_retention.prune(self.config.trainer.default_local_dir, checkpoint_retention.keep_count(self.config.trainer))

    def _load_checkpoint(self):
        resume_from = checkpoint.resume_folder(self.config.trainer)
        if resume_from is not None:  # before verl unpickles any of its files
            checkpoint.check_verl_files(resume_from)
        super()._load_checkpoint()
        if self.global_steps == 0:  # a new run, or one killed before its first checkpoint
            self._open_experience_log(self._new_run_base())
            return
        if self.config.trainer.resume_mode == "resume_path":
            folder = os.path.abspath(self.config.trainer.resume_from_path)
        else:
            folder = os.path.join(os.path.abspath(self.config.trainer.default_local_dir), f"global_step_{self.global_steps}")
        self.experience, state, changes = checkpoint.load_state(folder, self.experience.config, self._data_fingerprint,
                                                                checkpoint.run_settings(self.settings, self.group_size))
        for change in changes:
            print(f"ExGRPO: resume changes {change}", flush=True)
        self._run_id = checkpoint.resumed_run_id(folder, self.config.trainer.default_local_dir, state)
        unknown = [qid for qid in state.fresh_carry if qid not in self._position_of]
        if unknown:
            raise ValueError(
                f"{folder}: questions {unknown[:5]} are not in data.train_files: resume with the training data the "
                "checkpoint was made with"
            )
        self.replay_started = state.replay_started
        self._fresh_carry = state.fresh_carry
        print(f"ExGRPO: restored {folder} (replay {'on' if self.replay_started else 'off'}, "
              f"state sha256 {checkpoint.state_digest(folder)})", flush=True)  # the fault-injection harness reads it
        self._open_experience_log(checkpoint.state_digest(folder))

    def _new_run_base(self) -> str:
        """What a log written before the first checkpoint extends: a fresh buffer of this config on this data."""
        digest = hashlib.sha256(json.dumps(self.experience.config.to_dict(), sort_keys=True).encode())
        digest.update(self._data_fingerprint.ids.tobytes())
        digest.update(self._data_fingerprint.digests.tobytes())
        return f"new run {digest.hexdigest()}"

    def _open_experience_log(self, base: str) -> None:
        """Replay the log's steps on the buffer just restored (`base`), then log from there.
        A new run without a log gets its run id here (with a log: the log's, see ExperienceLog.resume)."""
        if not (self.settings.enabled and self.settings.experience_log):
            self._run_id = self._run_id or new_run_id()
            return
        path = os.path.join(self.config.trainer.default_local_dir, EXPERIENCE_LOG)
        self._experience_log, records, note = ExperienceLog.resume(
            path, base, self._run_id, fresh=self.config.trainer.resume_mode == "disable")
        self._run_id = self._experience_log.run_id
        for record in records:
            self.experience.replay(record.operations)
            self.replay_started = bool(record.context.get("replay_started", self.replay_started))
        replayed = f"replayed steps {records[0].step}..{records[-1].step}, " if records else ""
        print(f"ExGRPO: experience log {path}: {note}; {replayed}buffer sha256 "
              f"{self.experience.state_sha256() if records else '-'}", flush=True)  # the fault-injection harness reads it
        self.experience.record_operations()
