"""The reward guard inside verl 0.9.1's reward loop: `GuardedRewardManager`.

The seam: verl's `RewardLoopWorker` (a Ray actor) scores each rollout with
`reward_manager.run_single(data)`, where the manager (`reward.reward_manager`, naive by default)
calls the reward function (`reward.custom_reward_function`, or verl's default) in a thread.
`trainer_configs/exgrpo.yaml` points `reward.reward_manager` at this class (source importlib,
`pkg://`, so nothing needs registering), and this class wraps the manager named in
`exgrpo.reward.manager` around whatever reward function the run configures: the toy task's,
the recipes' math reward, a user's. Each `run_single` gets `exgrpo.reward.timeout_s`; an
exception, a timeout or a score that is not a finite number becomes reward 0 with a warning
naming the question, and per-sample flags in `reward_extra_info` that the trainer sums
(`exgrpo_verl.reward_guard.step_reward_failures`).

A custom reward function runs in the guard's killable child processes
(`exgrpo_verl.reward_sandbox`): the inner manager gets the sandbox's async form of it, and the
time limit runs from when a child takes the call, so neither a function stuck in C code nor
the calls queued behind a slow one can hang or fail the step. verl's default reward (no
custom_reward_function) runs in the worker's threads as before, under `asyncio.wait_for`: a
timed-out thread there cannot be stopped and keeps its slot in the worker's thread pool.
"""

from __future__ import annotations

import asyncio
import logging

import transfer_queue as tq
from omegaconf import OmegaConf
from transfer_queue import KVBatchMeta

from exgrpo_verl.reward_guard import RewardGuardConfig, checked_score, sample_flags, step_reward_failures
from exgrpo_verl.reward_sandbox import RewardCallError, RewardSandbox
from verl import DataProto
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

logger = logging.getLogger(__name__)


def guard_config(config) -> RewardGuardConfig:
    section = (config.get("exgrpo") or {}).get("reward") or {}
    return RewardGuardConfig.from_dict(OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else section)


class GuardedRewardManager(RewardManagerBase):
    def __init__(self, config, tokenizer, compute_score, **manager_kwargs):
        super().__init__(config, tokenizer, compute_score)
        self.guard = guard_config(config)
        self.sandbox = reward_sandbox(config, self.guard)
        if self.sandbox is not None:
            compute_score = self.sandbox.compute_score
        self.inner = get_reward_manager_cls(self.guard.manager)(config, tokenizer, compute_score, **manager_kwargs)
        self._info_keys: set[str] = set()  # reward_extra_info keys of successful calls, zeroed on failures

    async def run_single(self, data: DataProto) -> dict:
        # The sandbox keeps the time limit itself, from when a child takes the call (not while it queues).
        limit = None if self.sandbox is not None else self.guard.timeout_s
        try:
            result = await asyncio.wait_for(self.inner.run_single(data), timeout=limit)
            result["reward_score"] = checked_score(result["reward_score"])
        except (asyncio.TimeoutError, TimeoutError) as error:  # asyncio's (distinct before Python 3.11), the sandbox's
            failure, problem = "timeout", str(error) or f"no result within exgrpo.reward.timeout_s={self.guard.timeout_s}"
        except RewardCallError as error:  # already "<type>: <message>" of what the function raised
            failure, problem = "error", str(error)
        except Exception as error:  # the user's function may raise anything; it must not drop the sample
            failure, problem = "error", f"{type(error).__name__}: {error}"
        else:
            info = dict(result.get("reward_extra_info") or {})
            self._info_keys.update(info)
            return {**result, "reward_extra_info": {**info, **sample_flags(None)}}
        logger.warning("reward call failed for question %s, reward 0: %s", _question(data), problem)
        return {"reward_score": 0.0, "reward_extra_info": {**dict.fromkeys(self._info_keys, 0.0), **sample_flags(failure)}}


def reward_sandbox(config, guard: RewardGuardConfig) -> RewardSandbox | None:
    """The sandbox running reward.custom_reward_function, or None when the run uses verl's default."""
    function = config.reward.get("custom_reward_function") or {}
    if not function.get("path"):
        return None
    reward_kwargs = function.get("reward_kwargs") or {}
    reward_kwargs = OmegaConf.to_container(reward_kwargs, resolve=True) if OmegaConf.is_config(reward_kwargs) else dict(reward_kwargs)
    return RewardSandbox(str(function["path"]), str(function.get("name") or "compute_score"), reward_kwargs, guard.processes,
                         guard.timeout_s)


def _question(data: DataProto) -> str:
    """data_source and extra_info.index of the (single) sample, for messages."""
    row = data.non_tensor_batch
    source = row.get("data_source", ["?"])[-1]
    extra_info = row.get("extra_info", [None])[-1]
    index = extra_info.get("index", "?") if isinstance(extra_info, dict) else "?"
    return f"{source}#{index}"


def step_reward_metrics(batch: KVBatchMeta, max_failed_fraction: float) -> dict[str, float]:
    """`exgrpo/reward_errors` and `exgrpo/reward_timeouts` of a step's rows (read from
    TransferQueue before replayed or padding rows join); raises RewardFailureError past the limit."""
    keys = [key for key, tag in zip(batch.keys, batch.tags) if not tag.get("is_padding")]
    if not keys:
        return {}
    rows = tq.kv_batch_get(keys=keys, partition_id=batch.partition_id, select_fields=["extra_fields", "index"])
    infos = [(fields or {}).get("reward_extra_info") or {} for fields in _as_list(rows["extra_fields"])]
    return step_reward_failures(infos, _as_list(rows["index"]), max_failed_fraction)


def _as_list(column) -> list:
    return column.tolist() if hasattr(column, "tolist") else list(column)
