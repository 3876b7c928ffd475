"""verl rollout backend `rollout.name=hf`: a CPU generation server in verl's server mode.

Three pieces, mirroring verl's vLLM backend:
- `HFRolloutServer`, a Ray actor holding an `HFGenerationEngine`. verl's agent loop sends it
  one `generate` call per sample; the server gathers the calls that arrive together and
  runs them as one batch, since one-at-a-time decoding wastes most of the CPU.
- `HFRolloutReplica`, the `RolloutReplica` that launches one server per replica.
- `HFServerAdapter`, the `BaseRollout` living in the actor worker, through which verl pushes
  the FSDP weights to the server after every update.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from exgrpo_verl.cpu_runtime import check_rollout_config, rollout_threads
from exgrpo_verl.hf_generation import HFGenerationEngine, SamplingParams
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

logger = logging.getLogger(__name__)

# The batcher starts a batch once no request has arrived for BATCH_WINDOW_S (and at the latest
# BATCH_MAX_WAIT_S after the first). The agent loop sends a step's requests one sample at a time,
# a few milliseconds apart; a batch started on a fixed window after the first request got only
# the first few, and the rest waited for it to finish: each batch costs about the same (decoding
# is per-step overhead on a tiny model), so a step paid for several.
BATCH_WINDOW_S = 0.02
BATCH_MAX_WAIT_S = 0.5


def server_actor_name(replica_rank: int) -> str:
    return f"exgrpo_hf_rollout_server_{replica_rank}"


def sampling_params_from_verl(sampling_params: dict[str, Any], max_tokens: int) -> SamplingParams:
    """Translate the agent loop's sampling dict (vLLM-style keys) into ours."""
    unsupported = {
        key: value
        for key, value in sampling_params.items()
        if key in ("repetition_penalty", "presence_penalty", "frequency_penalty") and value not in (None, 0, 0.0, 1.0)
    }
    if unsupported:
        raise ValueError(f"the CPU rollout backend 'hf' does not implement {unsupported}; leave them at their defaults")
    return SamplingParams(
        max_tokens=int(sampling_params.get("max_tokens", sampling_params.get("max_new_tokens", max_tokens))),
        temperature=float(sampling_params.get("temperature", 1.0)),
        top_p=float(sampling_params.get("top_p", 1.0)),
        top_k=int(sampling_params.get("top_k", -1) or -1),
        logprobs=bool(sampling_params.get("logprobs", False)),
    )


@dataclass
class _PendingRequest:
    prompt_ids: list[int]
    params: SamplingParams
    future: asyncio.Future = field(repr=False)


class HFRolloutServer:
    """Ray actor: batched token-in / token-out generation with the latest actor weights."""

    def __init__(self, model_path: str, prompt_length: int, response_length: int, seed: int, max_batch_size: int):
        torch.set_num_threads(rollout_threads())
        self.engine = HFGenerationEngine(model_path, seed=seed, max_batch_size=max_batch_size)
        self.max_model_len = prompt_length + response_length
        self.response_length = response_length
        self.global_steps: int | None = None
        self.generate_calls = 0  # requests served, for tests and metrics
        self.batches = 0
        self._pending: list[_PendingRequest] = []
        self._batcher: asyncio.Task | None = None

    async def generate(self, request_id: str, prompt_ids, sampling_params: dict, **kwargs) -> TokenOutput:
        if kwargs.get("image_data") or kwargs.get("video_data") or kwargs.get("audio_data"):
            raise ValueError("the CPU rollout backend 'hf' serves text-only models")
        prompt_ids = [int(t) for t in prompt_ids]
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(
                f"prompt of {len(prompt_ids)} tokens leaves no room to generate within "
                f"prompt_length + response_length = {self.max_model_len}"
            )
        params = sampling_params_from_verl(sampling_params, max_tokens=min(self.response_length, room))
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_PendingRequest(prompt_ids, params, future))
        self.generate_calls += 1
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run_batches())
        output = await future
        return TokenOutput(
            token_ids=output.token_ids,
            log_probs=output.log_probs,
            stop_reason="completed",
            extra_fields={"global_steps": self.global_steps},
        )

    async def _run_batches(self):
        """Drain the queue: wait a moment for stragglers, then generate each group of
        requests that share sampling parameters as one batch, in a thread so that new
        requests keep arriving meanwhile."""
        while self._pending:
            await self._wait_for_stragglers()
            batch, self._pending = self._pending, []
            groups: dict[SamplingParams, list[_PendingRequest]] = {}
            for request in batch:
                groups.setdefault(request.params, []).append(request)
            for params, requests in groups.items():
                try:
                    outputs = await asyncio.to_thread(self.engine.generate, [r.prompt_ids for r in requests], params)
                except Exception as error:  # hand the error to every waiting caller
                    for request in requests:
                        if not request.future.done():  # a caller may have been cancelled meanwhile
                            request.future.set_exception(error)
                    continue
                self.batches += 1
                for request, output in zip(requests, outputs):
                    if not request.future.done():
                        request.future.set_result(output)

    async def _wait_for_stragglers(self):
        """Return once BATCH_WINDOW_S passes without a new request, or BATCH_MAX_WAIT_S after the call."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BATCH_MAX_WAIT_S
        while True:
            seen = self.generate_calls
            await asyncio.sleep(BATCH_WINDOW_S)
            if self.generate_calls == seen or loop.time() >= deadline:
                return

    async def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]], global_steps: int | None = None):
        loaded = await asyncio.to_thread(self.engine.load_weights, named_tensors)
        if global_steps is not None:
            self.global_steps = global_steps
        return loaded

    async def set_global_steps(self, global_steps: int):
        self.global_steps = global_steps

    async def stats(self) -> dict[str, int]:
        return {"generate_calls": self.generate_calls, "batches": self.batches}

    # Memory control that a GPU server needs and a CPU server does not.
    async def wake_up(self):
        pass

    async def sleep(self):
        pass

    async def clear_kv_cache(self):
        pass

    async def release_kv_cache(self):
        pass

    async def resume_kv_cache(self):
        pass

    async def abort_all_requests(self, reject_request: bool = False):
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self):
        pass

    async def start_profile(self, **kwargs):
        pass

    async def stop_profile(self):
        pass


class HFRolloutReplica(RolloutReplica):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_rollout_config(self.config)

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self):
        server = (
            ray.remote(HFRolloutServer)
            .options(name=server_actor_name(self.replica_rank), max_concurrency=self.max_concurrency, num_cpus=0)
            .remote(
                model_path=self.model_config.get("local_path") or self.model_config.path,
                prompt_length=self.config.prompt_length,
                response_length=self.config.response_length,
                seed=self.config.seed,
                max_batch_size=max(1, self.config.max_num_seqs),
            )
        )
        await server.stats.remote()  # wait until the model is loaded
        self.servers = [server]
        self._server_handle = server
        self._server_address = server_actor_name(self.replica_rank)


class HFServerAdapter(BaseRollout):
    """Lives in the actor worker; forwards weight updates to this replica's server."""

    def __init__(self, config, model_config, device_mesh, *args, **kwargs):
        super().__init__(config, model_config, device_mesh)
        check_rollout_config(self.config)
        self.replica_rank = device_mesh["dp"].get_local_rank() if device_mesh is not None else kwargs.get("replica_rank", 0)
        self.is_leader_rank = device_mesh is None or device_mesh["infer_tp"].get_local_rank() == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        pass

    async def release(self):
        pass

    async def update_weights(self, weights, wire_format: str = "named_tensors", global_steps: int | None = None, **kwargs):
        if wire_format != "named_tensors":
            raise ValueError(f"the CPU rollout backend 'hf' takes wire_format='named_tensors', got {wire_format!r}")
        # Every rank must drain the generator (it may gather FSDP shards collectively);
        # only the leader keeps copies and sends them.
        if not self.is_leader_rank:
            for _ in weights:
                pass
            return
        named_tensors = [(name, tensor.detach().to("cpu", copy=True)) for name, tensor in weights]
        await self._server_handle().load_weights.remote(named_tensors, global_steps=global_steps)
