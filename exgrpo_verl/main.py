"""`python -m exgrpo_verl.main [hydra overrides]`: verl's `main_ppo` on our config
(`trainer_configs/exgrpo.yaml`), with the config, the model path and every data row checked
before Ray or any model starts.

verl's own entry point runs the same trainer
(`python -m verl.trainer.main_ppo --config-path <trainer_configs> --config-name exgrpo`);
this one adds the up-front checks, so a bad value, a missing file or a bad row fails in
seconds with its key and fix instead of minutes later inside a Ray worker. Nothing here
imports verl (or torch) before the checks pass: hydra finds verl's config folder as files,
not as the `verl` package, whose import loads the whole trainer stack through its plugins.

The run owns `trainer.default_local_dir` while it lives (a second run on it is refused) and
stops cleanly on SIGTERM, saying where a resume starts (`owning_the_run`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

import hydra

from exgrpo_verl import checkpoint_retention, cpu_runtime_requested, graceful_stop, metrics_history, quiet_logs, run_lock
from exgrpo_verl.config import ExGRPOConfig, raise_on_incompatible_verl_settings
from exgrpo_verl.preflight import check_run_inputs
from exgrpo_verl.settings_checks import check_attention, check_settings
from exgrpo_verl.strategies import frozen_replay_set

CONFIG_DIR = str(files("exgrpo_verl.trainer_configs"))


def check_config(config) -> ExGRPOConfig:
    """Validate every setting's type and range, the reward function's file, the ExGRPO section
    and, on a CPU run, what the CPU runtime can serve."""
    from omegaconf import OmegaConf

    check_settings(config)
    rollouts = config.actor_rollout_ref.rollout.n
    if not isinstance(rollouts, int) or rollouts < 2:
        raise ValueError(f"actor_rollout_ref.rollout.n={rollouts!r}: ExGRPO needs K >= 2 rollouts per question")
    settings = ExGRPOConfig.from_dict(OmegaConf.to_container(config.get("exgrpo") or {}, resolve=True))
    settings.experience_config(group_size=rollouts)
    strategy = settings.replay_strategy(rollouts)
    if strategy.frozen_source:  # RLEP's earlier run must be readable now, not inside Ray
        frozen_replay_set(strategy.settings.source)
    if settings.enabled:
        raise_on_incompatible_verl_settings(config)
    manager = config.reward.reward_manager
    if manager.get("name") != "GuardedRewardManager":
        raise ValueError(f"reward.reward_manager.name={manager.get('name')}: the reward guard must stay in place; "
                         f"choose the manager it wraps with exgrpo.reward.manager={manager.get('name')} instead")
    if cpu_runtime_requested():
        from exgrpo_verl import cpu_runtime

        cpu_runtime.check_trainer_config(config)
    return settings


def resumes(config) -> bool:
    """Whether verl will resume this run from a checkpoint (trainer.resume_mode)."""
    mode = config.trainer.get("resume_mode", "auto")
    latest = os.path.join(str(config.trainer.default_local_dir), "latest_checkpointed_iteration.txt")
    return mode == "resume_path" or (mode == "auto" and os.path.exists(latest))


@hydra.main(config_path=CONFIG_DIR, config_name="exgrpo", version_base=None)
def main(config):
    check_config(config)
    check_attention(config)
    for report in check_run_inputs(config):
        skipped = f", {len(report.overlong)} over data.max_prompt_length skipped (first: {report.overlong[0][0]} row " \
                  f"{report.overlong[0][1]})" if report.overlong else ""
        print(f"exgrpo: {report.key}: {report.rows} rows checked{skipped}", flush=True)
    checkpoint_root = str(config.trainer.default_local_dir)
    with owning_the_run(checkpoint_root) as stop:  # before anything touches the folder
        checkpoint_retention.remove_trash(Path(checkpoint_root))
        metrics_file = metrics_history.file_logger_path(config)
        if metrics_file is not None:
            metrics_history.prepare(metrics_file, resuming=resumes(config))
        quiet_logs.request_for_run(config.actor_rollout_ref.actor.strategy)
        run_verl(config, on_ray_ready=stop.install)


@contextmanager
def owning_the_run(checkpoint_root: str):
    """This process owns `checkpoint_root` (exgrpo_verl.run_lock) until it exits, and a SIGTERM
    inside stops it cleanly (exgrpo_verl.graceful_stop): Ray shut down, the lock released, one
    line saying where a resume starts, exit 143. A second run on the folder exits here (1)."""
    try:
        lock = run_lock.acquire(checkpoint_root)
    except run_lock.FolderInUse as refusal:
        sys.exit(f"exgrpo: {refusal}")
    stop = graceful_stop.SigtermStop()
    stop.install()
    try:
        yield stop
    except BaseException:
        if not stop.received:
            raise
        import ray

        ray.shutdown()  # ends the trainer and its workers: the step in progress is dropped
        print(graceful_stop.resume_line(checkpoint_root), flush=True)
        sys.exit(graceful_stop.EXIT_CODE)
    finally:
        lock.release()


class _AfterRayInit:
    """verl's task runner class, whose `.remote()` / `.options()` is the first thing `run_ppo`
    calls after `ray.init`: `on_ray_ready()` runs there, before the runner starts."""

    def __init__(self, runner_class, on_ray_ready):
        self._runner_class, self._on_ray_ready = runner_class, on_ray_ready

    def remote(self, *args, **kwargs):
        self._on_ray_ready()
        return self._runner_class.remote(*args, **kwargs)

    def options(self, *args, **kwargs):
        self._on_ray_ready()
        return self._runner_class.options(*args, **kwargs)


def run_verl(config, on_ray_ready) -> None:
    """verl's `main_ppo.main` without its hydra wrapper (device, verl's config checks, `run_ppo`),
    calling `on_ray_ready()` once Ray is up: Ray takes SIGTERM over when the driver connects, and
    the clean stop takes it back there (exgrpo_verl.graceful_stop)."""
    from verl.trainer import main_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    validate_config(config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    if config.trainer.use_v1:
        runner_class = main_ppo.TaskRunnerV1
    else:
        from verl.trainer.main_ppo_v0 import TaskRunner as runner_class
    main_ppo.run_ppo(config, task_runner_class=_AfterRayInit(runner_class, on_ray_ready))


def verl_config_dir() -> str:
    """verl's hydra config folder, located without importing verl."""
    return os.path.join(importlib.util.find_spec("verl").submodule_search_locations[0], "trainer", "config")


if __name__ == "__main__":
    # Replaces the yaml's pkg://verl.trainer.config (same folder): hydra would import verl for it.
    sys.argv.append(f"hydra.searchpath=[file://{verl_config_dir()}]")
    main()
