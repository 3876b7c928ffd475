"""Checks on the trainer config's settings that `python -m exgrpo_verl.main` runs before Ray starts.

verl reads most settings inside a Ray worker, a minute or more into the run: a string for
`trainer.total_training_steps` failed after ~78 s, a reward file that does not exist after
~140 s. Here, in well under a second:

    SETTINGS          every number and switch the plugin or its recipes set or read, one row each:
                      (dotted key, rule); adding a setting is adding a row
    reward function   reward.custom_reward_function.path exists and defines .name
    attention         padding removal / flash_attention_2 need flash-attn installed (GPU runs only:
                      the CPU runtime runs SDPA without padding removal and checks that itself)

Each problem names the key, the value and what is allowed (or the fix); all of them are raised
together as one PreflightError. The `exgrpo:` section has its own dataclass checks (config.py).
No torch, no verl: only the config and the file system.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import OmegaConf

from exgrpo_verl import cpu_runtime_requested
from exgrpo_verl.preflight import PreflightError
from exgrpo_verl.validation import raise_problems

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """What a setting's value may be: `allowed` in words, `accepts(value)` the test (never given
    None: `nullable` says whether null is allowed)."""

    allowed: str
    accepts: Callable[[object], bool]
    nullable: bool = False

    def problem(self, key: str, value) -> str | None:
        if value is None and self.nullable:
            return None
        if value is not None and self.accepts(value):
            return None
        return f"{key}={value!r}: must be {self.allowed}" + (", or null" if self.nullable else "")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int, nullable: bool = False) -> Rule:
    return Rule(f"an integer >= {minimum}", lambda v: _is_int(v) and v >= minimum, nullable)


def real(allowed: str, is_ok: Callable[[float], bool], nullable: bool = False) -> Rule:
    return Rule(allowed, lambda v: _is_real(v) and is_ok(v), nullable)


SWITCH = Rule("true or false", lambda v: isinstance(v, bool))
COUNT = integer(1)
FRACTION = real("a number in (0, 1]", lambda v: 0 < v <= 1)
NON_NEGATIVE = real("a number >= 0", lambda v: v >= 0)
POSITIVE = real("a number > 0", lambda v: v > 0)
FREQUENCY = integer(-1)  # verl: -1 (or 0) turns validation / saving off

# Every number and switch the plugin (trainer_configs/exgrpo.yaml, exgrpo_verl) or the recipes
# (recipes/common.sh, cpu_runtime.launch) set or read. One row per key; keys the config lacks
# are skipped (verl's own defaults apply). actor_rollout_ref.rollout.n (K >= 2) is main.check_config's.
ARR = "actor_rollout_ref"
SETTINGS: tuple[tuple[str, Rule], ...] = (
    ("data.train_batch_size", COUNT),
    ("data.val_batch_size", integer(1, nullable=True)),
    ("data.max_prompt_length", COUNT),
    ("data.max_response_length", COUNT),
    ("data.filter_overlong_prompts", SWITCH),
    ("data.shuffle", SWITCH),
    ("data.dataloader_num_workers", integer(0)),
    ("algorithm.norm_adv_by_std_in_grpo", SWITCH),
    ("algorithm.use_kl_in_reward", SWITCH),
    (f"{ARR}.model.use_remove_padding", SWITCH),
    (f"{ARR}.model.enable_gradient_checkpointing", SWITCH),
    (f"{ARR}.actor.ppo_mini_batch_size", COUNT),
    (f"{ARR}.actor.ppo_micro_batch_size_per_gpu", integer(1, nullable=True)),
    (f"{ARR}.actor.ppo_max_token_len_per_gpu", COUNT),
    (f"{ARR}.actor.use_dynamic_bsz", SWITCH),
    (f"{ARR}.actor.ppo_epochs", COUNT),
    (f"{ARR}.actor.use_kl_loss", SWITCH),
    (f"{ARR}.actor.entropy_coeff", NON_NEGATIVE),
    (f"{ARR}.actor.entropy_checkpointing", SWITCH),
    (f"{ARR}.actor.loss_scale_factor", real("a number > 0", lambda v: v > 0, nullable=True)),
    (f"{ARR}.actor.grad_clip", real("a number > 0", lambda v: v > 0, nullable=True)),
    (f"{ARR}.actor.optim.lr", NON_NEGATIVE),
    (f"{ARR}.actor.optim.weight_decay", NON_NEGATIVE),
    (f"{ARR}.actor.optim.clip_grad", POSITIVE),
    (f"{ARR}.actor.fsdp_config.param_offload", SWITCH),
    (f"{ARR}.actor.fsdp_config.optimizer_offload", SWITCH),
    (f"{ARR}.rollout.temperature", POSITIVE),
    (f"{ARR}.rollout.top_p", FRACTION),
    (f"{ARR}.rollout.calculate_log_probs", SWITCH),
    (f"{ARR}.rollout.gpu_memory_utilization", FRACTION),
    (f"{ARR}.rollout.tensor_model_parallel_size", COUNT),
    (f"{ARR}.rollout.max_model_len", integer(1, nullable=True)),
    (f"{ARR}.rollout.log_prob_micro_batch_size_per_gpu", integer(1, nullable=True)),
    (f"{ARR}.rollout.log_prob_max_token_len_per_gpu", COUNT),
    (f"{ARR}.rollout.log_prob_use_dynamic_bsz", SWITCH),
    (f"{ARR}.rollout.agent.num_workers", COUNT),
    (f"{ARR}.rollout.val_kwargs.n", COUNT),
    (f"{ARR}.rollout.val_kwargs.temperature", NON_NEGATIVE),
    (f"{ARR}.rollout.val_kwargs.top_p", FRACTION),
    (f"{ARR}.rollout.val_kwargs.do_sample", SWITCH),
    ("data.gen_batch_size", integer(1, nullable=True)),
    ("algorithm.filter_groups.enable", SWITCH),
    ("algorithm.rollout_correction.bypass_mode", SWITCH),
    (f"{ARR}.rollout.multi_turn.enable", SWITCH),
    ("reward.num_workers", COUNT),
    ("trainer.v1.sync.parameter_sync_step", COUNT),
    ("trainer.total_training_steps", integer(1, nullable=True)),
    ("trainer.total_epochs", COUNT),
    ("trainer.nnodes", COUNT),
    ("trainer.n_gpus_per_node", COUNT),
    ("trainer.test_freq", FREQUENCY),
    ("trainer.save_freq", FREQUENCY),
    ("trainer.val_before_train", SWITCH),
    ("trainer.max_actor_ckpt_to_keep", integer(1, nullable=True)),
    ("ray_kwargs.ray_init.num_cpus", integer(1, nullable=True)),
    ("ray_kwargs.ray_init.num_gpus", integer(0, nullable=True)),
)


def setting_problems(config, table: tuple[tuple[str, Rule], ...] = SETTINGS) -> list[str]:
    """One line per table row whose value in config breaks its rule."""
    problems = []
    for key, rule in table:
        value = OmegaConf.select(config, key, default=_ABSENT)
        if value is not _ABSENT:
            problems.append(rule.problem(key, value))
    return [p for p in problems if p]


def reward_function_problems(config) -> list[str]:
    """reward.custom_reward_function: a file (or pkg:// module) that exists and defines the name."""
    function = OmegaConf.select(config, "reward.custom_reward_function") or {}
    path, name = function.get("path"), function.get("name")
    if not path:
        return []
    key = "reward.custom_reward_function.path"
    if str(path).startswith("pkg://"):
        module = str(path)[len("pkg://"):].replace("/", ".")
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        return [] if found else [f"{key}={path}: no module {module}; fix: an importable module or a file path"]
    file = str(path).removeprefix("file://")
    if not os.path.isfile(file):
        return [f"{key}={path}: no such file; fix: the path of the .py file that defines the reward function "
                "(recipes: REWARD_MODULE=<module>)"]
    defined = top_level_names(file)
    if defined is not None and name not in defined:
        return [f"reward.custom_reward_function.name={name}: {file} defines no {name} at top level; fix: the name of "
                "its reward function (compute_score(data_source, solution_str, ground_truth, extra_info))"]
    return []


def top_level_names(file: str) -> set[str] | None:
    """Names a Python file binds at module level (defs, classes, assignments, imports), or None
    when that cannot be told without running it (a star import, a syntax error)."""
    try:
        tree = ast.parse(open(file, encoding="utf-8").read(), file)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(alias.name == "*" for alias in node.names):
                return None
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def check_settings(config) -> None:
    """Raise PreflightError listing every bad setting of the table and of the reward function."""
    raise_problems(setting_problems(config) + reward_function_problems(config),
                   "the trainer config has settings that cannot work:", PreflightError)


FLASH_ATTN_INSTALL = "pip install flash-attn==2.8.3 --no-build-isolation"


def attention_problem(config, flash_attn_installed: bool | None = None) -> str | None:
    """Padding removal (verl's varlen path) and attn_implementation=flash_attention_2 (verl's
    default) both need the flash-attn package on a GPU run; without it the FSDP worker dies after
    Ray start and the model download. None on the CPU runtime (SDPA, no padding removal)."""
    if cpu_runtime_requested():
        return None
    model = OmegaConf.select(config, f"{ARR}.model") or {}
    attention = (model.get("override_config") or {}).get("attn_implementation", "flash_attention_2")
    remove_padding = bool(model.get("use_remove_padding", False))
    if not (remove_padding or "flash" in str(attention)):
        return None
    if flash_attn_installed is None:
        flash_attn_installed = importlib.util.find_spec("flash_attn") is not None
    if flash_attn_installed:
        return None
    return (f"{ARR}.model.use_remove_padding={remove_padding} with attn_implementation={attention} needs the "
            f"flash-attn package, which is not installed; fix: `{FLASH_ATTN_INSTALL}`, or run without it on "
            "PyTorch's SDPA attention: ATTENTION=sdpa with the recipes (docs/recipes.md: it turns padding removal "
            "off and lowers the micro-batches to 1 sequence for the update, 2 for log-probs)")


def check_attention(config) -> None:
    """Raise PreflightError when a GPU run's attention settings need flash-attn and it is missing."""
    problem = attention_problem(config)
    if problem:
        raise PreflightError(problem)
