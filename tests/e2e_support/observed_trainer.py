"""An observing subclass of the real ExGRPO trainer, for end-to-end tests.

It changes nothing: after each real hook it records what happened (group composition,
rollout requests served, the old log-probs written for replayed rows, the state restored
from a checkpoint) as JSON lines in $EXGRPO_OBSERVE_PATH. Loaded into verl's task runner
with VERL_USE_EXTERNAL_MODULES=observed_trainer (this folder on PYTHONPATH) and selected
with trainer.v1.trainer_mode=exgrpo_observed.
"""

import json
import os
from collections import Counter

import ray
import transfer_queue as tq

from exgrpo_verl import cpu_runtime

cpu_runtime.activate()  # external modules load before verl's plugins; the platform must exist first

from exgrpo_verl.verl_adapters.rows import uid_of_key  # noqa: E402
from exgrpo_verl.verl_adapters.trainer import ExGRPOTrainer  # noqa: E402
from verl.trainer.ppo.v1.trainer_base import register_trainer  # noqa: E402


def _record(kind: str, **payload) -> None:
    with open(os.environ["EXGRPO_OBSERVE_PATH"], "a") as f:
        f.write(json.dumps({"kind": kind, **payload}) + "\n")


@register_trainer("exgrpo_observed")
class ObservedExGRPOTrainer(ExGRPOTrainer):
    def _requests_served(self) -> int:
        # Imported here: this module loads while verl imports, also inside the rollout server.
        from exgrpo_verl.cpu_runtime.hf_rollout import server_actor_name

        return ray.get(ray.get_actor(server_actor_name(0)).stats.remote())["generate_calls"]

    def prepare_step(self):
        self._requests_before = self._requests_served()
        self._retired_before = sorted(self.experience.retired_ids)
        return super().prepare_step()

    def _join_replayed_rows(self, batch, metrics):
        groups = self._step_groups(batch)
        experience = {uid: group.question_id for uid, group in groups.items() if group.from_buffer}
        rows_before = Counter(uid_of_key(key) for key in batch.keys)
        batch = super()._join_replayed_rows(batch, metrics)
        rows = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                               select_fields=["is_replay", "index", "responses", "rollout_log_probs", "rm_scores", "uid"])
        flags = rows["is_replay"].tolist()
        rewards = [float(score.sum()) for score in rows["rm_scores"].unbind()]
        # What each replayed row carries, checked against the buffer's stored trajectories now and
        # against the old log-probs the trainer writes later.
        self._inserted_log_probs, carried_stored = {}, []
        for key, flag, qid, response, log_probs in zip(batch.keys, flags, rows["index"], rows["responses"].unbind(),
                                                       rows["rollout_log_probs"].unbind()):
            if flag:
                self._inserted_log_probs[key] = log_probs.float()
                carried_stored.append(any(
                    c.response_ids.tolist() == response.tolist() and c.log_probs.tolist() == log_probs.float().tolist()
                    for c in self._replay_source.candidates(int(qid))))
        members, replayed, trained = Counter(), Counter(), {}
        for key, flag, reward, advantage_uid in zip(batch.keys, flags, rewards, rows["uid"]):
            uid = uid_of_key(key)
            members[uid] += 1
            replayed[uid] += int(flag)
            # Each trained row: replayed?, reward, and whether it shares its group's advantage baseline.
            trained.setdefault(uid, []).append([int(flag), reward, advantage_uid == uid])
        _record(
            "composition",
            step=self.global_steps,
            experience_groups={uid: {"question": qid, "fresh_rows": rows_before[uid], "members": members[uid], "replayed": replayed[uid]} for uid, qid in experience.items()},
            fresh_groups={uid: {"members": members[uid], "replayed": replayed[uid]} for uid in members if uid not in experience},
            requests_served=self._requests_served() - self._requests_before,
            questions=sorted({int(i) for i in rows["index"]}),
            retired_before=self._retired_before,
            group_size=self.group_size,
            replayed_rows_carry_stored_trajectories=all(carried_stored),
            before={uid: group.rewards.tolist() for uid, group in groups.items()},
            trained=trained,
        )
        return batch

    def _compute_old_log_prob(self, batch, metrics):
        batch = super()._compute_old_log_prob(batch, metrics)
        keys = [key for key in batch.keys if key in getattr(self, "_inserted_log_probs", {})]
        if keys:
            written = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["old_log_probs"])["old_log_probs"].unbind()
            diffs = [float((w.float() - self._inserted_log_probs[k]).abs().max()) for k, w in zip(keys, written)]
            _record("old_log_probs", step=self.global_steps, replayed_rows=len(keys), max_abs_diff=max(diffs))
        return batch

    def _update_actor(self, batch, metrics):
        batch = super()._update_actor(batch, metrics)
        # What verl sent the worker (the mini-batch's rows it computed as it sent them), and the
        # configured mini-batch after the call.
        _record("update", step=self.global_steps, rows=len(batch.keys),
                padding_rows=sum(bool(tag.get("is_padding")) for tag in batch.tags),
                mini_batch_rows=batch.extra_info["mini_batch_size"],
                ppo_mini_batch_size_after=self.config.actor_rollout_ref.actor.ppo_mini_batch_size)
        return batch

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps:
            _record(
                "restored",
                step=self.global_steps,
                replay_started=self.replay_started,
                retired=sorted(self.experience.retired_ids),
                buffer_metrics=self.experience.metrics(),
                fresh_carry=list(self._fresh_carry),
            )
