"""ExperienceConfig: defaults, derived values and validation of every key."""

import pytest

from exgrpo_verl.experience import ExperienceConfig


def test_defaults_are_the_papers_and_sigma_defaults_to_one_over_k():
    config = ExperienceConfig()
    assert (config.group_size, config.bucket_mu, config.question_sampling) == (8, 0.5, "gaussian")
    assert config.sigma == pytest.approx(1 / 8)
    assert ExperienceConfig(group_size=4).sigma == pytest.approx(1 / 4)
    assert ExperienceConfig(bucket_sigma=0.3).sigma == pytest.approx(0.3)


@pytest.mark.parametrize("metric, needs", [("entropy", True), ("perplexity", True), ("stored_entropy", False),
                                           ("recent", False), ("random", False)])
def test_needs_forward_pass_follows_the_selection_metric(metric, needs):
    assert ExperienceConfig(selection_metric=metric).needs_forward_pass is needs


@pytest.mark.parametrize("key, value", [
    ("group_size", 1), ("group_size", 2.0), ("group_size", True),
    ("bucket_mu", float("nan")), ("bucket_mu", "0.5"),
    ("bucket_sigma", 0.0), ("bucket_sigma", -1.0), ("bucket_sigma", float("inf")),
    ("question_sampling", "greedy"),
    ("selection_metric", "loss"),
    ("max_candidates_per_question", 0),
    ("max_trajectories_per_question", 0),
    ("max_total_tokens", 0), ("max_total_tokens", 1.5),
    ("max_age_steps", -1),
    ("zero_accuracy_policy", "retire"),
    ("seed", -3),
])
def test_bad_values_raise_naming_key_and_value(key, value):
    with pytest.raises(ValueError) as error:
        ExperienceConfig(**{key: value})
    assert key in str(error.value) and repr(value) in str(error.value)


def test_optional_limits_accept_none():
    config = ExperienceConfig(bucket_sigma=None, max_total_tokens=None, max_age_steps=None)
    assert config.max_total_tokens is None and config.max_age_steps is None


def test_dict_round_trip_and_unknown_keys():
    config = ExperienceConfig(group_size=4, max_age_steps=3, selection_metric="recent")
    assert ExperienceConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown keys.*'bogus'"):
        ExperienceConfig.from_dict({**config.to_dict(), "bogus": 1})
