"""Benchmark of the CPU rollout server: generated tokens per second when the agent loop's
requests arrive together (batched) versus one request at a time.

    python scripts/bench_rollout.py --requests 64 --max-tokens 64
"""

import argparse
import tempfile
import time

import ray

from exgrpo_verl.cpu_runtime.hf_rollout import HFRolloutServer
from exgrpo_verl.tiny_models import TinyModelSpec, build_tiny_model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--family", default="qwen2")
    args = parser.parse_args()

    model = build_tiny_model(TinyModelSpec(family=args.family), f"{tempfile.gettempdir()}/exgrpo-bench-{args.family}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    server = ray.remote(HFRolloutServer).options(max_concurrency=args.requests + 16).remote(
        model_path=str(model), prompt_length=64, response_length=args.max_tokens, seed=0, max_batch_size=args.requests
    )
    ray.get(server.stats.remote())
    # No stop tokens are hit often by a random model, but count what came back, not the cap.
    sampling = dict(temperature=1.0, top_p=1.0, top_k=-1, logprobs=True)
    prompts = [[5, 6, 7 + i % 50, 8] for i in range(args.requests)]

    def run(concurrent: bool) -> tuple[float, int]:
        start = time.perf_counter()
        if concurrent:
            outputs = ray.get([server.generate.remote(request_id=str(i), prompt_ids=p, sampling_params=dict(sampling)) for i, p in enumerate(prompts)])
        else:
            outputs = [ray.get(server.generate.remote(request_id=str(i), prompt_ids=p, sampling_params=dict(sampling))) for i, p in enumerate(prompts)]
        return time.perf_counter() - start, sum(len(o.token_ids) for o in outputs)

    run(True)  # warm-up
    batched_s, batched_tokens = run(True)
    single_s, single_tokens = run(False)
    batched_rate, single_rate = batched_tokens / batched_s, single_tokens / single_s
    print(f"tiny {args.family}, {args.requests} requests x <= {args.max_tokens} new tokens, temperature 1.0, log-probs on\n")
    print("| mode | tokens | seconds | tokens/s |")
    print("|---|---|---|---|")
    print(f"| batched (concurrent requests) | {batched_tokens} | {batched_s:.2f} | {batched_rate:.0f} |")
    print(f"| one request at a time | {single_tokens} | {single_s:.2f} | {single_rate:.0f} |")
    print(f"\nspeed-up of batching: {batched_rate / single_rate:.1f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
