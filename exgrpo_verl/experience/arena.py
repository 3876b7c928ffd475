"""Storage for the response tokens and behaviour log-probs of every stored trajectory.

At paper scale (200k trajectories x ~2k tokens = 3.2 GB) one Python object per token, or even
two numpy arrays per trajectory, costs too much; instead spans of tokens live in large segments,
each a pair of parallel flat arrays (int32 token ids, float32 log-probs: 8 bytes a token).

- Appends fill the newest ("active") segment; a span that does not fit opens a new one. A span
  never straddles two segments (one longer than a segment gets a segment of its own size).
- Releasing a span only counts its tokens as dead. A segment whose spans are all released is
  freed at once: eviction is mostly oldest-first, so old segments empty out without copying.
- `compact` bounds the remaining slack (holes left by scattered evictions): while dead tokens
  exceed both COMPACTION_THRESHOLD of the used ones and one segment (the slack that oldest-first
  eviction leaves in the oldest segment anyway), the non-active segment with the most dead tokens
  has its live spans copied to the active segment and is freed (a copy of at most one segment).
- Nothing ever grows by copying, so memory never doubles; a segment's array is large enough
  (32 MiB) to be its own mmap, so freeing it returns the memory to the OS.
- One empty, already resident segment is kept as the spare that the next segment opened uses:
  a freed segment becomes the spare, or a new one is allocated and its pages touched by a
  background thread (numpy releases the GIL while filling). So growing the arena does not stall
  an append on the first-touch page faults of 64 MiB, and steady-state churn (oldest segment
  freed, a new one opened) reuses memory instead of unmapping and faulting it in again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

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

    @classmethod
    def allocate(cls, capacity: int) -> "_Segment":
        return cls(np.empty(capacity, dtype=np.int32), np.empty(capacity, dtype=np.float32))

    def touch(self) -> None:
        """Fault in every page now (a write of zeros), so that appends later do not."""
        self.tokens.fill(0)
        self.log_probs.fill(0)


class TokenArena:
    """Spans of (token id, log-prob) pairs, each under an integer key chosen by the caller."""

    def __init__(self, segment_tokens: int | None = None):
        self.segment_tokens = SEGMENT_TOKENS if segment_tokens is None else segment_tokens
        self._segments: dict[int, _Segment] = {}
        self._segment_of: dict[int, int] = {}  # key -> segment id
        self._active = -1  # id of the segment that receives appends
        self._spare: _Segment | None = None  # empty and resident (or being touched): the next segment
        self._spare_touching: threading.Thread | None = None
        self.live = 0  # tokens in stored spans
        self.dead = 0  # tokens of released spans still held in segments

    def append(self, key: int, token_ids: np.ndarray, log_probs: np.ndarray) -> None:
        length = token_ids.shape[0]
        segment = self._segments.get(self._active)
        if segment is None or segment.used + length > segment.tokens.shape[0]:
            segment = self._open_segment(length)
        offset = segment.used
        segment.tokens[offset:offset + length] = token_ids
        segment.log_probs[offset:offset + length] = log_probs
        self._add_span(segment, key, offset, length)

    def reserve(self, keys: Sequence[int], lengths: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Store consecutive spans (span i: `lengths[i]` tokens under `keys[i]`) whose values the
        caller writes next, and return the (token ids, log-probs) views to write them into, one
        pair per segment, in span order: how a checkpoint is read straight into the arena."""
        lengths = np.asarray(lengths, dtype=np.int64)
        ends = np.cumsum(lengths)
        destinations, first = [], 0  # first: the first span without a place yet
        while first < len(keys):
            segment = self._segments.get(self._active)
            start = int(ends[first] - lengths[first])
            room = 0 if segment is None else segment.tokens.shape[0] - segment.used
            last = int(np.searchsorted(ends, start + room, side="right"))  # spans [first, last) fit
            if last == first:
                self._open_segment(int(lengths[first]), prepare_spare=False)  # reading faults it in anyway
                continue
            base, stop = segment.used - start, int(ends[last - 1])
            destinations.append((segment.tokens[segment.used:base + stop], segment.log_probs[segment.used:base + stop]))
            for key, end, length in zip(keys[first:last], ends[first:last].tolist(), lengths[first:last].tolist()):
                self._add_span(segment, key, base + end - length, length)
            first = last
        return destinations

    def read(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of a span's arrays (views would go stale when its segment is compacted)."""
        tokens, log_probs = self.view(key)
        return tokens.copy(), log_probs.copy()

    def view(self, key: int) -> tuple[np.ndarray, np.ndarray]:
        """The span's arrays themselves: valid until the next `compact`; do not write to them."""
        segment = self._segments[self._segment_of[key]]
        offset, length = segment.spans[key]
        return segment.tokens[offset:offset + length], segment.log_probs[offset:offset + length]

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
                self._free(segment_id)

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
            victim = self._segments[victim_id]
            if victim.used == victim.live:
                break  # the dead tokens are all in the active segment
            self.dead -= victim.used - victim.live
            self.live -= victim.live
            del self._segments[victim_id]  # off the list before its spans move to the active segment
            for key, (offset, length) in sorted(victim.spans.items(), key=lambda item: item[1][0]):
                self.append(key, victim.tokens[offset:offset + length], victim.log_probs[offset:offset + length])
                copied += length
            self._recycle(victim)
        return copied

    def runs(self, keys: Iterable[int]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Views (token ids, log-probs) covering the spans of `keys` in that order, adjacent
        spans merged into one view: what a checkpoint writes, in few large pieces."""
        segment, start, end = None, 0, 0
        for key in keys:
            key_segment = self._segments[self._segment_of[key]]
            offset, length = key_segment.spans[key]
            if key_segment is segment and offset == end:
                end += length
                continue
            if segment is not None:
                yield segment.tokens[start:end], segment.log_probs[start:end]
            segment, start, end = key_segment, offset, offset + length
        if segment is not None:
            yield segment.tokens[start:end], segment.log_probs[start:end]

    @property
    def used(self) -> int:
        """Tokens written into segments: live plus dead, about what is resident."""
        return self.live + self.dead

    def _add_span(self, segment: _Segment, key: int, offset: int, length: int) -> None:
        segment.used = offset + length
        segment.live += length
        segment.spans[key] = (offset, length)
        self._segment_of[key] = self._active
        self.live += length

    def _open_segment(self, length: int, prepare_spare: bool = True) -> _Segment:
        """A new active segment with room for `length` tokens (the spare, if it is big enough);
        the previous active one keeps only its live spans' worth. Without a spare left, a new
        one is allocated and touched in the background."""
        previous = self._segments.get(self._active)
        if previous is not None and not previous.spans:
            self._free(self._active)
        segment = self._take_spare() if length <= self.segment_tokens else None
        if segment is None:
            segment = _Segment.allocate(max(length, self.segment_tokens))
        self._active += 1
        self._segments[self._active] = segment
        if prepare_spare and self._spare is None:
            self._spare = _Segment.allocate(self.segment_tokens)
            self._spare_touching = threading.Thread(target=self._spare.touch, name="arena-spare-touch", daemon=True)
            self._spare_touching.start()
        return segment

    def _take_spare(self) -> _Segment | None:
        if self._spare_touching is not None:
            self._spare_touching.join()
            self._spare_touching = None
        spare, self._spare = self._spare, None
        return spare

    def _free(self, segment_id: int) -> None:
        self._recycle(self._segments.pop(segment_id))

    def _recycle(self, segment: _Segment) -> None:
        """An emptied segment of the standard size becomes the spare if there is none; others are freed."""
        if self._spare is None and segment.tokens.shape[0] == self.segment_tokens:
            segment.used = segment.live = 0
            segment.spans.clear()
            self._spare = segment
