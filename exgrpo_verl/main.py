"""`python -m exgrpo_verl.main [hydra overrides]`: verl's `main_ppo` on our config
(`trainer_configs/exgrpo.yaml`), with the config checked before Ray or any model starts.

verl's own entry point runs the same trainer
(`python -m verl.trainer.main_ppo --config-path <trainer_configs> --config-name exgrpo`);
this one adds the up-front checks, so a bad value fails in a second with its key and fix
instead of minutes later inside a Ray worker.
"""

from __future__ import annotations

from importlib.resources import files

import hydra

from exgrpo_verl import cpu_runtime_requested
from exgrpo_verl.config import ExGRPOConfig, raise_on_incompatible_verl_settings

CONFIG_DIR = str(files("exgrpo_verl.trainer_configs"))


def check_config(config) -> ExGRPOConfig:
    """Validate the ExGRPO section and, on a CPU run, what the CPU runtime can serve."""
    from omegaconf import OmegaConf

    rollouts = config.actor_rollout_ref.rollout.n
    if not isinstance(rollouts, int) or rollouts < 2:
        raise ValueError(f"actor_rollout_ref.rollout.n={rollouts!r}: ExGRPO needs K >= 2 rollouts per question")
    settings = ExGRPOConfig.from_dict(OmegaConf.to_container(config.get("exgrpo") or {}, resolve=True))
    settings.experience_config(group_size=rollouts)
    if settings.enabled:
        raise_on_incompatible_verl_settings(config)
    if cpu_runtime_requested():
        from exgrpo_verl import cpu_runtime

        cpu_runtime.check_trainer_config(config)
    return settings


@hydra.main(config_path=CONFIG_DIR, config_name="exgrpo", version_base=None)
def main(config):
    from verl.trainer import main_ppo

    check_config(config)
    main_ppo.main.__wrapped__(config)  # verl's entry point without its own hydra wrapper


if __name__ == "__main__":
    main()
