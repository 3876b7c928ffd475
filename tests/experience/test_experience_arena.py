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


def test_a_freed_segment_is_the_spare_the_next_segment_reuses():
    arena = TokenArena(segment_tokens=10)
    for key in range(4):  # segments {0,1}, {2,3}; each opening prepares a touched spare
        arena.append(key, *span(key, 5))
    assert arena._spare is not None and not arena._spare.spans
    arena._take_spare()  # as if it had been used up
    first_segment = arena._segments[arena._segment_of[0]]
    arena.release(0)
    arena.release(1)  # the first segment empties: it becomes the spare
    assert arena._spare is first_segment and arena.used == 10
    arena.append(4, *span(4, 5))  # the active segment is full: the next one is the spare, not a new array
    assert arena._segments[arena._active] is first_segment
    assert_holds(arena, {2: 5, 3: 5, 4: 5})


def test_reserve_hands_out_views_that_fill_the_spans_in_order():
    arena = TokenArena(segment_tokens=10)
    arena.append(0, *span(0, 4))
    lengths = [3, 5, 12, 2]  # 3 fits after span 0; 5 does not (a new segment); 12 gets its own
    destinations = arena.reserve([1, 2, 3, 4], lengths)
    flat_tokens = np.concatenate([span(key, length)[0] for key, length in zip([1, 2, 3, 4], lengths)])
    flat_log_probs = np.concatenate([span(key, length)[1] for key, length in zip([1, 2, 3, 4], lengths)])
    assert sum(tokens.size for tokens, _ in destinations) == flat_tokens.size
    start = 0
    for tokens, log_probs in destinations:
        tokens[:] = flat_tokens[start:start + tokens.size]
        log_probs[:] = flat_log_probs[start:start + tokens.size]
        start += tokens.size
    assert_holds(arena, {0: 4, 1: 3, 2: 5, 3: 12, 4: 2})


def test_runs_merge_adjacent_spans_and_follow_the_key_order():
    arena = TokenArena(segment_tokens=10)
    for key in range(5):  # {0,1,2} in the first segment (9 tokens), {3,4} in the second
        arena.append(key, *span(key, 3))
    runs = list(arena.runs([0, 1, 2, 3, 4]))
    assert [tokens.size for tokens, _ in runs] == [9, 6]
    assert [tokens.size for tokens, _ in arena.runs([1, 0, 2])] == [3, 3, 3]  # out of order: not merged
    np.testing.assert_array_equal(np.concatenate([t for t, _ in runs]),
                                  np.concatenate([span(key, 3)[0] for key in range(5)]))
