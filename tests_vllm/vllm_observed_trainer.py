"""The main suite's observing trainer (tests/e2e_support/observed_trainer.py) with what the
vLLM runs also record: the sequences verl's vLLM server generated each step, and verl's
rollout-vs-actor log-prob metrics on the fresh rows alone (replayed rows carry an older
policy's log-probs by design). Selected with trainer.v1.trainer_mode=exgrpo_observed_vllm."""

import urllib.request

import ray
import transfer_queue as tq
from observed_trainer import ObservedExGRPOTrainer, _record

from verl import DataProto
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.utils.debug.metrics import calculate_debug_metrics


def vllm_requests_finished() -> int:
    """Requests verl's vLLM server has finished so far, by vLLM's own Prometheus counter (the
    run sets actor_rollout_ref.rollout.disable_log_stats=False). One request is one sequence:
    verl's agent loop sends each sample on its own."""
    host, port = ray.get(ray.get_actor("vllm_server_0_0").get_server_address.remote())
    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30).read().decode()
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total")))


@register_trainer("exgrpo_observed_vllm")
class ObservedVLLMTrainer(ObservedExGRPOTrainer):
    def _requests_served(self) -> int:
        return vllm_requests_finished()

    def step(self, metrics, timing_raw):
        batch = super().step(metrics, timing_raw)
        _record("rollout", step=self.global_steps, requests_served=self._requests_served() - self._requests_before, rows=len(batch))
        return batch

    def _compute_old_log_prob(self, batch, metrics):
        batch = super()._compute_old_log_prob(batch, metrics)
        fresh = [key for key, tag in zip(batch.keys, batch.tags) if not tag.get("is_replay") and not tag.get("is_padding")]
        rows = tq.kv_batch_get(keys=fresh, partition_id=batch.partition_id,
                               select_fields=["old_log_probs", "rollout_log_probs", "response_mask", "responses"])
        fresh_metrics = calculate_debug_metrics(DataProto(batch=rows.to_padded_tensor()))
        _record("fresh_probs_diff", step=self.global_steps, rows=len(fresh), **{k.split("/")[-1]: float(v) for k, v in fresh_metrics.items()})
        return batch
