"""The recipes (recipes/): every script's dry-run command composes with hydra against our
config, passes our checks and verl's, and carries the recipe's settings; GRPO twins differ
from their ExGRPO twin only in the replay ratio; the user's trailing hydra arguments win.

No training runs here: `DRY_RUN=1` makes a recipe print its command, which is parsed and
composed (hydra only). The CPU recipe's real run is what `make demo`-style runs and the
end-to-end tests cover.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from exgrpo_verl.cpu_runtime.launch import CPU_RUNTIME_OVERRIDES
from exgrpo_verl.main import CONFIG_DIR, check_config

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "recipes"

THINK_TEMPLATE = RECIPES / "templates" / "qwen2.5-math-think.jinja"
# recipe folder -> (default model, rollout tensor parallel size, context extended, chat template given)
GPU_RECIPES = {
    "qwen2.5-math-7b": ("Elliott/Qwen2.5-Math-7B-16k-think", 2, False, False),
    "qwen2.5-math-1.5b": ("Qwen/Qwen2.5-Math-1.5B", 1, True, True),
    "qwen2.5-7b-instruct": ("Qwen/Qwen2.5-7B-Instruct", 2, False, False),
    "llama3.1-8b": ("meta-llama/Llama-3.1-8B", 2, False, False),
    "llama3.1-8b-instruct": ("meta-llama/Llama-3.1-8B-Instruct", 2, False, False),
    "luffy-qwen-math-7b-zero": ("Elliott/LUFFY-Qwen-Math-7B-Zero", 2, True, False),
}
CPU_RECIPES = {"cpu/tiny-qwen2.sh": "exgrpo", "cpu/tiny-qwen2-grpo.sh": "grpo"}
# Keys that name a run, and so differ between the twins besides the replay ratio.
RUN_NAME_KEYS = {"trainer.experiment_name", "trainer.default_local_dir"}


def gpu_scripts() -> list[str]:
    return [f"{folder}/{algorithm}.sh" for folder in GPU_RECIPES for algorithm in ("exgrpo", "grpo")]


class DryRun:
    """What a recipe printed under DRY_RUN=1: preparation steps, the environment, the overrides."""

    def __init__(self, stdout: str):
        lines = [line for line in stdout.splitlines() if line.strip()]
        self.prepare = [line.removeprefix("# prepare: ") for line in lines if line.startswith("# prepare: ")]
        commands = [line for line in lines if not line.startswith("#")]
        assert len(commands) == 1, stdout
        words = shlex.split(commands[0])
        entry = words.index("exgrpo_verl.main")
        assert words[0] == "env" and words[entry - 1] == "-m", commands[0]
        self.env = dict(word.split("=", 1) for word in words[1 : entry - 2])
        self.python = words[entry - 2]
        self.overrides = words[entry + 1 :]


def dry_run(script: str, tmp_path: Path, *args: str, **env: str) -> DryRun:
    # A clean environment: nothing from the caller's shell (NNODES, WANDB, ...) leaks in.
    base = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "DRY_RUN": "1",
        "PYTHON": sys.executable,
        "OUTPUT_ROOT": str(tmp_path / "outputs"),
        "TRAIN_FILES": str(tmp_path / "data" / "train.parquet"),
        "VAL_FILES": str(tmp_path / "data" / "val.parquet"),
    }
    base.update(env)
    base = {key: value for key, value in base.items() if value is not None}
    result = subprocess.run(
        ["bash", str(RECIPES / script), *args], env=base, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return DryRun(result.stdout)


def compose_overrides(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="exgrpo", overrides=overrides)


def check_like_the_entry_point(config) -> None:
    """What `python -m exgrpo_verl.main` checks before Ray starts: ours, then verl's own."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    check_config(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    omega_conf_to_dataclass(config.actor_rollout_ref.rollout)


def flat(config) -> dict:
    """Every leaf as dotted-key -> value, interpolations unresolved (so names stay names)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(config, resolve=False), "")
    return out


def test_every_recipe_script_is_covered_here():
    scripts = {
        str(path.relative_to(RECIPES))
        for path in RECIPES.rglob("*.sh")
        if path.name not in ("common.sh", "settings.sh")
    }
    assert scripts == set(gpu_scripts()) | set(CPU_RECIPES) | {"tools/start_ray_node.sh"}
    for script in scripts:
        assert os.access(RECIPES / script, os.X_OK), f"{script} is not executable"


@pytest.mark.parametrize("script", ["common.sh", *sorted(str(p.relative_to(RECIPES)) for p in RECIPES.rglob("*/*.sh"))])
def test_bash_syntax(script):
    result = subprocess.run(["bash", "-n", str(RECIPES / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", gpu_scripts())
def test_gpu_recipe_composes_with_the_release_settings(script, tmp_path):
    folder, algorithm = script.split("/")[0], script.split("/")[1].removesuffix(".sh")
    model, rollout_tp, extended, templated = GPU_RECIPES[folder]
    run = dry_run(script, tmp_path)
    config = compose_overrides(run.overrides)
    check_like_the_entry_point(config)

    arr = config.actor_rollout_ref
    # The release's run (spec): B=128 questions x K=8, mini-batch 64, 1 epoch, lr 1e-6,
    # prompt 1024 / response 8192 tokens, temperature 1.0 (validation 0.6), 701 steps.
    assert config.data.train_batch_size == 128
    assert arr.rollout.n == 8
    assert arr.actor.ppo_mini_batch_size == 64
    assert arr.actor.ppo_epochs == 1
    assert arr.actor.optim.lr == pytest.approx(1e-6)
    assert arr.actor.entropy_coeff == pytest.approx(0.001)
    assert (config.data.max_prompt_length, config.data.max_response_length) == (1024, 8192)
    assert arr.rollout.temperature == 1.0 and arr.rollout.val_kwargs.temperature == pytest.approx(0.6)
    assert config.trainer.total_training_steps == 701
    # The release's cadence: validation every 10 steps, none before training, a save every 50.
    assert (config.trainer.test_freq, config.trainer.save_freq, config.trainer.val_before_train) == (10, 50, False)
    assert config.trainer.max_actor_ckpt_to_keep == 2  # a 7B save is ~107 GB: keep the last two
    assert config.algorithm.adv_estimator == "exgrpo" and config.algorithm.norm_adv_by_std_in_grpo is False
    assert config.exgrpo.replay_ratio == (0.5 if algorithm == "exgrpo" else 0)
    # GPU runtime: 1 node x 8 GPUs, vLLM, FSDP2 without offload, padding removal, checkpointing,
    # token-count micro-batches, vLLM sized for one prompt + response.
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (1, 8)
    assert arr.rollout.name == "vllm" and arr.rollout.tensor_model_parallel_size == rollout_tp
    assert arr.actor.strategy == "fsdp2"
    assert arr.actor.fsdp_config.param_offload is False and arr.actor.fsdp_config.optimizer_offload is False
    assert arr.model.use_remove_padding is True and arr.model.enable_gradient_checkpointing is True
    assert arr.actor.use_dynamic_bsz is True and arr.rollout.log_prob_use_dynamic_bsz is True
    check_release_preset(config)
    assert arr.rollout.max_model_len == 9216
    assert "address" not in config.ray_kwargs.ray_init  # one node: no cluster needed beforehand
    # Reward: the release's format-gated reward, from its installed file.
    reward = config.reward.custom_reward_function
    assert reward.path.endswith("exgrpo_verl/reward.py") and Path(reward.path).is_file()
    assert reward.name == "compute_score"
    # Names and places.
    assert config.trainer.experiment_name == f"{folder}-{algorithm}"
    assert config.trainer.default_local_dir == str(tmp_path / "outputs" / "exgrpo" / f"{folder}-{algorithm}" / "checkpoints")
    assert config.data.train_files == str(tmp_path / "data" / "train.parquet")
    assert config.trainer.logger == ["console"]
    # Model: the HF id, or (Qwen2.5-Math) its context-extended copy built from the HF id first.
    if extended:
        check_extension_step(run, model, tmp_path, templated)
    else:
        assert arr.model.path == model and run.prepare == []


def check_release_preset(config) -> None:
    """The release preset, applied on either arm: its loss, skip, buffer rules, reward rule and
    the release's 32,768-token update micro-batches (the entropy bonus's weight follows them)."""
    exgrpo, actor = config.exgrpo, config.actor_rollout_ref.actor
    assert (exgrpo.loss.aggregation, exgrpo.loss.release_world_size, exgrpo.loss.warmup_dual_clip) == ("release", 8, False)
    assert exgrpo.max_grad_norm == 500 and exgrpo.store_from_switch_step is False
    assert exgrpo.unused_fresh_questions == "discard"
    assert exgrpo.experience.selection_metric == "entropy_sum" and exgrpo.experience.zero_accuracy_policy == "keep_stale"
    assert exgrpo.experience.max_candidates_per_question is None and exgrpo.experience.max_trajectories_per_question is None
    assert actor.use_dynamic_bsz is True and actor.ppo_max_token_len_per_gpu == 32768
    assert config.reward.custom_reward_function.reward_kwargs.think_rule == "release"


@pytest.mark.parametrize("algorithm", ["exgrpo", "grpo"])
def test_preset_none_gives_the_projects_defaults(algorithm, tmp_path):
    run = dry_run(f"qwen2.5-math-7b/{algorithm}.sh", tmp_path, PRESET="none")
    assert "+preset=release" not in run.overrides
    config = compose_overrides(run.overrides)
    check_like_the_entry_point(config)
    assert config.exgrpo.loss.aggregation == "verl" and config.exgrpo.max_grad_norm is None
    assert config.actor_rollout_ref.actor.ppo_max_token_len_per_gpu == 2 * 9216
    assert "reward_kwargs" not in config.reward.custom_reward_function


def test_a_bad_preset_names_the_variable(tmp_path):
    env = {"PATH": os.environ["PATH"], "DRY_RUN": "1", "PYTHON": sys.executable, "PRESET": "paper"}
    result = subprocess.run(["bash", str(RECIPES / "qwen2.5-math-7b/grpo.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "PRESET=paper: give release" in result.stderr


def check_extension_step(run: DryRun, model: str, tmp_path: Path, templated: bool) -> None:
    """The recipe first builds the 16k copy of `model` (with the <think> template if `templated`) and trains it."""
    suffix = "-qwen2.5-math-think" if templated else ""
    expected = tmp_path / "outputs" / "models" / f"{model.split('/')[-1]}-rope40000-ctx16384{suffix}"
    assert compose_overrides(run.overrides).actor_rollout_ref.model.path == str(expected)
    [step] = run.prepare
    words = shlex.split(step)
    assert words[1].endswith("recipes/tools/extend_context.py")
    assert words[words.index("--model") + 1] == model and words[words.index("--out") + 1] == str(expected)
    assert words[words.index("--rope-theta") + 1] == "40000"
    assert words[words.index("--max-position-embeddings") + 1] == "16384"
    if templated:
        assert Path(words[words.index("--chat-template") + 1]) == THINK_TEMPLATE
    else:
        assert "--chat-template" not in words


def test_qwen_math_7b_falls_back_to_extending_the_base_model_with_the_think_template(tmp_path):
    run = dry_run("qwen2.5-math-7b/exgrpo.sh", tmp_path, EXTEND_CONTEXT="1", MODEL_PATH="Qwen/Qwen2.5-Math-7B")
    check_extension_step(run, "Qwen/Qwen2.5-Math-7B", tmp_path, templated=True)


@pytest.mark.parametrize("folder", sorted(GPU_RECIPES))
def test_grpo_twin_differs_only_in_the_replay_ratio(folder, tmp_path):
    exgrpo = flat(compose_overrides(dry_run(f"{folder}/exgrpo.sh", tmp_path).overrides))
    grpo = flat(compose_overrides(dry_run(f"{folder}/grpo.sh", tmp_path).overrides))
    assert exgrpo.keys() == grpo.keys()
    differing = {key for key in exgrpo if exgrpo[key] != grpo[key]}
    assert differing == {"exgrpo.replay_ratio"} | RUN_NAME_KEYS
    assert (exgrpo["exgrpo.replay_ratio"], grpo["exgrpo.replay_ratio"]) == (0.5, 0)


@pytest.mark.parametrize("args", [[], ["worker"], ["tail"]])
def test_the_ray_node_script_wants_a_role_and_a_head_address(args):
    result = subprocess.run(["bash", str(RECIPES / "tools" / "start_ray_node.sh"), *args], capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr and "head | worker <head-ip>" in result.stderr


def test_trailing_hydra_arguments_override_the_recipe(tmp_path):
    run = dry_run(
        "qwen2.5-math-7b/grpo.sh", tmp_path,
        "data.train_batch_size=64", "actor_rollout_ref.rollout.tensor_model_parallel_size=4", "exgrpo.replay_ratio=0.25",
    )
    config = compose_overrides(run.overrides)
    check_like_the_entry_point(config)
    assert config.data.train_batch_size == 64
    assert config.actor_rollout_ref.rollout.tensor_model_parallel_size == 4
    assert config.exgrpo.replay_ratio == 0.25  # even the algorithm's own setting


@pytest.mark.parametrize("strategy", ["zero_variance_fill", "repo"])
def test_replay_strategy_is_a_recipe_variable(strategy, tmp_path):
    config = compose_overrides(dry_run("cpu/tiny-qwen2.sh", tmp_path, REPLAY_STRATEGY=strategy).overrides)
    check_like_the_entry_point(config)
    assert config.exgrpo.strategy == strategy
    assert compose_overrides(dry_run("cpu/tiny-qwen2.sh", tmp_path).overrides).exgrpo.strategy == "exgrpo"


def test_environment_variables_set_model_cluster_lengths_and_logging(tmp_path):
    run = dry_run(
        "qwen2.5-math-7b/exgrpo.sh", tmp_path,
        MODEL_PATH="/models/my-qwen-math-16k", EXTEND_CONTEXT="0", NNODES="2", GPUS_PER_NODE="4",
        MAX_RESPONSE_LENGTH="3072", TOTAL_STEPS="50", WANDB="1", OFFLOAD="1", ROLLOUT_TP="1",
        PROJECT="proj", EXPERIMENT="exp", CKPT_DIR="/ckpt/here",
    )
    assert run.prepare == []
    config = compose_overrides(run.overrides)
    check_like_the_entry_point(config)
    arr = config.actor_rollout_ref
    assert arr.model.path == "/models/my-qwen-math-16k"
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (2, 4)
    assert config.ray_kwargs.ray_init.address == "auto"  # several nodes: join the running Ray cluster
    assert config.data.max_response_length == 3072
    assert arr.rollout.max_model_len == 1024 + 3072 and arr.rollout.log_prob_max_token_len_per_gpu == 3 * 4096
    assert config.trainer.total_training_steps == 50
    assert config.trainer.logger == ["console", "wandb"]
    assert arr.actor.fsdp_config.param_offload is True and arr.actor.fsdp_config.optimizer_offload is True
    assert arr.rollout.tensor_model_parallel_size == 1
    assert (config.trainer.project_name, config.trainer.experiment_name) == ("proj", "exp")
    assert config.trainer.default_local_dir == "/ckpt/here"


def test_default_data_files_are_the_releases_inside_the_data_folder(tmp_path):
    run = dry_run("qwen2.5-7b-instruct/exgrpo.sh", tmp_path, TRAIN_FILES=None, VAL_FILES=None, DATA_DIR="/my/data")
    config = compose_overrides(run.overrides)
    assert (config.data.train_files, config.data.val_files) == ("/my/data/openr1.parquet", "/my/data/math_valid.parquet")


@pytest.mark.parametrize("keep, expected", [("0", None), ("5", 5)])
def test_checkpoints_kept_follow_keep_checkpoints(tmp_path, keep, expected):
    run = dry_run("llama3.1-8b/exgrpo.sh", tmp_path, KEEP_CHECKPOINTS=keep)
    assert compose_overrides(run.overrides).trainer.max_actor_ckpt_to_keep == expected


def test_a_bad_keep_checkpoints_names_the_variable(tmp_path):
    env = {"PATH": os.environ["PATH"], "DRY_RUN": "1", "PYTHON": sys.executable, "KEEP_CHECKPOINTS": "two"}
    result = subprocess.run(["bash", str(RECIPES / "llama3.1-8b/exgrpo.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "KEEP_CHECKPOINTS=two: give a whole number" in result.stderr


def test_validation_cadence_and_the_lenient_reward_are_settings(tmp_path):
    run = dry_run(
        "qwen2.5-7b-instruct/exgrpo.sh", tmp_path,
        TEST_FREQ="5", VAL_BEFORE_TRAIN="1", REWARD_MODULE="exgrpo_verl.evaluation.reward_function",
    )
    config = compose_overrides(run.overrides)
    assert (config.trainer.test_freq, config.trainer.val_before_train) == (5, True)
    assert config.reward.custom_reward_function.path.endswith("exgrpo_verl/evaluation/reward_function.py")


@pytest.mark.parametrize("script", sorted(CPU_RECIPES))
def test_cpu_recipe_composes_with_the_cpu_runtime(script, tmp_path, monkeypatch):
    run = dry_run(script, tmp_path, MODEL_PATH=str(tmp_path / "tiny-qwen2"))
    assert run.env["EXGRPO_CPU_RUNTIME"] == "1"
    assert run.prepare == []  # model and data given
    for override in CPU_RUNTIME_OVERRIDES:
        assert override in run.overrides, override
    monkeypatch.setenv("EXGRPO_CPU_RUNTIME", "1")  # so check_config runs the CPU runtime's checks too
    config = compose_overrides(run.overrides)
    check_like_the_entry_point(config)
    arr = config.actor_rollout_ref
    assert config.trainer.device == "cpu" and arr.rollout.name == "hf"
    assert config.data.train_batch_size == 8 and arr.rollout.n == 4
    assert config.data.max_response_length == 32
    assert config.trainer.total_training_steps == 6
    assert config.exgrpo.sampler_poll_interval_s == pytest.approx(0.05)
    assert config.exgrpo.replay_ratio == (0.5 if CPU_RECIPES[script] == "exgrpo" else 0)
    assert arr.model.path == str(tmp_path / "tiny-qwen2")
    assert config.reward.custom_reward_function.path.endswith("exgrpo_verl/tasks/char_hunt.py")
    assert config.reward.custom_reward_function.name == "compute_score"


def test_cpu_grpo_twin_differs_only_in_the_replay_ratio(tmp_path):
    exgrpo = flat(compose_overrides(dry_run("cpu/tiny-qwen2.sh", tmp_path, MODEL_PATH="m").overrides))
    grpo = flat(compose_overrides(dry_run("cpu/tiny-qwen2-grpo.sh", tmp_path, MODEL_PATH="m").overrides))
    assert {key for key in exgrpo if exgrpo[key] != grpo.get(key)} == {"exgrpo.replay_ratio"} | RUN_NAME_KEYS


def test_cpu_recipe_prepares_its_model_and_data_when_not_given(tmp_path):
    run = dry_run("cpu/tiny-qwen2.sh", tmp_path, MODEL_PATH=None, TRAIN_FILES=None, VAL_FILES=None)
    config = compose_overrides(run.overrides)
    data = tmp_path / "outputs" / "data" / "char_hunt"
    assert config.actor_rollout_ref.model.path == str(tmp_path / "outputs" / "models" / "tiny-qwen2")
    assert (config.data.train_files, config.data.val_files) == (str(data / "train.parquet"), str(data / "val.parquet"))
    model_step, data_step = run.prepare
    assert "exgrpo_verl.tiny_models" in model_step and str(tmp_path / "outputs" / "models" / "tiny-qwen2") in model_step
    # The data step as printed really writes the files (the model build is the tiny-model tests' job).
    assert data_step.endswith(f"recipes/tools/char_hunt_data.py --out {data}")
    subprocess.run(shlex.split(data_step), check=True, cwd=tmp_path, timeout=120, capture_output=True)
    import pandas as pd

    assert len(pd.read_parquet(data / "train.parquet")) == 64 and len(pd.read_parquet(data / "val.parquet")) == 8


# ---- recipes/tools/extend_context.py -----------------------------------------------------------


def _fake_model(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "tokenizer.json").write_text("{}")
    return folder


def _extend(source: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RECIPES / "tools" / "extend_context.py"), "--model", str(source), "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )


def test_extend_context_rewrites_the_config_and_links_everything_else(tmp_path):
    qwen_math = {"model_type": "qwen2", "max_position_embeddings": 4096, "rope_theta": 10000, "sliding_window": 4096}
    source = _fake_model(tmp_path / "Qwen2.5-Math-7B", qwen_math)
    out = tmp_path / "extended"
    for _ in range(2):  # a second run (a relaunched recipe) replaces its own links
        result = _extend(source, out)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config == {**qwen_math, "max_position_embeddings": 16384, "rope_theta": 40000}
    assert json.loads((source / "config.json").read_text()) == qwen_math  # the source is untouched
    for name in ("model.safetensors", "tokenizer.json"):
        assert (out / name).is_symlink() and (out / name).resolve() == (source / name).resolve()


def test_extend_context_handles_rope_parameters_and_refuses_to_overwrite_the_source(tmp_path):
    source = _fake_model(
        tmp_path / "m", {"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 10000}}
    )
    assert _extend(source, tmp_path / "out").returncode == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 40000}
    assert "rope_theta" not in config and config["max_position_embeddings"] == 16384
    result = _extend(source, source)
    assert result.returncode != 0 and "is the source model folder" in result.stderr


def test_the_think_template_renders_the_prompt_the_release_expects(tiny_qwen2, tmp_path):
    """The release's reward and replay assume the rendered prompt ends with `<think>\\n`. A tokenizer
    built here (the tiny Qwen2's, ChatML tokens) given the recipe's template renders a release row so."""
    from transformers import AutoTokenizer

    from exgrpo_verl.data.rows import SYSTEM_PROMPT, chat_prompt

    out = tmp_path / "extended"
    result = subprocess.run(
        [sys.executable, str(RECIPES / "tools" / "extend_context.py"), "--model", str(tiny_qwen2), "--out", str(out),
         "--chat-template", str(THINK_TEMPLATE)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    question = "What is $1 + 1$?"
    rendered = AutoTokenizer.from_pretrained(out).apply_chat_template(
        chat_prompt(question), add_generation_prompt=True, tokenize=False
    )
    assert rendered == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n"
    )
    # Without a system message the template falls back to Qwen2.5-Math's own system prompt.
    no_system = AutoTokenizer.from_pretrained(out).apply_chat_template(
        chat_prompt(question, system_prompt=None), add_generation_prompt=True, tokenize=False
    )
    assert no_system.startswith("<|im_start|>system\nPlease reason step by step") and no_system.endswith("<think>\n")
    # The source model keeps its own template; only the copy changed.
    source = AutoTokenizer.from_pretrained(tiny_qwen2).apply_chat_template(
        chat_prompt(question), add_generation_prompt=True, tokenize=False
    )
    assert not source.endswith("<think>\n")
    assert (out / "model.safetensors").is_symlink() and not (out / "tokenizer_config.json").is_symlink()


@pytest.mark.parametrize("attention", ["flash_attention_2", "sdpa"])
def test_attention_switch_without_flash_attn_keeps_micro_batches_within_the_budgets(attention, tmp_path, monkeypatch):
    from exgrpo_verl import CPU_RUNTIME_SWITCH
    from exgrpo_verl.settings_checks import attention_problem

    monkeypatch.delenv(CPU_RUNTIME_SWITCH, raising=False)
    config = compose_overrides(dry_run("qwen2.5-math-7b/exgrpo.sh", tmp_path, ATTENTION=attention).overrides)
    check_like_the_entry_point(config)
    arr = config.actor_rollout_ref
    if attention == "sdpa":
        # No padding removal: every row is padded to 9216 tokens, so fixed micro-batches of 1 (update) and
        # 2 (log-probs) rows stay within the 2x / 3x budgets a token-count micro-batch would have.
        assert arr.model.override_config.attn_implementation == "sdpa" and arr.model.use_remove_padding is False
        assert arr.actor.use_dynamic_bsz is False and arr.actor.ppo_micro_batch_size_per_gpu == 1
        assert arr.rollout.log_prob_use_dynamic_bsz is False and arr.rollout.log_prob_micro_batch_size_per_gpu == 2
        assert attention_problem(config, flash_attn_installed=False) is None
    else:
        # The release preset (the recipes' default) sets the release's 32,768-token update budget.
        assert arr.model.use_remove_padding is True and arr.actor.ppo_max_token_len_per_gpu == 32768
        assert "needs the flash-attn package" in attention_problem(config, flash_attn_installed=False)


def test_an_unknown_attention_names_the_variable(tmp_path):
    result = subprocess.run(["bash", str(RECIPES / "qwen2.5-math-7b/exgrpo.sh")], capture_output=True, text=True,
                            env={"PATH": os.environ["PATH"], "DRY_RUN": "1", "PYTHON": sys.executable,
                                 "OUTPUT_ROOT": str(tmp_path), "ATTENTION": "flash"}, timeout=60)
    assert result.returncode != 0
    assert "ATTENTION=flash: give flash_attention_2 (needs flash-attn) or sdpa" in result.stderr
