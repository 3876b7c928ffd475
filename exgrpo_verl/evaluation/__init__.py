"""Evaluation: graders, avg@k metrics, and generation.

- `outcomes`: `GradeResult`, what every grader returns.
- `graders`: the paper's boxed grader, math-verify, strict and lenient multiple choice.
- `math_verify_worker`: math-verify from any thread (a child process off the main thread).
- `reward_function`: the lenient verl reward function (`compute_score`).
- `metrics`: avg@k per benchmark, in-distribution / out-of-distribution averages, the paper's numbers.
- `generation`: sample n responses per prompt with vLLM, or with the CPU engine when vLLM is absent.

Answer extraction and normalisation, which data preparation shares, are in `exgrpo_verl.answers`.
"""
