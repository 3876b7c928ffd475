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


def test_verls_vllm_server_imports_under_the_cpu_runtime():
    """verl reads vLLM's version from the distribution "vllm" ("vllm version None not supported"
    without it) and vLLM finds its platform from that version's "+cpu"; the CPU build is the
    distribution "vllm-cpu". In a fresh process, as every Ray worker starts: a wrong platform
    loads vLLM's AVX-512 kernels and dies of SIGILL on an AVX2 machine, so the exit code counts."""
    import os
    import subprocess
    import sys

    probe = ("import verl, importlib.metadata as m\n"
             "import verl.workers.rollout.vllm_rollout.vllm_async_server\n"
             "from vllm.platforms import current_platform\n"
             "print(m.version('vllm') == m.version('vllm-cpu'), type(current_platform).__name__)")
    env = {**os.environ, "EXGRPO_CPU_RUNTIME": "1"}
    env.pop("VLLM_TARGET_DEVICE", None)
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert result.stdout.strip().splitlines()[-1] == "True CpuPlatform"
