"""The token arena: spans in segments, freeing empty segments, compaction, against a dict model."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from exgrpo_verl.experience.arena import COMPACTION_THRESHOLD, TokenArena


def span(key, length):
    """Recognisable contents: token i of span `key` is 1000 * key + i, its log-prob -(key + i / 1000)."""
    tokens = (1000 * key + np.arange(length)).astype(np.int32)
    return tokens, -(key + np.arange(length) / 1000).astype(np.float32)


def assert_holds(arena, model):
    assert arena.live == sum(model.values()) and arena.used == arena.live + arena.dead and arena.dead >= 0
    for key, length in model.items():
        tokens, log_probs = arena.read(key)
        expected_tokens, expected_log_probs = span(key, length)
        np.testing.assert_array_equal(tokens, expected_tokens)
        np.testing.assert_array_equal(log_probs, expected_log_probs)


def test_spans_round_trip_across_segments_and_reads_are_copies():
    arena = TokenArena(segment_tokens=10)
    for key, length in enumerate([4, 5, 3, 10, 25]):  # 25 > a segment: a segment of its own
        arena.append(key, *span(key, length))
    assert_holds(arena, {0: 4, 1: 5, 2: 3, 3: 10, 4: 25})
    tokens, _ = arena.read(1)
    tokens[:] = -1
    assert arena.read(1)[0][0] == 1000


def test_a_segment_emptied_by_releases_is_freed_without_copying():
    arena = TokenArena(segment_tokens=10)
    for key in range(6):  # segments: {0,1}, {2,3}, {4,5} (5 tokens each)
        arena.append(key, *span(key, 5))
    arena.release(0)
    assert arena.dead == 5
    arena.release(1)
    assert arena.dead == 0 and arena.used == 20 and len(arena._segments) == 2  # the first went away whole
    assert arena.compact() == 0
    assert_holds(arena, {key: 5 for key in range(2, 6)})


def test_compaction_moves_live_spans_out_of_the_most_dead_segment():
    arena = TokenArena(segment_tokens=10)
    for key in range(10):  # five segments of two 5-token spans
        arena.append(key, *span(key, 5))
    for key in (0, 2, 4):  # three segments become half dead: 15 dead > one segment of slack
        arena.release(key)
    assert arena.dead == 15
    copied = arena.compact()
    assert copied == 5 and arena.dead <= max(COMPACTION_THRESHOLD * arena.used, 10)
    assert_holds(arena, {key: 5 for key in (1, 3, 5, 6, 7, 8, 9)})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["append", "release", "compact"]), st.integers(1, 30)), max_size=60))
def test_random_operations_match_a_dict_model(operations):
    arena, model, next_key = TokenArena(segment_tokens=16), {}, 0
    for operation, number in operations:
        if operation == "append":
            arena.append(next_key, *span(next_key, number))
            model[next_key], next_key = number, next_key + 1
        elif operation == "release" and model:
            key = sorted(model)[number % len(model)]
            arena.release(key)
            del model[key]
        elif operation == "compact":
            arena.compact()
            dead_outside_active = sum(s.used - s.live for i, s in arena._segments.items() if i != arena._active)
            assert arena.dead <= max(COMPACTION_THRESHOLD * arena.used, 16) or dead_outside_active == 0
        assert_holds(arena, model)
