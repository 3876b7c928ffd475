"""The verl plugin and the CPU runtime: loaded where verl runs, absent without the switch,
loud when broken, and clear about configs it cannot serve."""

import importlib.util
import logging
import sys

import pytest
import ray
from omegaconf import OmegaConf

from exgrpo_verl import cpu_runtime


def _probe_verl_process():
    """Runs in a fresh Ray worker process: what did `import verl` register there?"""
    import sys

    import verl  # noqa: F401  (loads the verl.plugins entry points)
    from verl.plugin.platform.platform_manager import PlatformRegistry
    from verl.trainer.ppo import core_algos
    from verl.utils.device import get_device_name
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    import os

    return {
        "transfer_queue_threads": os.environ.get("TQ_NUM_THREADS"),
        "plugin_loaded": "exgrpo_verl.plugin" in sys.modules,
        "advantage_registered": "exgrpo" in core_algos.ADV_ESTIMATOR_REGISTRY,
        "cpu_runtime_imported": any(m.startswith("exgrpo_verl.cpu_runtime") for m in sys.modules),
        "cpu_platform_registered": PlatformRegistry.get("cpu") is not None,
        "hf_rollout_registered": ("hf", "async") in _ROLLOUT_REGISTRY or "hf" in RolloutReplicaRegistry._registry,
        "device": get_device_name(),
    }


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def test_plugin_loads_in_ray_workers_and_cpu_runtime_only_with_its_switch(ray_cluster):
    from ray import cloudpickle as ray_cloudpickle

    # The probe travels by value: Ray workers cannot import this test module.
    ray_cloudpickle.register_pickle_by_value(sys.modules[__name__])
    probe = ray.remote(_probe_verl_process)
    # Each runtime_env gets its own worker processes, so both start from a clean `import verl`.
    without = ray.get(probe.options(runtime_env={"env_vars": {cpu_runtime.SWITCH_ENV: "0"}}).remote())
    with_switch = ray.get(probe.options(runtime_env={"env_vars": {cpu_runtime.SWITCH_ENV: "1"}}).remote())

    assert without["plugin_loaded"] and with_switch["plugin_loaded"]
    assert without["advantage_registered"] and with_switch["advantage_registered"]

    assert not without["cpu_runtime_imported"]
    assert not without["cpu_platform_registered"]
    assert not without["hf_rollout_registered"]
    assert without["device"] != "cpu"

    assert with_switch["cpu_platform_registered"] and with_switch["hf_rollout_registered"]
    assert with_switch["device"] == "cpu"
    assert with_switch["transfer_queue_threads"] == str(cpu_runtime.transfer_queue_threads())


def test_a_broken_plugin_is_loud(monkeypatch, caplog):
    from importlib.metadata import entry_points

    def broken():
        raise RuntimeError("simulated registration failure")

    monkeypatch.setenv(cpu_runtime.SWITCH_ENV, "1")
    monkeypatch.setattr(cpu_runtime, "activate", broken)  # the plugin imports the runtime only when switched on
    monkeypatch.delitem(sys.modules, "exgrpo_verl.plugin", raising=False)
    (entry_point,) = [ep for ep in entry_points(group="verl.plugins") if ep.name == "exgrpo"]
    with caplog.at_level(logging.ERROR, logger="exgrpo_verl"), pytest.raises(RuntimeError, match="simulated"):
        entry_point.load()
    assert any(r.levelno >= logging.ERROR and "registering the verl plugin failed" in r.getMessage() for r in caplog.records)
    monkeypatch.delitem(sys.modules, "exgrpo_verl.plugin", raising=False)
    monkeypatch.undo()
    importlib.import_module("exgrpo_verl.plugin")


@pytest.fixture(scope="module")
def verl_cpu_config():
    """verl's default trainer config composed with our CPU overrides, through hydra."""
    from hydra import compose, initialize_config_module

    from exgrpo_verl.cpu_runtime.launch import CPU_RUNTIME_OVERRIDES

    with initialize_config_module(config_module="verl.trainer.config", version_base=None):
        return compose(config_name="ppo_trainer", overrides=CPU_RUNTIME_OVERRIDES)


def test_the_cpu_overrides_pass_the_check(verl_cpu_config):
    cpu_runtime.check_trainer_config(verl_cpu_config)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("actor_rollout_ref.actor.strategy", "fsdp", "actor_rollout_ref.actor.strategy=fsdp: FSDP1"),
        ("actor_rollout_ref.rollout.tensor_model_parallel_size", 2, "set actor_rollout_ref.rollout.tensor_model_parallel_size=1"),
        ("actor_rollout_ref.model.override_config.attn_implementation", "flash_attention_2", "attn_implementation=sdpa"),
        ("actor_rollout_ref.model.use_remove_padding", True, "use_remove_padding=False"),
        ("actor_rollout_ref.rollout.name", "sglang", "no other rollout runs on a CPU; set actor_rollout_ref.rollout.name=hf"),
        # This venv has no vLLM (its CPU build lives in .venv-vllm, tests_vllm/).
        ("actor_rollout_ref.rollout.name", "vllm", "vLLM is not installed in this Python; run `make vllm-venv`"),
    ],
)
def test_configs_the_cpu_cannot_serve_get_the_key_and_the_fix(verl_cpu_config, key, value, message):
    config = OmegaConf.create(OmegaConf.to_container(verl_cpu_config))
    OmegaConf.update(config, key, value, force_add=True)
    with pytest.raises(cpu_runtime.CPUConfigError, match=message.replace("(", r"\(")):
        cpu_runtime.check_trainer_config(config)


def test_worker_side_checks_refuse_the_same_settings():
    from types import SimpleNamespace

    with pytest.raises(cpu_runtime.CPUConfigError, match="FSDP1"):
        cpu_runtime.check_engine_config(SimpleNamespace(override_config={"attn_implementation": "sdpa"}), SimpleNamespace(strategy="fsdp", use_remove_padding=False))
    with pytest.raises(cpu_runtime.CPUConfigError, match="flash-attention needs a GPU"):
        cpu_runtime.check_engine_config(SimpleNamespace(override_config={}), SimpleNamespace(strategy="fsdp2", use_remove_padding=False))
    with pytest.raises(cpu_runtime.CPUConfigError, match="tensor_model_parallel_size=4"):
        cpu_runtime.check_rollout_config(SimpleNamespace(tensor_model_parallel_size=4, data_parallel_size=1, pipeline_model_parallel_size=1))


def test_rollout_threads_default_to_the_cores_and_take_a_share_or_refuse_a_bad_one(monkeypatch):
    import os

    monkeypatch.delenv(cpu_runtime.THREADS_ENV, raising=False)
    assert cpu_runtime.rollout_threads() == os.cpu_count()
    monkeypatch.setenv(cpu_runtime.THREADS_ENV, "1")
    assert cpu_runtime.rollout_threads() == 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(cpu_runtime.THREADS_ENV, bad)
        with pytest.raises(ValueError, match=f"EXGRPO_CPU_THREADS={bad!r}: expected a positive integer"):
            cpu_runtime.rollout_threads()


def test_backend_string_normalisation():
    assert cpu_runtime.normalise_backend("cpu:gloo,cpu:gloo") == "gloo"
    assert cpu_runtime.normalise_backend("gloo") == "gloo"
    assert cpu_runtime.normalise_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"
    assert cpu_runtime.normalise_backend(None) is None


# ---- lazy registration (exgrpo_verl.plugin) ------------------------------------------------------

LIGHT_PROBE = """
import json, sys
import verl
heavy = ["verl.trainer.ppo.core_algos", "verl.trainer.ppo.v1", "exgrpo_verl.verl_adapters.trainer",
         "exgrpo_verl.verl_adapters.advantage"]
after_import = [name for name in heavy if name in sys.modules]
from verl.trainer.ppo import core_algos
estimator = core_algos.get_adv_estimator_fn("exgrpo").__module__
from verl.trainer.ppo.v1 import get_trainer_cls
trainer = get_trainer_cls("exgrpo").__name__
print(json.dumps({"plugin": "exgrpo_verl.plugin" in sys.modules, "after_import": after_import,
                  "estimator": estimator, "trainer": trainer}))
"""


def test_import_verl_loads_the_plugin_lightly_and_registries_still_find_everything():
    """A process that only imports verl (a vLLM worker) gets no trainer stack from us; one that
    imports verl's registries finds our estimator and trainer mode there."""
    import json
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in (cpu_runtime.SWITCH_ENV, "VERL_USE_EXTERNAL_MODULES")}
    result = subprocess.run([sys.executable, "-c", LIGHT_PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["plugin"]
    assert probe["after_import"] == []
    assert probe["estimator"] == "exgrpo_verl.verl_adapters.advantage"
    assert probe["trainer"] == "ExGRPOTrainer"


@pytest.fixture
def fresh_module(tmp_path, monkeypatch):
    """A module file nobody has imported yet: its name, and the path it lives on."""
    name = f"exgrpo_probe_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text("LOADED = 'all of it'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_when_imported_runs_after_the_module_has_fully_executed(fresh_module):
    from exgrpo_verl import plugin

    seen = []
    plugin.when_imported(fresh_module, lambda: seen.append(sys.modules[fresh_module].LOADED))
    assert seen == []  # nothing imported yet
    importlib.util.find_spec(fresh_module)  # looking a module up is not importing it
    assert seen == []
    module = importlib.import_module(fresh_module)
    assert seen == ["all of it"] and module.LOADED == "all of it"
    plugin.when_imported(fresh_module, lambda: seen.append("again"))  # already imported: at once
    assert seen == ["all of it", "again"]


def test_a_failing_lazy_registration_is_loud(fresh_module, caplog):
    from exgrpo_verl import plugin

    def broken():
        raise RuntimeError("simulated registration failure")

    plugin.when_imported(fresh_module, broken)
    with caplog.at_level(logging.ERROR, logger="exgrpo_verl"), pytest.raises(RuntimeError, match="simulated"):
        importlib.import_module(fresh_module)
    assert any("registering the verl plugin failed" in r.getMessage() for r in caplog.records)
