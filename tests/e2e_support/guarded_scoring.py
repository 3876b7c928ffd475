"""Score N samples concurrently through verl's reward loading (`load_reward_manager`) and the
reward guard, as a reward worker does, without Ray; print one JSON line per sample.

    python guarded_scoring.py <tokenizer folder> <reward file> <samples> <timeout_s> <processes>

Run as a subprocess by tests/test_reward_sandbox.py, so that a reward stuck in C code on the old,
thread-based guard hangs this process (killed by the test's timeout), not the test session.
The reward file decides per extra_info.index how to misbehave. Two rounds: indexes 1..N, then
0..N-1 (the first round's result is printed before a second round that may hang).
"""

import asyncio
import json
import sys
import time

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from verl import DataProto
from verl.trainer.ppo.reward import load_reward_manager
from verl.utils.ray_utils import get_event_loop


FIRST_INDEXES = (1, 0)


def batch(tokenizer, samples: int, first_index: int) -> DataProto:
    prompt, response = tokenizer.encode("question"), tokenizer.encode("the answer is 1")
    ids = torch.tensor([prompt + response] * samples)
    return DataProto.from_dict(
        tensors={"prompts": ids[:, : len(prompt)], "responses": ids[:, len(prompt):], "input_ids": ids,
                 "attention_mask": torch.ones_like(ids)},
        non_tensors={"data_source": np.array(["guard_test"] * samples, dtype=object),
                     "reward_model": np.array([{"ground_truth": "1"}] * samples, dtype=object),
                     "extra_info": np.array([{"index": first_index + i} for i in range(samples)], dtype=object)},
    )


async def score_all(manager, data: DataProto) -> list[dict]:
    async def one(i):
        start = time.monotonic()
        result = await manager.run_single(data[i : i + 1])
        return {"index": data[i].non_tensor_batch["extra_info"]["index"], "score": result["reward_score"], "seconds": round(time.monotonic() - start, 2),
                **{key: value for key, value in result["reward_extra_info"].items() if key.startswith("exgrpo_")}}

    return await asyncio.gather(*(one(i) for i in range(len(data))))


def main(tokenizer_path, reward_file, samples, timeout_s, processes):
    config = OmegaConf.create({
        "reward": {"custom_reward_function": {"path": reward_file, "name": "compute_score", "reward_kwargs": {}},
                   "reward_manager": {"source": "importlib", "name": "GuardedRewardManager",
                                      "module": {"path": "pkg://exgrpo_verl.verl_adapters.reward_manager"}}},
        "exgrpo": {"reward": {"timeout_s": float(timeout_s), "processes": int(processes)}},
    })
    manager = load_reward_manager(config, AutoTokenizer.from_pretrained(tokenizer_path))
    for first_index in FIRST_INDEXES:
        start = time.monotonic()
        # verl's managers run the reward function's executor on this loop (`self.loop`), as in a reward worker.
        data = batch(manager.tokenizer, int(samples), first_index)
        results = get_event_loop().run_until_complete(score_all(manager, data))
        print(json.dumps({"wall_s": round(time.monotonic() - start, 2), "samples": results}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
