"""Settings checked before Ray starts (exgrpo_verl/settings_checks.py): every number and switch
of the table, the reward function's file and name, flash-attn on GPU runs only; and verl's
optional-engine warnings filtered (exgrpo_verl/quiet_logs.py)."""

import importlib.util
import resource
import subprocess
import sys
import warnings

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from exgrpo_verl import CPU_RUNTIME_SWITCH, quiet_logs
from exgrpo_verl.cpu_runtime.launch import cpu_env, cpu_run_overrides
from exgrpo_verl.main import CONFIG_DIR, verl_config_dir
from exgrpo_verl.preflight import PreflightError
from exgrpo_verl.settings_checks import (SETTINGS, attention_problem, check_settings, reward_function_problems,
                                         setting_problems)

# Not in the composed default: the CPU runtime adds `+ray_kwargs.ray_init.num_gpus`; the plugin reads
# parameter_sync_step with a default of 1 (config.incompatible_verl_settings).
ABSENT_FROM_THE_DEFAULTS = {"ray_kwargs.ray_init.num_gpus", "trainer.v1.sync.parameter_sync_step"}


@pytest.fixture(scope="module")
def default_config():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="exgrpo", overrides=[f"hydra.searchpath=[file://{verl_config_dir()}]"])


def _with(config, **values):
    config = OmegaConf.create(OmegaConf.to_container(config, resolve=False))
    for key, value in values.items():
        OmegaConf.update(config, key.replace("__", "."), value, force_add=True)
    return config


def test_every_row_is_a_setting_of_the_config_and_the_defaults_pass(default_config):
    absent = {key for key, _ in SETTINGS if OmegaConf.select(default_config, key, default=KeyError) is KeyError}
    assert absent == ABSENT_FROM_THE_DEFAULTS
    assert setting_problems(default_config) == []


@pytest.mark.parametrize("key", [key for key, _ in SETTINGS])
def test_a_string_for_any_setting_is_named(default_config, key):
    problems = setting_problems(_with(default_config, **{key.replace(".", "__"): "abc"}))
    # (plus any setting that copies it: actor.loss_scale_factor is ${data.max_response_length})
    assert next(rule.problem(key, "abc") for k, rule in SETTINGS if k == key) in problems
    assert any(problem.startswith(f"{key}='abc': must be ") for problem in problems)


@pytest.mark.parametrize("key, value, allowed", [
    ("actor_rollout_ref.rollout.gpu_memory_utilization", 1.5, "a number in (0, 1]"),
    ("actor_rollout_ref.rollout.tensor_model_parallel_size", 0, "an integer >= 1"),
    ("trainer.total_training_steps", 0, "an integer >= 1, or null"),
    ("trainer.test_freq", -2, "an integer >= -1"),
    ("data.train_batch_size", True, "an integer >= 1"),  # a bool is not a count
    ("data.train_batch_size", 12.0, "an integer >= 1"),
    ("actor_rollout_ref.actor.optim.lr", float("nan"), "a number >= 0"),
    ("actor_rollout_ref.model.use_remove_padding", 1, "true or false"),
])
def test_values_out_of_range_are_named_with_what_is_allowed(default_config, key, value, allowed):
    assert setting_problems(_with(default_config, **{key.replace(".", "__"): value})) == \
        [f"{key}={value!r}: must be {allowed}"]


def test_nullable_settings_take_null(default_config):
    config = _with(default_config, trainer__total_training_steps=None, trainer__max_actor_ckpt_to_keep=None,
                   actor_rollout_ref__rollout__max_model_len=None)
    assert setting_problems(config) == []


def _reward(path, name="compute_score"):
    return OmegaConf.create({"reward": {"custom_reward_function": {"path": path, "name": name}}})


def test_the_reward_function_must_exist(tmp_path):
    from exgrpo_verl import reward

    assert reward_function_problems(_reward(reward.__file__)) == []
    assert reward_function_problems(_reward("pkg://exgrpo_verl.reward")) == []
    assert reward_function_problems(_reward(None)) == []  # verl's default reward
    missing = str(tmp_path / "my_reward.py")
    assert reward_function_problems(_reward(missing)) == [
        f"reward.custom_reward_function.path={missing}: no such file; fix: the path of the .py file that defines the "
        "reward function (recipes: REWARD_MODULE=<module>)"]
    assert "no module exgrpo_verl.no_such_reward" in reward_function_problems(_reward("pkg://exgrpo_verl.no_such_reward"))[0]
    (tmp_path / "my_reward.py").write_text("import math\ndef score(data_source, solution_str, ground_truth, extra_info=None):\n"
                                           "    return 1.0\n")
    assert reward_function_problems(_reward(missing, "score")) == []
    assert reward_function_problems(_reward(missing))[0].startswith(
        f"reward.custom_reward_function.name=compute_score: {missing} defines no compute_score at top level")
    (tmp_path / "star.py").write_text("from math import *\n")  # cannot tell without running it: accepted
    assert reward_function_problems(_reward(str(tmp_path / "star.py"))) == []


def _entry_point(overrides, env) -> tuple[subprocess.CompletedProcess, float, set[str]]:
    """Run `python -m exgrpo_verl.main`; its result, CPU seconds and the top-level packages it imported."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "exgrpo_verl.main", *overrides], env=env,
                            capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return result, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), imported


def test_the_entry_point_names_bad_settings_and_a_missing_reward_file_in_seconds(tiny_qwen2, char_hunt_files, tmp_path):
    train, val = char_hunt_files
    overrides = cpu_run_overrides(str(tiny_qwen2), str(train), str(val), output_dir=str(tmp_path),
                                  reward_path=str(tmp_path / "no_such_reward.py"))
    result, cpu_seconds, imported = _entry_point(overrides + ["trainer.total_training_steps=abc"], cpu_env())
    assert result.returncode != 0
    assert "PreflightError: the trainer config has settings that cannot work:\n" \
           "- trainer.total_training_steps='abc': must be an integer >= 1, or null\n" \
           f"- reward.custom_reward_function.path={tmp_path / 'no_such_reward.py'}: no such file" in result.stderr
    assert not {"torch", "verl", "ray"} & imported, "the checks ran after importing the trainer stack"
    assert cpu_seconds < 5  # its CPU time: the wall time depends on how loaded the machine is


def test_flash_attention_is_asked_for_on_gpu_runs_only(default_config, monkeypatch):
    monkeypatch.delenv(CPU_RUNTIME_SWITCH, raising=False)
    problem = attention_problem(default_config, flash_attn_installed=False)  # verl's defaults: padding removal, FA2
    assert problem.startswith("actor_rollout_ref.model.use_remove_padding=True with attn_implementation="
                              "flash_attention_2 needs the flash-attn package, which is not installed; fix: "
                              "`pip install flash-attn==2.8.3 --no-build-isolation`, or run without it on PyTorch's "
                              "SDPA attention: ATTENTION=sdpa")
    assert attention_problem(default_config, flash_attn_installed=True) is None
    sdpa = _with(default_config, actor_rollout_ref__model__use_remove_padding=False,
                 actor_rollout_ref__model__override_config__attn_implementation="sdpa")
    assert attention_problem(sdpa, flash_attn_installed=False) is None
    monkeypatch.setenv(CPU_RUNTIME_SWITCH, "1")  # the CPU runtime never uses flash-attn (and refuses it itself)
    assert attention_problem(default_config, flash_attn_installed=False) is None


def test_the_entry_point_refuses_a_gpu_run_without_flash_attn_but_never_a_cpu_run(tiny_qwen2, char_hunt_files, tmp_path):
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here: its absence cannot be shown")
    train, val = char_hunt_files
    overrides = cpu_run_overrides(str(tiny_qwen2), str(train), str(val), output_dir=str(tmp_path)) + [
        "actor_rollout_ref.model.use_remove_padding=True"]
    gpu_env = {key: value for key, value in cpu_env().items() if key != CPU_RUNTIME_SWITCH}
    result, cpu_seconds, _ = _entry_point(overrides, gpu_env)
    assert result.returncode != 0 and cpu_seconds < 5
    assert "PreflightError: actor_rollout_ref.model.use_remove_padding=True with attn_implementation=sdpa needs the " \
           "flash-attn package, which is not installed; fix: `pip install flash-attn" in result.stderr
    # The same config on the CPU runtime: its own check speaks (padding removal), never flash-attn's install line.
    result, _, _ = _entry_point(overrides, cpu_env())
    assert result.returncode != 0
    assert "actor_rollout_ref.model.use_remove_padding=True: padding removal needs flash-attention's varlen kernels" \
           in result.stderr
    assert "pip install flash-attn" not in result.stderr


def test_only_optional_engines_that_are_not_installed_are_quieted(monkeypatch):
    monkeypatch.setenv(quiet_logs.QUIET_SWITCH, "0")  # restored (removed) after the test
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        quiet_logs.install()
        for engine in quiet_logs.OPTIONAL_ENGINES:
            warnings.warn(f"{engine} engine is not available: ModuleNotFoundError(\"No module named '{engine}'\")")
        warnings.warn("megatron engine is not available: ImportError('undefined symbol: ncclCommSplit')")
        warnings.warn("something else")
    assert [str(w.message) for w in shown] == [
        "megatron engine is not available: ImportError('undefined symbol: ncclCommSplit')", "something else"]
    monkeypatch.delenv(CPU_RUNTIME_SWITCH, raising=False)
    quiet_logs.request_for_run("megatron")  # that engine's import warning may explain a failure: kept
    assert not quiet_logs.requested()
    quiet_logs.request_for_run("fsdp2")  # the entry point's Ray processes inherit the switch; the plugin reads it
    assert quiet_logs.requested()
