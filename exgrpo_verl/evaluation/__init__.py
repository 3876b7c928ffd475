"""Evaluation: answer graders, the verl reward function, avg@k metrics, and generation.

- `graders`: math-verify, boxed-string and multiple-choice graders; `compute_score` for verl.
- `metrics`: avg@k per benchmark, in-distribution / out-of-distribution averages, the paper's numbers.
- `generation`: sample n responses per prompt with vLLM, or with the CPU engine when vLLM is absent.
"""
