"""Property tests over random streams of step results, checked against a small independent model.

After every step: no retired question is sampled, no question twice in a draw, every pooled
question sits in the bucket of its latest accuracy, the caps hold, and every stored trajectory is
one that was submitted as storable. At the end the buffer survives save/load exactly.
"""

import tempfile
from fractions import Fraction

import numpy as np
from experience_testkit import assert_same_state, small_segments
from hypothesis import given, settings
from hypothesis import strategies as st

from exgrpo_verl.experience import ExperienceBuffer, ExperienceConfig, GroupResult

QUESTION_IDS = range(6)


@st.composite
def configs(draw):
    return ExperienceConfig(
        group_size=draw(st.sampled_from([2, 3, 4, 8])),
        question_sampling=draw(st.sampled_from(["gaussian", "uniform"])),
        selection_metric=draw(st.sampled_from(["entropy", "stored_entropy", "recent", "random"])),
        max_candidates_per_question=draw(st.integers(1, 5)),
        max_trajectories_per_question=draw(st.integers(1, 4)),
        max_total_tokens=draw(st.one_of(st.none(), st.integers(4, 60))),
        max_age_steps=draw(st.one_of(st.none(), st.integers(0, 3))),
        zero_accuracy_policy=draw(st.sampled_from(["drop_from_pool", "keep_stale"])),
        seed=draw(st.integers(0, 2**32)),
    )


@st.composite
def groups(draw, group_size):
    """One question's results: short responses over 3 tokens, so duplicates are common."""
    n = draw(st.sampled_from(sorted({group_size, group_size - 1} - {0})))
    rollouts = [draw(st.tuples(st.lists(st.integers(0, 2), max_size=4), st.sampled_from([0.0, 1.0, 1.0, 0.5]),
                               st.booleans(), st.booleans())) for _ in range(n)]
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    logps = [-rng.random(len(tokens)).astype(np.float32) for tokens, *_ in rollouts]
    for logp, (_, _, _, finite) in zip(logps, rollouts):
        if not finite and len(logp):
            logp[-1] = -np.inf
    return GroupResult(
        question_id=draw(st.sampled_from(QUESTION_IDS)),
        response_ids=[np.array(tokens, dtype=np.int64) for tokens, *_ in rollouts],
        log_probs=logps,
        rewards=np.array([reward for _, reward, _, _ in rollouts]),
        ended_with_eos=np.array([eos for _, _, eos, _ in rollouts]),
        entropies=[rng.random(len(tokens)) for tokens, *_ in rollouts],
        payload={"q": draw(st.integers(0, 3))},
    )


@st.composite
def streams(draw):
    config = draw(configs())
    steps = draw(st.lists(st.tuples(st.integers(0, 2), st.booleans() | st.just(True),
                                    st.lists(groups(config.group_size), max_size=5)), min_size=1, max_size=8))
    return config, steps


class Model:
    """What the buffer must remember, computed without its code."""

    def __init__(self, config):
        self.config = config
        self.retired, self.latest, self.partial_bucket = set(), {}, {}
        self.submitted = {}  # (qid, tokens) -> {(log-probs, step)} of storable rollouts

    def apply(self, step, group, store):
        qid = group.question_id
        if qid in self.retired:
            return
        k, n = int((group.rewards == 1).sum()), len(group.rewards)
        self.latest[qid] = (k, n)
        if k == n:
            self.retired.add(qid)
        elif k > 0:
            nearest = int(Fraction(k * self.config.group_size, n) + Fraction(1, 2))
            self.partial_bucket[qid] = min(max(nearest, 1), self.config.group_size - 1)
            for ids, logp, reward, eos in zip(group.response_ids, group.log_probs, group.rewards, group.ended_with_eos):
                if store and reward == 1 and eos and len(ids) and np.isfinite(logp).all():
                    self.submitted.setdefault((qid, tuple(ids)), set()).add((logp.tobytes(), step))
        elif self.config.zero_accuracy_policy == "drop_from_pool":
            self.partial_bucket.pop(qid, None)

    def expected_bucket(self, qid, holds_trajectories):
        if qid in self.retired or not holds_trajectories:
            return None
        return self.partial_bucket.get(qid)


def check(buf: ExperienceBuffer, model: Model, rng):
    config, metrics = buf.config, buf.metrics()
    seen = [q for q in QUESTION_IDS if buf.question(q) is not None]
    assert set(seen) == set(model.latest) | model.retired
    assert buf.retired_ids == model.retired and all(buf.is_retired(q) == (q in model.retired) for q in seen)
    pooled = 0
    for qid in seen:
        view = buf.question(qid)
        assert view.bucket == model.expected_bucket(qid, view.num_trajectories > 0)
        assert view.accuracy == (1.0 if qid in model.retired else model.latest[qid][0] / model.latest[qid][1])
        assert view.num_trajectories <= config.max_trajectories_per_question
        pooled += view.bucket is not None
        candidates = buf.candidates(qid)
        assert len(candidates) == min(view.num_trajectories, config.max_candidates_per_question)
        assert len({c.response_ids.tobytes() for c in candidates}) == len(candidates)
        assert [c.id for c in candidates] == sorted(c.id for c in candidates)
        for c in candidates:
            assert (c.log_probs.tobytes(), c.step) in model.submitted[(qid, tuple(c.response_ids.tolist()))]
            assert config.max_age_steps is None or buf.step - c.step <= config.max_age_steps
        if candidates:
            scores = rng.random(len(candidates)) if config.needs_forward_pass else None
            assert buf.select(qid, scores).id in {c.id for c in candidates}
    assert metrics["pool_size"] == pooled == sum(metrics[f"bucket/{b}"] for b in range(1, config.group_size))
    assert metrics["trajectories"] == sum(buf.question(q).num_trajectories for q in seen)
    assert config.max_total_tokens is None or metrics["tokens"] <= config.max_total_tokens
    for n in (1, 3, 10):
        draw = buf.sample_questions(n)
        assert len(draw) == len(set(draw)) == min(n, pooled)
        assert all(buf.question(q).bucket is not None and not buf.is_retired(q) for q in draw)


@settings(max_examples=75, deadline=None)
@given(streams())
def test_random_streams_keep_every_invariant_and_round_trip(stream):
    config, steps = stream
    rng, model, step = np.random.default_rng(0), Model(config), 0
    with small_segments(8):
        buf = ExperienceBuffer(config)
        for advance, store, step_groups in steps:
            step += advance
            buf.update(step, step_groups, store=store)
            for g in step_groups:
                model.apply(step, g, store)
            check(buf, model, rng)
    with tempfile.TemporaryDirectory() as scratch:
        buf.save(f"{scratch}/exp")
        loaded = ExperienceBuffer.load(f"{scratch}/exp")
    assert_same_state(buf, loaded)
    assert loaded.sample_questions(4) == buf.sample_questions(4)
