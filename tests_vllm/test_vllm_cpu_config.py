"""The CPU runtime's check of a vLLM rollout config, where vLLM is installed."""

import pytest
from omegaconf import OmegaConf

from exgrpo_verl import cpu_runtime
from exgrpo_verl.cpu_runtime.launch import rollout_overrides


@pytest.fixture(scope="module")
def vllm_cpu_config():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=rollout_overrides("vllm"))


def test_the_vllm_overrides_pass_the_check(vllm_cpu_config):
    assert vllm_cpu_config.actor_rollout_ref.rollout.name == "vllm"
    cpu_runtime.check_trainer_config(vllm_cpu_config)


@pytest.mark.parametrize("key, fix", [("free_cache_engine", "set actor_rollout_ref.rollout.free_cache_engine=False"),
                                      ("enable_sleep_mode", "set +actor_rollout_ref.rollout.enable_sleep_mode=False")])
def test_sleep_mode_is_refused_with_the_fix(vllm_cpu_config, key, fix):
    config = OmegaConf.create(OmegaConf.to_container(vllm_cpu_config))
    OmegaConf.update(config, f"actor_rollout_ref.rollout.{key}", True, force_add=True)
    with pytest.raises(cpu_runtime.CPUConfigError, match="vLLM has no sleep mode on a CPU; " + fix.replace("+", r"\+")):
        cpu_runtime.check_trainer_config(config)
