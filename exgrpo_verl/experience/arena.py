"""Storage for the response tokens and behaviour log-probs of every stored trajectory.

At paper scale (200k trajectories x ~2k tokens = 3.2 GB) one Python object per token, or even
two numpy arrays per trajectory, costs too much; instead spans of tokens live in large segments,
each a pair of parallel flat arrays (int32 token ids, float32 log-probs: 8 bytes a token).

- Appends fill the newest ("active") segment; a span that does not fit opens a new one. A span
  never straddles two segments (one longer than a segment gets a segment of its own size).
- Releasing a span only counts its tokens as dead. A segment whose spans are all released is
  freed at once: eviction is mostly oldest-first, so old segments empty out and are returned to
  the OS without copying anything.
- `compact` bounds the remaining slack (holes left by scattered evictions): while dead tokens
  exceed both COMPACTION_THRESHOLD of the used ones and one segment (the slack that oldest-first
  eviction leaves in the oldest segment anyway), the non-active segment with the most dead tokens
  has its live spans copied to the active segment and is freed (a copy of at most one segment).
- Nothing ever grows by copying, so memory never doubles; a segment's array is large enough
  (32 MiB) to be its own mmap, so freeing it returns the memory, and capacity of the active
  segment that was never written is not resident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

SEGMENT_TOKENS = 1 << 23  # 8M tokens: 32 MiB of ids + 32 MiB of log-probs
COMPACTION_THRESHOLD = 1 / 32  # most dead tokens allowed, as a fraction of used tokens


@dataclass(slots=True)
class _Segment:
    tokens: np.ndarray
    log_probs: np.ndarray
    used: int = 0  # end of the last appended span
    live: int = 0  # tokens in its stored spans
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # key -> (offset, length)


class TokenArena:
    """Spans of (token id, log-prob) pairs, each under an integer key chosen by the caller."""

    def __init__(self, segment_tokens: int | None = None):
        self.segment_tokens = SEGMENT_TOKENS if segment_tokens is None else segment_tokens
        self._segments: dict[int, _Segment] = {}
        self._segment_of: dict[int, int] = {}  # key -> segment id
        self._active = -1  # id of the segment that receives appends
        self.live = 0  # tokens in stored spans
        self.dead = 0  # tokens of released spans still held in segments

    def append(self, key: int, token_ids: np.ndarray, log_probs: np.ndarray) -> None:
        length = token_ids.shape[0]
        segment = self._segments.get(self._active)
        if segment is None or segment.used + length > segment.tokens.shape[0]:
            segment = self._open_segment(max(length, self.segment_tokens))
        offset = segment.used
        segment.tokens[offset:offset + length] = token_ids
        segment.log_probs[offset:offset + length] = log_probs
        segment.used += length
        segment.live += length
        segment.spans[key] = (offset, length)
        self._segment_of[key] = self._active
        self.live += length

    def read(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of a span's arrays (views would go stale when its segment is compacted)."""
        tokens, log_probs = self._views(key)
        return tokens.copy(), log_probs.copy()

    def release(self, key: int) -> None:
        segment_id = self._segment_of.pop(key)
        segment = self._segments[segment_id]
        _, length = segment.spans.pop(key)
        segment.live -= length
        self.live -= length
        self.dead += length
        if not segment.spans:
            self.dead -= segment.used
            if segment_id == self._active:
                segment.used = 0  # reuse its (already resident) memory
            else:
                del self._segments[segment_id]

    def compact(self) -> int:
        """Free the most-dead segments until dead <= max(COMPACTION_THRESHOLD * used, one segment).

        Returns the number of tokens copied.
        """
        copied = 0
        while self.dead > max(COMPACTION_THRESHOLD * self.used, self.segment_tokens):
            candidates = [i for i in self._segments if i != self._active]
            if not candidates:
                break
            victim_id = max(candidates, key=lambda i: self._segments[i].used - self._segments[i].live)
            if self._segments[victim_id].used == self._segments[victim_id].live:
                break  # the dead tokens are all in the active segment
            victim = self._segments.pop(victim_id)
            self.dead -= victim.used - victim.live
            self.live -= victim.live
            for key, (offset, length) in sorted(victim.spans.items(), key=lambda item: item[1][0]):
                self.append(key, victim.tokens[offset:offset + length], victim.log_probs[offset:offset + length])
                copied += length
        return copied

    def pieces(self, keys: Iterable[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Views (token ids, log-probs) of the spans of `keys`, in that order, for saving."""
        for key in keys:
            yield self._views(key)

    @property
    def used(self) -> int:
        """Tokens written into segments: live plus dead, about what is resident."""
        return self.live + self.dead

    def _views(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        segment = self._segments[self._segment_of[key]]
        offset, length = segment.spans[key]
        return segment.tokens[offset:offset + length], segment.log_probs[offset:offset + length]

    def _open_segment(self, capacity: int) -> _Segment:
        """A new active segment; the previous active one keeps only its live spans' worth."""
        previous = self._segments.get(self._active)
        if previous is not None and not previous.spans:
            del self._segments[self._active]
        self._active += 1
        segment = _Segment(np.empty(capacity, dtype=np.int32), np.empty(capacity, dtype=np.float32))
        self._segments[self._active] = segment
        return segment
