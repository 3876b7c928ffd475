"""The `exgrpo:` section of the trainer config, as a validated dataclass.

Defaults reproduce the authors' release (spec: "The release's training run"). Every bad
value raises ValueError naming the key (`exgrpo.<key>`), the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from exgrpo_verl.experience import ExperienceConfig
from exgrpo_verl.reward_guard import RewardGuardConfig
from exgrpo_verl.strategies import ReplayStrategy, build_strategy, strategy_settings
from exgrpo_verl.validation import check_bool, check_choice, check_int, check_real

LOSS_AGGREGATIONS = ("verl", "release")
UNUSED_FRESH_QUESTIONS = ("carry", "discard")
# verl 0.9.1's own trainer modes: none of them calls the replay hooks.
VERL_TRAINER_MODES = ("sync", "colocate_async", "separate_async")


@dataclass(frozen=True)
class ExGRPOLossConfig:
    """ExGRPO's loss settings (`exgrpo.loss`).

    shaping_beta: beta in f(w) = w / (w + beta) for replayed tokens; > 0 (release: 0.1).
    policy_shaping: weight replayed tokens by f(w) (release: True); False weights them by the
        plain, unclipped w (the paper's "w/o policy shaping" ablation).
    clip_on_policy_after_start: keep PPO's clip on fresh tokens once replay has started
        (release: False, the clip is removed then; it is always on during warm-up).
    warmup_dual_clip: verl's dual clip (clip_ratio_c) on negative advantages during warm-up
        (release: False, plain clip).
    aggregation: "verl" (actor.loss_agg_mode, verl's agg_loss) or "release": the authors'
        gradient scale, token sums / (release_world_size x actor.loss_scale_factor) and the entropy
        as a token mean per micro-batch (see algorithm.release_token_sum / release_token_mean).
    release_world_size: R, the release's data-parallel ranks (8), for aggregation=release.
    """

    shaping_beta: float = 0.1
    policy_shaping: bool = True
    clip_on_policy_after_start: bool = False
    warmup_dual_clip: bool = True
    aggregation: str = "verl"
    release_world_size: int = 8

    def __post_init__(self):
        check_real("exgrpo.loss.shaping_beta", self.shaping_beta, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)
        check_bool("exgrpo.loss.policy_shaping", self.policy_shaping)
        check_bool("exgrpo.loss.clip_on_policy_after_start", self.clip_on_policy_after_start)
        check_bool("exgrpo.loss.warmup_dual_clip", self.warmup_dual_clip)
        check_choice("exgrpo.loss.aggregation", self.aggregation, LOSS_AGGREGATIONS)
        check_int("exgrpo.loss.release_world_size", self.release_world_size, minimum=1)


@dataclass(frozen=True)
class ExGRPOConfig:
    """replay_ratio: rho, the share of a step's B questions taken from experience (release 0.5);
        0 turns replay off: plain GRPO with ExGRPO's warm-up loss (exgrpo.loss, max_grad_norm), which
        with the default loss settings is verl's own PPO loss.
    start_solve_rate: replay starts (for good) after a step whose fraction of fresh rollouts
        with reward 1 exceeds this (release 0.35).
    collect_during_warmup: also store successes before replay starts (release: False).
    store_from_switch_step: store the successes of the step that switches replay on (release:
        False, it stores from the next step).
    sampler_poll_interval_s: how often the step waits on TransferQueue for finished rollouts
        (verl polls every 2 s; short CPU steps want less).
    max_grad_norm: skip an optimiser step whose gradient norm (before clipping) exceeds this
        (release: 500 at its gradient scale); null never skips (verl still skips non-finite norms).
        See exgrpo_verl.verl_adapters.grad_norm_guard.
    experience_log: keep an append-only log of the buffer's calls since the last checkpoint,
        `<trainer.default_local_dir>/exgrpo_experience.log`, fsynced every step and replayed on
        resume, so a crash between checkpoints loses no experience (off by default; its cost per
        step is in docs/reliability.md). See exgrpo_verl.experience.journal.
    experience_log_digests: also record the buffer's SHA-256 after every step in the log (a pass
        over the whole buffer each step: for checks such as scripts/fault_injection.py).
    unused_fresh_questions: what becomes of fresh questions a step fetched (a data-loader batch
        of B) but did not use (B minus its experience questions): "carry" (default) uses them
        next step, one pass over the data in loader order; "discard" (the release) drops them,
        so each step draws B anew and uses the first ones (docs/fidelity.md: the coverage of each).
    loss, experience: see ExGRPOLossConfig and exgrpo_verl.experience.ExperienceConfig
        (its group_size comes from actor_rollout_ref.rollout.n, not from here).
    reward: the reward guard's time limit and failure budget (exgrpo_verl.reward_guard).
    strategy: the replay strategy (exgrpo_verl.strategies.STRATEGIES; docs/strategies.md):
        "exgrpo" (default), "zero_variance_fill", "repo" or "rlep".
    strategy_settings: the chosen strategy's own settings (see its settings class).
    """

    replay_ratio: float = 0.5
    start_solve_rate: float = 0.35
    collect_during_warmup: bool = False
    store_from_switch_step: bool = True
    sampler_poll_interval_s: float = 0.5
    max_grad_norm: float | None = None
    experience_log: bool = False
    experience_log_digests: bool = False
    unused_fresh_questions: str = "carry"
    loss: ExGRPOLossConfig = field(default_factory=ExGRPOLossConfig)
    experience: dict[str, Any] = field(default_factory=dict)
    reward: RewardGuardConfig = field(default_factory=RewardGuardConfig)
    strategy: str = "exgrpo"
    strategy_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_real("exgrpo.replay_ratio", self.replay_ratio, "a number in [0, 1)", lambda v: 0 <= v < 1)
        check_real("exgrpo.start_solve_rate", self.start_solve_rate, "a number in [0, 1]", lambda v: 0 <= v <= 1)
        check_bool("exgrpo.collect_during_warmup", self.collect_during_warmup)
        check_bool("exgrpo.store_from_switch_step", self.store_from_switch_step)
        check_real("exgrpo.sampler_poll_interval_s", self.sampler_poll_interval_s, "a number of seconds > 0",
                   lambda v: math.isfinite(v) and v > 0)
        check_bool("exgrpo.experience_log", self.experience_log)
        check_bool("exgrpo.experience_log_digests", self.experience_log_digests)
        check_choice("exgrpo.unused_fresh_questions", self.unused_fresh_questions, UNUSED_FRESH_QUESTIONS)
        if self.max_grad_norm is not None:
            check_real("exgrpo.max_grad_norm", self.max_grad_norm, "a number > 0, or null (never skip)",
                       lambda v: math.isfinite(v) and v > 0)
        if "group_size" in self.experience:
            raise ValueError("exgrpo.experience.group_size: set actor_rollout_ref.rollout.n instead (it is K)")
        if "store_failures" in self.experience:
            raise ValueError("exgrpo.experience.store_failures: the replay strategy (exgrpo.strategy) decides it")
        strategy_settings(self.strategy, self.strategy_settings)  # validated now, not mid-run

    @property
    def enabled(self) -> bool:
        """Replay of any kind: rho > 0 for ExGRPO; the other strategies replay whenever chosen."""
        return self.replay_ratio > 0 or self.strategy != "exgrpo"

    def replay_strategy(self, group_size: int) -> ReplayStrategy:
        return build_strategy(self.strategy, self.strategy_settings, group_size)

    def experience_config(self, group_size: int) -> ExperienceConfig:
        store_failures = self.replay_strategy(group_size).stores_failures
        try:
            return ExperienceConfig.from_dict({**self.experience, "group_size": group_size, "store_failures": store_failures})
        except ValueError as error:  # it names keys as "experience.<key>"
            raise ValueError(f"exgrpo.{error}") from error

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "ExGRPOConfig":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"exgrpo: unknown keys {unknown}; allowed: {sorted(known)}")
        loss = dict(values.pop("loss", None) or {})
        loss_keys = {f.name for f in dataclasses.fields(ExGRPOLossConfig)}
        if set(loss) - loss_keys:
            raise ValueError(f"exgrpo.loss: unknown keys {sorted(set(loss) - loss_keys)}; allowed: {sorted(loss_keys)}")
        reward = RewardGuardConfig.from_dict(values.pop("reward", None))
        config = cls(loss=ExGRPOLossConfig(**loss), reward=reward,
                     **{k: v for k, v in values.items() if k not in ("experience", "strategy_settings")},
                     experience=dict(values.get("experience") or {}), strategy_settings=dict(values.get("strategy_settings") or {}))
        # Validate the experience keys now, not mid-run; none of their checks depends on K.
        config.experience_config(group_size=_ANY_GROUP_SIZE)
        return config


_ANY_GROUP_SIZE = 8


def incompatible_verl_settings(config) -> list[str]:
    """verl options that ExGRPO's trainer would silently defeat, each with its fix.

    `config` is the whole trainer config (verl's DictConfig, or anything with `.get`)."""
    def select(path: str, default=None):
        node = config
        for key in path.split("."):
            node = node.get(key) if node is not None and hasattr(node, "get") else None
        return default if node is None else node

    problems = []
    loss_mode = select("actor_rollout_ref.actor.policy_loss.loss_mode", "vanilla")
    if loss_mode != "vanilla":
        problems.append(f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}: ExGRPO replaces the policy loss "
                        "(PPO clip on fresh tokens, shaped weight on replayed ones); set it to vanilla")
    if select("algorithm.filter_groups.enable", False):
        problems.append("algorithm.filter_groups.enable=True: DAPO filtering would judge experience groups before "
                        "their replayed member joins them; set algorithm.filter_groups.enable=False")
    if select("algorithm.rollout_correction.bypass_mode", False):
        problems.append("algorithm.rollout_correction.bypass_mode=True: ExGRPO needs the old-log-prob pass (its "
                        "entropies and the stored log-probs of replayed rows); set it to False")
    if select("actor_rollout_ref.rollout.multi_turn.enable", False):
        problems.append("actor_rollout_ref.rollout.multi_turn.enable=True: ExGRPO replays single-turn responses; "
                        "set it to False")
    if select("distillation.enabled", False):
        problems.append("distillation.enabled=True: ExGRPO's loss would replace the distillation loss; set it to False")
    grad_clip, clip_grad = select("actor_rollout_ref.actor.grad_clip"), select("actor_rollout_ref.actor.optim.clip_grad", 1.0)
    if grad_clip is not None and grad_clip != clip_grad:
        problems.append(f"actor_rollout_ref.actor.grad_clip={grad_clip}: verl 0.9.1's engine clips at "
                        f"actor_rollout_ref.actor.optim.clip_grad (now {clip_grad}); set "
                        f"actor_rollout_ref.actor.optim.clip_grad={grad_clip} instead")
    mode = select("trainer.v1.trainer_mode", "exgrpo")
    if mode in VERL_TRAINER_MODES:
        problems.append(f"trainer.v1.trainer_mode={mode}: verl's own trainer would run without ExGRPO's replay hooks"
                        + (" (in async modes prepare_step submits the next batch before the previous one trains, so "
                           "experience groups would train without their replayed rows)" if mode != "sync" else "")
                        + "; set trainer.v1.trainer_mode=exgrpo")
    batch, mini_batch = select("data.train_batch_size"), select("actor_rollout_ref.actor.ppo_mini_batch_size")
    if batch and mini_batch and batch % mini_batch:
        problems.append(f"actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch} does not divide data.train_batch_size="
                        f"{batch}: ExGRPO updates in train_batch_size / ppo_mini_batch_size mini-batches however many "
                        "rows a strategy adds; set ppo_mini_batch_size to a divisor of train_batch_size")
    sync_step = select("trainer.v1.sync.parameter_sync_step", 1)
    if sync_step != 1:
        problems.append(f"trainer.v1.sync.parameter_sync_step={sync_step}: ExGRPO mixes one batch per update; set it to 1")
    return problems


def raise_on_incompatible_verl_settings(config) -> None:
    problems = incompatible_verl_settings(config)
    if problems:
        raise ValueError("ExGRPO cannot run with these verl settings:\n- " + "\n- ".join(problems))
