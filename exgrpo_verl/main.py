"""`python -m exgrpo_verl.main [hydra overrides]`: verl's `main_ppo` on our config
(`trainer_configs/exgrpo.yaml`), with the config, the model path and every data row checked
before Ray or any model starts.

verl's own entry point runs the same trainer
(`python -m verl.trainer.main_ppo --config-path <trainer_configs> --config-name exgrpo`);
this one adds the up-front checks, so a bad value, a missing file or a bad row fails in
seconds with its key and fix instead of minutes later inside a Ray worker. Nothing here
imports verl (or torch) before the checks pass: hydra finds verl's config folder as files,
not as the `verl` package, whose import loads the whole trainer stack through its plugins.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from importlib.resources import files

import hydra

from exgrpo_verl import cpu_runtime_requested, metrics_history
from exgrpo_verl.config import ExGRPOConfig, raise_on_incompatible_verl_settings
from exgrpo_verl.preflight import check_run_inputs
from exgrpo_verl.strategies import frozen_replay_set

CONFIG_DIR = str(files("exgrpo_verl.trainer_configs"))


def check_config(config) -> ExGRPOConfig:
    """Validate the ExGRPO section and, on a CPU run, what the CPU runtime can serve."""
    from omegaconf import OmegaConf

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
    for report in check_run_inputs(config):
        skipped = f", {len(report.overlong)} over data.max_prompt_length skipped (first: {report.overlong[0][0]} row " \
                  f"{report.overlong[0][1]})" if report.overlong else ""
        print(f"exgrpo: {report.key}: {report.rows} rows checked{skipped}", flush=True)
    metrics_file = metrics_history.file_logger_path(config)
    if metrics_file is not None:
        metrics_history.prepare(metrics_file, resuming=resumes(config))

    from verl.trainer import main_ppo

    main_ppo.main.__wrapped__(config)  # verl's entry point without its own hydra wrapper


def verl_config_dir() -> str:
    """verl's hydra config folder, located without importing verl."""
    return os.path.join(importlib.util.find_spec("verl").submodule_search_locations[0], "trainer", "config")


if __name__ == "__main__":
    # Replaces the yaml's pkg://verl.trainer.config (same folder): hydra would import verl for it.
    sys.argv.append(f"hydra.searchpath=[file://{verl_config_dir()}]")
    main()
