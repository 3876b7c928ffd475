"""The `hf` rollout server as verl's agent loop uses it: a Ray actor taking concurrent
token-in / token-out requests, batching them, and taking new weights."""

import pytest
import ray
import torch

from exgrpo_verl.cpu_runtime.hf_rollout import HFRolloutServer, sampling_params_from_verl


@pytest.fixture(scope="module")
def server(tiny_qwen2):
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    actor = ray.remote(HFRolloutServer).options(max_concurrency=64).remote(
        model_path=str(tiny_qwen2), prompt_length=32, response_length=8, seed=0, max_batch_size=64
    )
    ray.get(actor.stats.remote())
    yield actor
    ray.shutdown()


def test_concurrent_requests_are_batched_and_answered_with_log_probs(server):
    requests = 16
    sampling = dict(temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, logprobs=True)
    refs = [server.generate.remote(request_id=str(i), prompt_ids=[5, 6, 7 + i], sampling_params=dict(sampling)) for i in range(requests)]
    outputs = ray.get(refs)
    stats = ray.get(server.stats.remote())
    assert stats["generate_calls"] == requests
    assert stats["batches"] < requests / 2, stats  # gathered, not one at a time
    for output in outputs:
        assert 1 <= len(output.token_ids) <= 8
        assert len(output.log_probs) == len(output.token_ids)
        assert all(lp <= 0 for lp in output.log_probs)


def test_requests_that_trickle_in_are_gathered_into_one_batch(server):
    """The agent loop sends a step's requests a few milliseconds apart: all of them make one batch
    (a window counted from the first request alone took only the first two or three)."""
    import time

    sampling = dict(temperature=1.0, top_p=1.0, top_k=-1, logprobs=True)
    before = ray.get(server.stats.remote())
    refs = []
    for i in range(12):
        refs.append(server.generate.remote(request_id=f"t{i}", prompt_ids=[5, 6, 7 + i], sampling_params=dict(sampling)))
        time.sleep(0.01)
    ray.get(refs)
    after = ray.get(server.stats.remote())
    assert after["generate_calls"] - before["generate_calls"] == 12
    assert after["batches"] - before["batches"] == 1, (before, after)


def test_new_weights_reach_the_server(server):
    greedy = dict(temperature=0, top_p=1.0, top_k=-1, logprobs=True)
    before = ray.get(server.generate.remote(request_id="a", prompt_ids=[5, 6, 7], sampling_params=dict(greedy)))
    state = ray.get(server.__ray_call__.remote(lambda self: {k: v.clone() for k, v in self.engine.model.state_dict().items()}))
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"]) * 5
    ray.get(server.load_weights.remote(list(state.items()), global_steps=7))
    after = ray.get(server.generate.remote(request_id="b", prompt_ids=[5, 6, 7], sampling_params=dict(greedy)))
    assert after.log_probs != before.log_probs
    assert after.extra_fields["global_steps"] == 7


def test_unsupported_sampling_settings_are_refused():
    with pytest.raises(ValueError, match="repetition_penalty"):
        sampling_params_from_verl({"repetition_penalty": 1.2}, max_tokens=4)
    assert sampling_params_from_verl({"temperature": 0.6, "top_k": None}, max_tokens=4).top_k == -1


def test_prompt_longer_than_the_context_is_refused(server):
    with pytest.raises(ray.exceptions.RayTaskError, match="leaves no room"):
        ray.get(server.generate.remote(request_id="x", prompt_ids=list(range(1, 41)), sampling_params={}))
