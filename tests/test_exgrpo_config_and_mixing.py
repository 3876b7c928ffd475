"""The `exgrpo:` config section, the trainer config composed through hydra, and the
batch-mixing rules."""

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from exgrpo_verl.config import ExGRPOConfig
from exgrpo_verl.main import CONFIG_DIR, check_config
from exgrpo_verl.mixing import experience_question_count, replay_starts, solve_rate


@pytest.fixture(scope="module")
def exgrpo_config():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="exgrpo")


def test_defaults_reproduce_the_release(exgrpo_config):
    settings = check_config(exgrpo_config)
    assert (settings.replay_ratio, settings.start_solve_rate, settings.loss.shaping_beta) == (0.5, 0.35, 0.1)
    assert settings.loss.clip_on_policy_after_start is False and settings.collect_during_warmup is False
    actor = exgrpo_config.actor_rollout_ref.actor
    assert exgrpo_config.algorithm.adv_estimator == "exgrpo" and exgrpo_config.algorithm.norm_adv_by_std_in_grpo is False
    assert (actor.loss_agg_mode, actor.loss_scale_factor, actor.entropy_coeff, actor.use_kl_loss) == ("seq-mean-token-sum-norm", 8192, 0.001, False)
    assert (actor.optim.lr, actor.optim.weight_decay, actor.optim.clip_grad) == (1e-6, 0.01, 1.0)
    assert exgrpo_config.actor_rollout_ref.rollout.n == 8 and exgrpo_config.data.train_batch_size == 128
    experience = settings.experience_config(group_size=8)
    assert experience.selection_metric == "entropy" and experience.sigma == pytest.approx(1 / 8)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"replay_ratio": 1.0}, r"exgrpo.replay_ratio=1.0: must be a number in \[0, 1\)"),
        ({"start_solve_rate": -0.1}, r"exgrpo.start_solve_rate=-0.1"),
        ({"loss": {"shaping_beta": 0}}, r"exgrpo.loss.shaping_beta=0"),
        ({"loss": {"beta": 0.1}}, r"exgrpo.loss: unknown keys \['beta'\]"),
        ({"replay": 0.5}, r"exgrpo: unknown keys \['replay'\]"),
        ({"experience": {"selection_metric": "shortest"}}, r"exgrpo.experience.selection_metric='shortest': must be one of"),
        ({"experience": {"bogus": 1}}, r"exgrpo.experience: unknown keys \['bogus'\]"),
        ({"replay_ratio": "0.5"}, r"exgrpo.replay_ratio='0.5': must be a number in \[0, 1\)"),
        ({"start_solve_rate": None}, r"exgrpo.start_solve_rate=None: must be a number"),
        ({"collect_during_warmup": "yes"}, r"exgrpo.collect_during_warmup='yes': must be true or false"),
        ({"loss": {"policy_shaping": 1}}, r"exgrpo.loss.policy_shaping=1: must be true or false"),
        ({"experience": {"group_size": 4}}, r"set actor_rollout_ref.rollout.n instead"),
        ({"sampler_poll_interval_s": 0}, r"sampler_poll_interval_s=0"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        ExGRPOConfig.from_dict(values)


def test_check_config_refuses_a_single_rollout(exgrpo_config):
    config = exgrpo_config.copy()
    config.actor_rollout_ref.rollout.n = 1
    with pytest.raises(ValueError, match=r"actor_rollout_ref.rollout.n=1: ExGRPO needs K >= 2"):
        check_config(config)


def test_experience_share_of_the_batch():
    assert experience_question_count(pool_size=1000, replay_ratio=0.5, batch_size=128) == 64
    assert experience_question_count(pool_size=10, replay_ratio=0.5, batch_size=128) == 10  # the rest is fresh
    assert experience_question_count(pool_size=1000, replay_ratio=0.0, batch_size=128) == 0
    assert experience_question_count(pool_size=1000, replay_ratio=0.25, batch_size=6) == 2  # round(1.5)


def test_delayed_start_is_one_way_and_off_without_replay():
    assert solve_rate(np.array([1, 0, 0, 1.0])) == 0.5 and solve_rate(np.array([])) == 0.0
    assert not replay_starts(False, 0.35, threshold=0.35, replay_ratio=0.5)  # must exceed
    assert replay_starts(False, 0.36, threshold=0.35, replay_ratio=0.5)
    assert replay_starts(True, 0.0, threshold=0.35, replay_ratio=0.5)  # never switches back
    assert not replay_starts(False, 0.9, threshold=0.35, replay_ratio=0.0)


@pytest.mark.parametrize(
    "change, message",
    [
        ("actor_rollout_ref.actor.strategy=fsdp", "actor_rollout_ref.actor.strategy=fsdp: FSDP1 cannot start without a GPU"),
        ("exgrpo.replay_ratio=2", "exgrpo.replay_ratio=2: must be a number in [0, 1)"),
    ],
)
def test_entry_point_refuses_bad_config_before_starting_anything(tiny_qwen2, char_hunt_files, tmp_path, change, message):
    import subprocess
    import sys

    from exgrpo_verl.cpu_runtime.launch import cpu_env, cpu_run_overrides

    train, val = char_hunt_files
    overrides = [o for o in cpu_run_overrides(str(tiny_qwen2), str(train), str(val), output_dir=str(tmp_path))
                 if not o.startswith(change.split("=")[0] + "=")] + [change]
    result = subprocess.run([sys.executable, "-m", "exgrpo_verl.main", *overrides], env=cpu_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Started a local Ray instance" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("actor_rollout_ref.actor.policy_loss.loss_mode", "gspo", "loss_mode=gspo: ExGRPO replaces the policy loss"),
        ("algorithm.filter_groups.enable", True, "set algorithm.filter_groups.enable=False"),
        ("algorithm.rollout_correction.bypass_mode", True, "needs the old-log-prob pass"),
        ("actor_rollout_ref.rollout.multi_turn.enable", True, "multi_turn.enable=True"),
        ("trainer.v1.sync.parameter_sync_step", 2, "parameter_sync_step=2"),
        ("actor_rollout_ref.actor.grad_clip", 0.5, "set actor_rollout_ref.actor.optim.clip_grad=0.5 instead"),
        ("actor_rollout_ref.actor.ppo_mini_batch_size", 48, "ppo_mini_batch_size=48 does not divide data.train_batch_size=128"),
    ],
)
def test_verl_options_exgrpo_would_defeat_are_refused(exgrpo_config, key, value, message):
    from omegaconf import OmegaConf

    config = exgrpo_config.copy()
    OmegaConf.update(config, key, value, force_add=True)
    with pytest.raises(ValueError, match=message):
        check_config(config)
    OmegaConf.update(config, "exgrpo.replay_ratio", 0.0)  # plain GRPO may use them
    check_config(config)


def test_the_release_preset_switches_every_release_variant_on():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        release = compose(config_name="exgrpo", overrides=["+preset=release"])
    settings = check_config(release)
    assert settings.max_grad_norm == 500 and settings.store_from_switch_step is False
    assert settings.unused_fresh_questions == "discard" and ExGRPOConfig.from_dict({}).unused_fresh_questions == "carry"
    assert (settings.loss.aggregation, settings.loss.release_world_size, settings.loss.warmup_dual_clip) == ("release", 8, False)
    experience = settings.experience_config(group_size=8)
    assert (experience.selection_metric, experience.zero_accuracy_policy) == ("entropy_sum", "keep_stale")
    assert experience.max_candidates_per_question is None and experience.max_trajectories_per_question is None  # keep and score all
    # Everything else is exgrpo.yaml's.
    assert release.actor_rollout_ref.actor.optim.clip_grad == 1.0 and release.exgrpo.replay_ratio == 0.5
    assert ExGRPOConfig.from_dict({}).loss.aggregation == "verl" and ExGRPOConfig.from_dict({}).max_grad_norm is None


def test_storing_starts_at_the_switch_step_or_as_the_release_the_step_after():
    from exgrpo_verl.mixing import stores_successes

    # (was started, started now) over warm-up, the switch step, and after it
    phases = [(False, False), (False, True), (True, True)]
    assert [stores_successes(w, s, False, from_switch_step=True) for w, s in phases] == [False, True, True]
    assert [stores_successes(w, s, False, from_switch_step=False) for w, s in phases] == [False, False, True]
    assert all(stores_successes(w, s, True, from_switch_step=False) for w, s in phases)


def _trainer_drawing_from(batches, rule):
    """ExGRPOTrainer's fresh-question draw on a data loader of `batches` (lists of question ids),
    without Ray: the instance holds only what prepare_step's draw and _take_fresh_questions use."""
    import numpy as np
    import torch

    from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig
    from exgrpo_verl.verl_adapters.trainer import ExGRPOTrainer

    trainer = ExGRPOTrainer.__new__(ExGRPOTrainer)
    trainer.settings = ExGRPOConfig.from_dict({"unused_fresh_questions": rule})
    trainer.experience = ExperienceBuffer(ExperienceConfig(group_size=4))
    trainer.train_dataloader = [{"index": torch.tensor(b), "raw_prompt": np.array(["q"] * len(b), dtype=object)} for b in batches]
    trainer.train_dataloader_it = None
    trainer._position_of = {qid: qid for batch in batches for qid in batch}
    trainer._fresh_carry = []
    return trainer


@pytest.mark.parametrize("rule, second_step", [("carry", [4, 5, 6, 7]), ("discard", [8, 9, 10, 11])])
def test_fresh_questions_fetched_but_not_used_wait_or_are_dropped(rule, second_step):
    """A step with 4 experience questions of B = 8 uses 4 fresh ones: "carry" uses the other 4 of
    the fetched batch next step (one pass), "discard" (the release) draws a new batch."""
    trainer = _trainer_drawing_from([[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15]], rule)
    steps = []
    for _ in range(2):
        trainer._step_questions = set()
        trainer._drop_unused_fresh_questions()
        steps.append(trainer._take_fresh_questions(4))
    assert steps == [[0, 1, 2, 3], second_step]
