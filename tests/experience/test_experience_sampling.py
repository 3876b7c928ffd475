"""Question sampling: Gaussian bucket weights, the multinomial draw with overflow, uniformity, seeding.

The statistical tests use fixed seeds and bounds far in the tails (chi-square p > 1e-3, |z| < 4),
and compare with values computed independently of the code under test: the closed-form bucket
probabilities, and an exact enumeration of the overflow procedure.
"""

import math
from functools import lru_cache
from itertools import combinations

import numpy as np
import pytest
from experience_testkit import partial_group

from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig
from exgrpo_verl.experience.pool import QuestionPool
from exgrpo_verl.experience.sampling import allocate_draws, gaussian_log_weights, normalise, sample_questions

K = 8
BUCKETS = range(1, K)


def reference_probabilities(mu=0.5, sigma=1 / K, buckets=BUCKETS):
    """p_b = N(b/K; mu, sigma) / sum_c N(c/K; mu, sigma), straight from the density."""
    density = {b: math.exp(-((b / K - mu) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi)) for b in buckets}
    total = sum(density.values())
    return np.array([density[b] / total for b in buckets])


def pool_with(sizes) -> QuestionPool:
    """Bucket b (1..K-1) holds sizes[b-1] questions, numbered 100*b, 100*b + 1, ..."""
    pool = QuestionPool(K)
    for bucket, size in zip(BUCKETS, sizes):
        for i in range(size):
            pool.place(100 * bucket + i, bucket)
    return pool


def bucket_counts(qids) -> np.ndarray:
    return np.bincount([q // 100 for q in qids], minlength=K)[1:]


def chi_square_p_value(observed, expected) -> float:
    """P(X > statistic) for X ~ chi-square with an even number 2m of degrees of freedom
    (len - 1), in closed form: exp(-x/2) * sum_{i<m} (x/2)^i / i!."""
    observed, expected = np.asarray(observed, float), np.asarray(expected, float)
    half_statistic = float(((observed - expected) ** 2 / expected).sum()) / 2
    dof = len(observed) - 1
    assert dof % 2 == 0
    return math.exp(-half_statistic) * sum(half_statistic**i / math.factorial(i) for i in range(dof // 2))


def compositions(n, parts):
    """All count vectors of `parts` non-negative integers summing to n (stars and bars)."""
    for bars in combinations(range(n + parts - 1), parts - 1):
        edges = (-1,) + bars + (n + parts - 1,)
        yield tuple(edges[i + 1] - edges[i] - 1 for i in range(parts))


@lru_cache(maxsize=None)
def exact_allocation(n: int, capacities: tuple, weights: tuple) -> dict:
    """Exact distribution of the bucket counts of the overflow procedure, by enumeration.

    Draw n counts multinomially over the buckets with room (probabilities proportional to the
    weights), keep what fits, and draw the excess again over the buckets that still have room.
    """
    open_buckets = [b for b, room in enumerate(capacities) if room > 0]
    total = sum(weights[b] for b in open_buckets)
    p = [weights[b] / total for b in open_buckets]
    outcome = {}
    for counts in compositions(n, len(open_buckets)):
        probability = math.factorial(n) * math.prod(pb**c / math.factorial(c) for pb, c in zip(p, counts))
        placed = [0] * len(capacities)
        for b, c in zip(open_buckets, counts):
            placed[b] = min(c, capacities[b])
        excess = n - sum(placed)
        rest = {(0,) * len(capacities): 1.0} if excess == 0 else exact_allocation(
            excess, tuple(cap - put for cap, put in zip(capacities, placed)), weights)
        for extra, q in rest.items():
            key = tuple(a + e for a, e in zip(placed, extra))
            outcome[key] = outcome.get(key, 0.0) + probability * q
    return outcome


def moments(distribution):
    vectors = np.array(list(distribution.keys()), dtype=float)
    probabilities = np.array(list(distribution.values()))
    mean = probabilities @ vectors
    return mean, probabilities @ vectors**2 - mean**2


def test_bucket_probabilities_match_the_papers_numbers():
    p = normalise(gaussian_log_weights(np.arange(1, K), K, 0.5, 1 / K))
    np.testing.assert_allclose(p, reference_probabilities(), rtol=1e-12)
    expected = {4: 0.40, 3: 0.24, 5: 0.24, 2: 0.054, 6: 0.054, 1: 0.0044, 7: 0.0044}
    for bucket, value in expected.items():  # the paper's figures, to their printed precision
        assert p[bucket - 1] == pytest.approx(value, rel=0.02)
    assert p.sum() == pytest.approx(1.0)


def test_far_buckets_cannot_underflow_to_an_empty_distribution():
    p = normalise(gaussian_log_weights(np.array([1, 7]), K, 0.5, 1e-3))  # exp(-90000) would be 0.0
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0) and p == pytest.approx([0.5, 0.5])
    assert sample_questions(pool_with([3, 0, 0, 0, 0, 0, 0]), 2, "gaussian", 0.5, 1e-3,
                            np.random.default_rng(0)) != []


def test_empirical_bucket_frequencies_match_when_every_bucket_has_room():
    n, trials = 16, 3000
    pool, rng = pool_with([n] * (K - 1)), np.random.default_rng(1)
    totals = sum(bucket_counts(sample_questions(pool, n, "gaussian", 0.5, 1 / K, rng)) for _ in range(trials))
    # Without overflow, the n draws of each trial are independent categorical draws.
    assert chi_square_p_value(totals, n * trials * reference_probabilities()) > 1e-3


def test_weights_are_renormalised_over_the_non_empty_buckets():
    sizes = [0, 0, 20, 20, 0, 20, 0]  # buckets 3, 4, 6
    n, trials = 4, 2000
    pool, rng = pool_with(sizes), np.random.default_rng(2)
    totals = sum(bucket_counts(sample_questions(pool, n, "gaussian", 0.5, 1 / K, rng)) for _ in range(trials))
    assert totals[[0, 1, 4, 6]].sum() == 0
    expected = n * trials * reference_probabilities(buckets=[3, 4, 6])
    assert chi_square_p_value(totals[[2, 3, 5]], expected) > 1e-3


def test_the_exact_reference_agrees_with_closed_forms():
    weights = tuple(reference_probabilities())
    # Room everywhere: E[count_b] = n p_b.
    mean, _ = moments(exact_allocation(5, (5,) * 7, weights))
    np.testing.assert_allclose(mean, 5 * np.array(weights), rtol=1e-10)
    # Bucket 4 holds one question, the rest room for all: E[count_4] = 1 - (1 - p_4)^n, and its
    # expected excess n p_4 - E[count_4] goes to the others in proportion p_b / (1 - p_4).
    n, p4 = 5, weights[3]
    mean, _ = moments(exact_allocation(n, (5, 5, 5, 1, 5, 5, 5), weights))
    filled = 1 - (1 - p4) ** n
    assert mean[3] == pytest.approx(filled, rel=1e-10)
    others = [0, 1, 2, 4, 5, 6]
    expected_others = n * np.array(weights)[others] * (1 + (p4 - filled / n) / (1 - p4))
    np.testing.assert_allclose(mean[others], expected_others, rtol=1e-10)


def test_overflow_frequencies_match_the_exact_enumeration():
    sizes = (8, 8, 2, 1, 8, 8, 8)  # buckets 3 and 4 (p = 0.24, 0.40) overflow in most trials
    n, trials = 8, 4000
    mean, variance = moments(exact_allocation(n, sizes, tuple(reference_probabilities())))
    pool, rng = pool_with(sizes), np.random.default_rng(3)
    counts = np.array([bucket_counts(sample_questions(pool, n, "gaussian", 0.5, 1 / K, rng)) for _ in range(trials)])
    assert np.all(counts <= np.array(sizes)) and np.all(counts.sum(axis=1) == n)
    z = (counts.mean(axis=0) - mean) / np.sqrt(variance / trials)
    assert np.all(np.abs(z) < 4), z
    naive = n * reference_probabilities()  # the counts if buckets had room: overflow really happens
    assert mean[3] < naive[3] / 3 and mean[2] < naive[2] and np.all(mean[[0, 1, 4, 5, 6]] > naive[[0, 1, 4, 5, 6]])


def test_allocate_draws_fills_every_bucket_when_asked_for_the_whole_pool():
    capacities = np.array([3, 1, 0, 4])
    counts = allocate_draws(np.random.default_rng(0), 8, capacities, np.log([0.1, 5.0, 1.0, 0.2]))
    assert counts.tolist() == [3, 1, 0, 4]


def test_draws_inside_a_bucket_are_uniform_without_replacement():
    pool, rng = pool_with([0, 0, 0, 11, 0, 0, 0]), np.random.default_rng(4)
    n, trials = 3, 2000
    hits = np.zeros(11)
    for _ in range(trials):
        qids = sample_questions(pool, n, "gaussian", 0.5, 1 / K, rng)
        assert len(set(qids)) == n
        hits[[q - 400 for q in qids]] += 1
    # Draws without replacement make the statistic smaller than a chi-square: conservative.
    assert chi_square_p_value(hits, np.full(11, n * trials / 11)) > 1e-3


def test_uniform_strategy_ignores_buckets():
    sizes = [1, 2, 3, 2, 1, 1, 1]  # 11 questions
    pool, rng = pool_with(sizes), np.random.default_rng(5)
    n, trials = 4, 2000
    hits = {}
    for _ in range(trials):
        for q in sample_questions(pool, n, "uniform", 0.5, 1 / K, rng):
            hits[q] = hits.get(q, 0) + 1
    assert len(hits) == 11
    assert chi_square_p_value(list(hits.values()), np.full(11, n * trials / 11)) > 1e-3


@pytest.mark.parametrize("strategy", ["gaussian", "uniform"])
def test_asking_for_more_than_the_pool_returns_each_question_once(strategy):
    pool = pool_with([2, 0, 1, 3, 0, 0, 1])
    qids = sample_questions(pool, 50, strategy, 0.5, 1 / K, np.random.default_rng(0))
    assert sorted(qids) == sorted(q for b in BUCKETS for q in pool.members(b))
    assert sample_questions(pool, 0, strategy, 0.5, 1 / K, np.random.default_rng(0)) == []


def test_buffer_sampling_is_seeded_and_uses_the_configured_gaussian():
    def filled(seed, **config):
        buf = ExperienceBuffer(ExperienceConfig(group_size=4, seed=seed, **config))
        buf.update(1, [partial_group(q, 4, 1 + q % 3) for q in range(30)])
        return buf

    a, b, c = filled(7), filled(7), filled(8)
    draws_a = [a.sample_questions(5) for _ in range(10)]
    assert draws_a == [b.sample_questions(5) for _ in range(10)]
    assert draws_a != [c.sample_questions(5) for _ in range(10)]
    # A narrow Gaussian on accuracy 1/4 puts every draw in bucket 1 while it has room.
    narrow = filled(0, bucket_mu=0.25, bucket_sigma=0.01)
    assert all(narrow.question(q).bucket == 1 for q in narrow.sample_questions(10))
    with pytest.raises(ValueError, match="n=-1"):
        a.sample_questions(-1)


def test_the_sampler_after_replay_draws_each_bucket_with_its_gaussian_weight():
    """Seven questions replayed with k = 0..6 fresh successes of K-1 land one per bucket 1..7 (k+1
    of K); one draw at a time then picks bucket b with probability N(b/K; 0.5, 1/K) normalised over
    all seven, the middle bucket 4 most often. (The old k/(K-1) rule left bucket 4 empty.)"""
    from experience_testkit import group

    buf = ExperienceBuffer(ExperienceConfig(group_size=K, seed=3))
    buf.update(0, [partial_group(q, K, 2) for q in range(K - 1)])
    buf.update(1, [group(q, [1.0] * q + [0.0] * (K - 1 - q), tokens=[[q, 1, i] for i in range(K - 1)],
                         replayed_correct=1) for q in range(K - 1)])
    assert [buf.question(q).bucket for q in range(K - 1)] == list(BUCKETS)
    draws = 4000
    observed = np.bincount([buf.sample_questions(1)[0] for _ in range(draws)], minlength=K - 1)
    expected = draws * reference_probabilities()
    assert observed.argmax() == 3  # question 3, bucket 4
    assert chi_square_p_value(observed, expected) > 1e-3
