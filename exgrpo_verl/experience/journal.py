"""The experience log: an append-only, checksummed file of the buffer's operations since its
last checkpoint, so that a crash between checkpoints loses no experience.

The buffer is deterministic given its state and the calls made on it (its RNG state is part of
the state), so the log records the calls themselves, one record per completed training step:
`sample_questions(n)`, `select(qid, scores, among)`, `mark_replayed(ids, step)` and
`update(step, groups, store)` with each group already validated and reduced to what `update`
keeps (its counts, the storable rollouts, the prompt and payload). Replaying a record on the
buffer it started from gives back, exactly, the buffer after that step.

File layout (little-endian); every record is framed the same way:

    magic "EXGL" | u32 header bytes | u64 blob bytes | 32-byte SHA-256 of header+blob | header | blob

    header  JSON: {"kind": "base" | "step", ...}; arrays are named by index into the blob
    blob    the arrays' raw bytes, back to back (their dtypes and lengths are in the header)

The first record names the base: the checkpoint (or the fresh buffer) the records apply to.
Each step record is written, flushed and fsynced before the trainer moves on. A kill in the
middle of an append leaves a torn last record (short, or failing its checksum): reading drops it
and `resume` cuts it off. Damage anywhere before the last record is reported as corruption.
No pickle: JSON and raw numpy bytes only.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .persistence import CheckpointError, fsync_directory
from .results import CheckedGroup, StorableRollout

FORMAT_NAME = "exgrpo-experience-log"
FORMAT_VERSION = 1
MAGIC = b"EXGL"
FRAME = struct.Struct("<4sIQ32s")


@dataclass(frozen=True)
class Operation:
    """One buffer call, as `ExperienceBuffer.replay` repeats it: `name` is the method, `args` its
    keyword arguments (an update's groups as CheckedGroups)."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class StepRecord:
    step: int  # the trainer's step that made these calls
    operations: list[Operation]
    context: dict  # the caller's small JSON state at the end of the step (e.g. the replay phase)
    buffer_sha256: str | None  # ExperienceBuffer.state_sha256() after the step, when the writer computed it


@dataclass(frozen=True)
class LogContents:
    base: str
    records: list[StepRecord]
    good_bytes: int  # the length of the intact part (everything but a torn last record)
    torn: bool


# ---- writing ---------------------------------------------------------------------------------
class ExperienceLog:
    """An open log, appended to one record per step."""

    def __init__(self, path: Path, base: str):
        self.path, self.base = path, base

    @classmethod
    def start(cls, path: str | os.PathLike, base: str) -> "ExperienceLog":
        """A new, empty log for `base`, replacing any log at `path` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        with open(staging, "wb") as f:
            f.write(_frame({"kind": "base", "format": FORMAT_NAME, "version": FORMAT_VERSION, "base": base}, []))
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
        fsync_directory(path.parent)
        return cls(path, base)

    @classmethod
    def resume(cls, path: str | os.PathLike, base: str) -> tuple["ExperienceLog", list[StepRecord], str]:
        """Continue the log at `path` if it extends `base`: (log, its step records, what happened).

        A torn last record is cut off the file. A log of another base (a checkpoint other than
        the one being resumed) applies to nothing here: a new log for `base` replaces it.
        """
        path = Path(path)
        if not path.exists():
            return cls.start(path, base), [], "no experience log yet"
        contents = read_log(path)
        if contents.base != base:
            return cls.start(path, base), [], (f"the experience log extends another checkpoint ({contents.base[:16]}), "
                                               "not the one resumed; it was set aside")
        note = f"{len(contents.records)} step records"
        if contents.torn:
            with open(path, "r+b") as f:
                f.truncate(contents.good_bytes)
                f.flush()
                os.fsync(f.fileno())
            note += ", and a torn last record (a kill during its write) dropped"
        return cls(path, base), contents.records, note

    def append(self, step: int, operations: list[Operation], context: dict | None = None,
               buffer_sha256: str | None = None) -> int:
        """Write one step's record and fsync it; returns its size in bytes."""
        header, arrays = _encode_operations(operations)
        header.update(kind="step", step=int(step), context=context or {}, buffer_sha256=buffer_sha256)
        data = _frame(header, arrays)
        with open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return len(data)


def _frame(header: dict, arrays: list[np.ndarray]) -> bytes:
    header["arrays"] = [[array.dtype.str, int(array.shape[0])] for array in arrays]
    header_bytes = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    blob = b"".join(np.ascontiguousarray(array).tobytes() for array in arrays)
    digest = hashlib.sha256(header_bytes)
    digest.update(blob)
    return FRAME.pack(MAGIC, len(header_bytes), len(blob), digest.digest()) + header_bytes + blob


# ---- reading ---------------------------------------------------------------------------------
def read_log(path: str | os.PathLike) -> LogContents:
    """Every intact record of the log; CheckpointError for a log that is not one, or is damaged
    before its last record."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"experience log {path}: does not start with an {FORMAT_NAME} header. "
                              f"Delete it to resume from the checkpoint alone.")
    frames, offset, torn = [], 0, False
    while offset < len(data):
        frame = _read_frame(data, offset)
        if frame is None:
            if _is_last(data, offset):
                torn = True
                break
            raise CheckpointError(f"experience log {path}: record at byte {offset} is damaged and is not the last one "
                                  f"(the file was modified). Delete the log to resume from the checkpoint alone.")
        header, blob, offset = frame
        frames.append((header, blob))
    if not frames or frames[0][0].get("kind") != "base" or frames[0][0].get("format") != FORMAT_NAME:
        raise CheckpointError(f"experience log {path}: does not start with an {FORMAT_NAME} header. "
                              f"Delete it to resume from the checkpoint alone.")
    if frames[0][0].get("version") != FORMAT_VERSION:
        raise CheckpointError(f"experience log {path}: format version {frames[0][0].get('version')!r}, this code "
                              f"reads {FORMAT_VERSION}. Delete it to resume from the checkpoint alone.")
    records = [_decode_step(header, blob) for header, blob in frames[1:]]
    return LogContents(str(frames[0][0]["base"]), records, offset, torn)


def _read_frame(data: bytes, offset: int):
    """(header, blob, next offset) of the record at `offset`, or None if it is short or fails its checksum."""
    end = offset + FRAME.size
    if end > len(data):
        return None
    magic, header_size, blob_size, sha = FRAME.unpack_from(data, offset)
    body_end = end + header_size + blob_size
    if magic != MAGIC or body_end > len(data):
        return None
    digest = hashlib.sha256(data[end:end + header_size])
    digest.update(data[end + header_size:body_end])
    if digest.digest() != sha:
        return None
    header = json.loads(data[end:end + header_size])
    return header, data[end + header_size:body_end], body_end


def _is_last(data: bytes, offset: int) -> bool:
    """Whether a bad record at `offset` may be the torn tail: its frame claims to reach the end
    of the file or beyond, or is itself cut short (a damaged record followed by others is not)."""
    if offset + FRAME.size > len(data) or not any(data[offset:]):  # cut short, or blocks never written
        return True
    magic, header_size, blob_size, _ = FRAME.unpack_from(data, offset)
    return magic == MAGIC and offset + FRAME.size + header_size + blob_size >= len(data)


# ---- operations <-> header + arrays ----------------------------------------------------------
def _encode_operations(operations: list[Operation]) -> tuple[dict, list[np.ndarray]]:
    arrays: list[np.ndarray] = []

    def ref(array: np.ndarray | None):
        if array is None:
            return None
        arrays.append(np.asarray(array))
        return len(arrays) - 1

    encoded = []
    for operation in operations:
        args = dict(operation.args)
        if operation.name == "select":
            args["scores"] = ref(None if args["scores"] is None else np.asarray(args["scores"], dtype=np.float64))
        elif operation.name == "update":
            args["groups"] = [{"question_id": g.question_id, "num_correct": g.num_correct, "num_rollouts": g.num_rollouts,
                               "storable": [[ref(r.token_ids), ref(r.log_probs), r.entropy_mean] for r in g.storable],
                               "prompt_ids": ref(g.prompt_ids), "payload": g.payload} for g in args["groups"]]
        encoded.append([operation.name, args])
    return {"operations": encoded}, arrays


def _decode_step(header: dict, blob: bytes) -> StepRecord:
    arrays, position = [], 0
    for dtype, length in header["arrays"]:
        size = np.dtype(dtype).itemsize * length
        arrays.append(np.frombuffer(blob, dtype=dtype, count=length, offset=position).copy())
        position += size

    def array(index):
        return None if index is None else arrays[index]

    operations = []
    for name, args in header["operations"]:
        if name == "select":
            args["scores"] = array(args["scores"])
        elif name == "update":
            args["groups"] = [CheckedGroup(g["question_id"], g["num_correct"], g["num_rollouts"],
                                           [StorableRollout(array(t), array(lp), e) for t, lp, e in g["storable"]],
                                           array(g["prompt_ids"]), g["payload"]) for g in args["groups"]]
        operations.append(Operation(name, args))
    return StepRecord(int(header["step"]), operations, header["context"], header["buffer_sha256"])
