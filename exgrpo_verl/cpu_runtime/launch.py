"""Launching verl's trainer on a CPU-only machine with our runtime.

`CPU_RUNTIME_OVERRIDES` are the hydra overrides every CPU run needs (each answers one
obstacle listed in the CPU runtime's docstring); `cpu_run_overrides` adds a model, data
files and a run size; `run_training` runs an entry module in a subprocess with the
runtime's switch set. The CPU recipes, the demo and the end-to-end tests all start runs
through here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from exgrpo_verl import metrics_history
from exgrpo_verl.cpu_runtime import RUN_ENVIRONMENT

# Settings that any CPU run needs, whatever the model and the algorithm.
CPU_RUNTIME_OVERRIDES = [
    "trainer.device=cpu",
    "trainer.n_gpus_per_node=1",
    "trainer.nnodes=1",
    # Ray: one fake GPU for the actor worker; enough CPU slots for TransferQueue's actors.
    "+ray_kwargs.ray_init.num_gpus=1",
    "ray_kwargs.ray_init.num_cpus=32",
    # No Ray dashboard: its ten head processes start with every run and compete for a laptop's
    # cores during start-up (ray_kwargs.ray_init.include_dashboard=True brings it back).
    "+ray_kwargs.ray_init.include_dashboard=False",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    # FSDP on CPU: FSDP2, SDPA attention, no padding removal (flash-attention only).
    "actor_rollout_ref.actor.strategy=fsdp2",
    "actor_rollout_ref.ref.strategy=fsdp2",
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "actor_rollout_ref.model.use_remove_padding=False",
    # The CPU rollout backend.
    "actor_rollout_ref.rollout.name=hf",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.rollout.calculate_log_probs=True",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "reward.num_workers=1",
    "data.dataloader_num_workers=0",
]

# verl's own vLLM rollout instead of the `hf` server, for a Python with vLLM's CPU build
# (`make vllm-venv`): the engine stays awake (no sleep mode on a CPU), runs eagerly (no CUDA
# graphs; torch.compile would spend minutes building kernels), in float32 like the actor, so
# rollout and actor log-probs are comparable token by token.
VLLM_ROLLOUT_OVERRIDES = [
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.free_cache_engine=False",
    "+actor_rollout_ref.rollout.enable_sleep_mode=False",
    "actor_rollout_ref.rollout.enforce_eager=True",
    "actor_rollout_ref.rollout.dtype=float32",
]


def rollout_overrides(rollout: str) -> list[str]:
    """CPU_RUNTIME_OVERRIDES for rollout "hf" (the project's server) or "vllm" (verl's own)."""
    if rollout == "hf":
        return list(CPU_RUNTIME_OVERRIDES)
    if rollout == "vllm":
        return [o for o in CPU_RUNTIME_OVERRIDES if not o.startswith("actor_rollout_ref.rollout.name=")] + VLLM_ROLLOUT_OVERRIDES
    raise ValueError(f"rollout={rollout!r}: expected 'hf' or 'vllm'")


def cpu_run_overrides(
    model_path: str,
    train_files: str,
    val_files: str,
    *,
    batch_size: int = 4,
    rollouts_per_question: int = 4,
    max_prompt_length: int = 64,
    max_response_length: int = 16,
    total_steps: int = 3,
    output_dir: str = "outputs/cpu_run",
    reward_path: str | None = None,
    reward_name: str = "compute_score",
    rollout: str = "hf",
) -> list[str]:
    """Overrides for a small CPU run: model, data, sizes, logging and output locations;
    rollout "hf" or "vllm" (rollout_overrides)."""
    overrides = rollout_overrides(rollout) + [
        f"actor_rollout_ref.model.path={model_path}",
        f"data.train_files={train_files}",
        f"data.val_files={val_files}",
        f"data.train_batch_size={batch_size}",
        f"data.max_prompt_length={max_prompt_length}",
        f"data.max_response_length={max_response_length}",
        f"actor_rollout_ref.rollout.n={rollouts_per_question}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={batch_size * rollouts_per_question}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={batch_size * rollouts_per_question}",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.1",
        f"trainer.total_training_steps={total_steps}",
        "trainer.logger=[console]",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={output_dir}/checkpoints",
        "trainer.project_name=exgrpo_cpu",
        "trainer.experiment_name=cpu_run",
    ]
    if reward_path:
        overrides += [f"reward.custom_reward_function.path={reward_path}", f"reward.custom_reward_function.name={reward_name}"]
    return overrides


def cpu_env(metrics_path: str | None = None) -> dict[str, str]:
    """The environment of a CPU run: the runtime's switch, offline hubs, optional JSONL metrics."""
    env = {**os.environ, **RUN_ENVIRONMENT}
    if metrics_path:
        env["VERL_FILE_LOGGER_PATH"] = str(metrics_path)
    return env


def run_training(
    overrides: list[str],
    log_path: str,
    metrics_path: str | None = None,
    entry_module: str = "exgrpo_verl.main",
    extra_env: dict[str, str] | None = None,
    timeout_s: float = 1200,
    on_step=None,
) -> subprocess.CompletedProcess:
    """Run a trainer entry module in a subprocess with the CPU runtime; its output goes to
    `log_path`, its per-step metrics (verl's file logger, JSONL) to `metrics_path`.
    `on_step(row)` is called with each step's metrics as they appear (progress display)."""
    if metrics_path:
        overrides = [o for o in overrides if not o.startswith("trainer.logger=")] + ["trainer.logger=[console,file]"]
    command = [sys.executable, "-m", entry_module, *overrides]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env={**cpu_env(metrics_path), **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        seen = 0
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                raise subprocess.TimeoutExpired(command, timeout_s)
            time.sleep(0.5)
            seen = _report_new_steps(metrics_path, seen, on_step)
        _report_new_steps(metrics_path, seen, on_step)
    return subprocess.CompletedProcess(command, process.returncode)


def _report_new_steps(metrics_path, seen: int, on_step) -> int:
    if on_step is None or not metrics_path or not os.path.exists(metrics_path):
        return seen
    rows = read_metrics(metrics_path)
    for row in rows[seen:]:
        on_step(row)
    return len(rows)


def read_metrics(metrics_path: str) -> list[dict]:
    """Per-step metrics written by verl's file logger, in step order, across resumes
    (exgrpo_verl.metrics_history)."""
    return metrics_history.read_history(metrics_path)
