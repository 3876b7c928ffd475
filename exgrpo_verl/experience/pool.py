"""The replay pool: the sampleable questions, grouped by bucket k = 1..K-1."""

from __future__ import annotations

import numpy as np


class QuestionPool:
    """Buckets of question ids.

    Each bucket is a list plus a position index, so adding, moving and removing a question is
    O(1) (removal swaps the last member into the hole). Seeded sampling draws list positions,
    so the member order is part of the buffer's state; it is saved and restored as is.
    """

    def __init__(self, group_size: int):
        self.group_size = group_size
        self._members: dict[int, list[int]] = {b: [] for b in range(1, group_size)}
        self._position: dict[int, tuple[int, int]] = {}  # question id -> (bucket, index in bucket)

    def __len__(self) -> int:
        return len(self._position)

    def __contains__(self, question_id: int) -> bool:
        return question_id in self._position

    def bucket(self, question_id: int) -> int | None:
        place = self._position.get(question_id)
        return None if place is None else place[0]

    def members(self, bucket: int) -> list[int]:
        """The bucket's question ids in pool order (do not mutate)."""
        return self._members[bucket]

    def sizes(self) -> np.ndarray:
        """Question count of buckets 1..K-1."""
        return np.array([len(self._members[b]) for b in range(1, self.group_size)], dtype=np.int64)

    def place(self, question_id: int, bucket: int | None) -> None:
        """Put the question in `bucket` (None: take it out of the pool)."""
        if self.bucket(question_id) == bucket:
            return
        if question_id in self._position:
            self._remove(question_id)
        if bucket is not None:
            members = self._members[bucket]
            self._position[question_id] = (bucket, len(members))
            members.append(question_id)

    def _remove(self, question_id: int) -> None:
        bucket, index = self._position.pop(question_id)
        members = self._members[bucket]
        last = members.pop()
        if last != question_id:
            members[index] = last
            self._position[last] = (bucket, index)
