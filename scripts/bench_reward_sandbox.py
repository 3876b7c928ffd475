"""What the reward guard's killable reward processes cost per step, on the miniature's reward.

A miniature step scores B x K = 8 x 8 = 64 responses with the release's reward
(`exgrpo_verl/reward.py`: `</think>` gate, math-verify) in one reward worker. This scores such a
step through verl's own reward loading (`load_reward_manager`) twice per round, interleaved:

    threads   verl's naive manager: the function in the worker's threads, math-verify in one
              shared child process behind a lock (the path before the sandbox)
    sandbox   the reward guard (GuardedRewardManager): the function in exgrpo.reward.processes
              killable children, math-verify on their main threads

and prints the median seconds per step of each and their difference (the first round, which
starts the children and imports math-verify in them, is reported apart).

    python scripts/bench_reward_sandbox.py --tokenizer <model folder> [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from exgrpo_verl import reward
from verl import DataProto
from verl.trainer.ppo.reward import load_reward_manager
from verl.utils.ray_utils import get_event_loop

SAMPLES = 64  # the miniature's B x K


def step_batch(tokenizer, samples: int) -> DataProto:
    """Responses in the miniature's shape: short reasoning, a closed </think>, a boxed number;
    every third one wrong, every fifth one without </think>."""
    prompt = tokenizer.encode("What is 17 + 25?")
    responses = []
    for i in range(samples):
        answer = 42 if i % 3 else 41
        close = "" if i % 5 == 0 else "</think>"
        responses.append(tokenizer.encode(f"17 + 25: 7 + 5 = 12, carry 1, 1 + 2 + 1 = 4.{close} \\boxed{{{answer}}}"))
    width = max(map(len, responses))
    response_ids = torch.tensor([r + [tokenizer.pad_token_id or 0] * (width - len(r)) for r in responses])
    response_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in responses])
    prompt_ids = torch.tensor([prompt] * samples)
    return DataProto.from_dict(
        tensors={"prompts": prompt_ids, "responses": response_ids, "input_ids": torch.cat([prompt_ids, response_ids], 1),
                 "attention_mask": torch.cat([torch.ones_like(prompt_ids), response_mask], 1)},
        non_tensors={"data_source": np.array(["arithmetic"] * samples, dtype=object),
                     "reward_model": np.array([{"ground_truth": "42"}] * samples, dtype=object),
                     "extra_info": np.array([{"index": i} for i in range(samples)], dtype=object)},
    )


def manager(name: str, tokenizer, processes: int):
    module = "pkg://exgrpo_verl.verl_adapters.reward_manager" if name == "GuardedRewardManager" else None
    config = OmegaConf.create({
        "reward": {"custom_reward_function": {"path": reward.__file__, "name": "compute_score", "reward_kwargs": {}},
                   "reward_manager": {"source": "importlib" if module else "register", "name": name,
                                      "module": {"path": module}}},
        "exgrpo": {"reward": {"processes": processes}},
    })
    return load_reward_manager(config, tokenizer)


def score_step(reward_manager, data: DataProto) -> tuple[float, list[float]]:
    async def all_samples():
        import asyncio

        return await asyncio.gather(*(reward_manager.run_single(data[i : i + 1]) for i in range(len(data))))

    start = time.perf_counter()
    results = get_event_loop().run_until_complete(all_samples())
    return time.perf_counter() - start, [float(r["reward_score"]) for r in results]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a model folder with a tokenizer (the miniature's tiny model)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--processes", type=int, default=4, help="exgrpo.reward.processes")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    data = step_batch(tokenizer, SAMPLES)
    managers = {"threads": manager("naive", tokenizer, args.processes),
                "sandbox": manager("GuardedRewardManager", tokenizer, args.processes)}
    seconds = {name: [] for name in managers}
    scores = {}
    for _ in range(args.rounds):
        for name, reward_manager in managers.items():
            elapsed, scores[name] = score_step(reward_manager, data)
            seconds[name].append(elapsed)
    assert scores["threads"] == scores["sandbox"], "the two paths disagree on the rewards"
    result = {
        "samples_per_step": SAMPLES, "processes": args.processes, "rounds": args.rounds,
        "first_step_s": {name: round(s[0], 3) for name, s in seconds.items()},
        "median_step_s": {name: round(statistics.median(s[1:]), 3) for name, s in seconds.items()},
    }
    result["sandbox_minus_threads_s"] = round(result["median_step_s"]["sandbox"] - result["median_step_s"]["threads"], 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
