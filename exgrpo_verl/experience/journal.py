"""The experience log: an append-only, checksummed file of the buffer's operations since its
last checkpoint, so that a crash between checkpoints loses no experience.

The buffer is deterministic given its state and the calls made on it (its RNG state is part of
the state), so the log records the calls themselves, one record per completed training step:
`sample_questions(n)`, `select(qid, scores, among)`, `mark_replayed(ids, step)` and
`update(step, groups, store)` with each group already validated and reduced to what `update`
keeps (its counts, the storable rollouts, the prompt and payload). Replaying a record on the
buffer it started from gives back, exactly, the buffer after that step.

File layout (little-endian); every record is framed the same way:

    magic "EXL2" | u32 header bytes | u64 blob bytes | u32 CRC-32 of the 16 bytes before it
                 | 32-byte SHA-256 of header+blob | header | blob

    header  JSON: {"kind": "base" | "step", ...}; arrays are named by index into the blob
    blob    the arrays' raw bytes, back to back (their dtypes and lengths are in the header)

The first record names the base (the checkpoint, or the fresh buffer, the records apply to)
and the run that writes the log. Each step record is written, flushed and fsynced before the
trainer moves on. A kill in the middle of an append leaves a torn tail: the file ends inside
its last record (or, on a filesystem that allocated blocks it never wrote, in zeros). Reading
drops it and `resume` cuts it off. Anything else that fails a check is damage and is refused,
wherever it is: a record whose lengths fail their CRC (a length that claims more bytes than the
file holds cannot pass for a torn write) or whose complete contents fail their SHA-256.
No pickle: JSON and raw numpy bytes only.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .persistence import CheckpointError, fsync_directory
from .results import CheckedGroup, StorableRollout

FORMAT_NAME = "exgrpo-experience-log"
FORMAT_VERSION = 2
MAGIC = b"EXL2"
OLDER_MAGICS = {b"EXGL": 1}  # the magic of each earlier format version
SIZES = struct.Struct("<4sIQ")  # magic, header bytes, blob bytes: what the CRC covers
LENGTHS = struct.Struct("<4sIQI")  # SIZES and their CRC-32
FRAME = struct.Struct("<4sIQI32s")  # LENGTHS and the SHA-256 of header+blob
DELETE_ADVICE = "Move it away (or delete it) to resume from the checkpoint alone, without the steps it logged"


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
    run_id: str  # the run that wrote the log
    records: list[StepRecord]
    good_bytes: int  # the length of the intact part (everything but a torn tail)
    torn: bool


# ---- writing ---------------------------------------------------------------------------------
class ExperienceLog:
    """An open log, appended to one record per step."""

    def __init__(self, path: Path, base: str, run_id: str):
        self.path, self.base, self.run_id = path, base, run_id

    @classmethod
    def start(cls, path: str | os.PathLike, base: str, run_id: str) -> "ExperienceLog":
        """A new, empty log for `base` written by run `run_id`, replacing any log at `path`
        atomically: only for a log whose steps the checkpoint `base` now holds (`resume` keeps
        any other)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        first = {"kind": "base", "format": FORMAT_NAME, "version": FORMAT_VERSION, "base": base, "run_id": run_id}
        with open(staging, "wb") as f:
            f.write(_frame(first, []))
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
        fsync_directory(path.parent)
        return cls(path, base, run_id)

    @classmethod
    def resume(cls, path: str | os.PathLike, base: str, run_id: str | None,
               fresh: bool = False) -> tuple["ExperienceLog", list[StepRecord], str]:
        """Continue the log at `path` if run `run_id` wrote it on `base`: (log, its step records,
        what happened). A torn tail is cut off the file.

        A log that applies to nothing here (another base: a checkpoint other than the one being
        resumed; or any log when `fresh`, a run that continues nothing) is kept: renamed beside
        `path`, and named in the note. A log of this base written by another run is refused.
        `run_id` None is a new run that has no checkpoint yet: a log of its base is its own
        (the same folder, config and data: a restart) and it takes that log's run id; a new
        log gets a new one.
        """
        path = Path(path)
        if not path.exists():
            return cls.start(path, base, run_id or new_run_id()), [], "no experience log yet"
        contents = read_log(path)
        if fresh or contents.base != base:
            why = "this run continues none" if fresh else \
                f"it extends another checkpoint ({contents.base[:16]}), not the one resumed"
            kept = set_aside(path)
            return cls.start(path, base, run_id or new_run_id()), [], f"{why}: it was set aside, kept as {kept}"
        if run_id is not None and contents.run_id != run_id:
            raise CheckpointError(
                f"experience log {path}: written by run {contents.run_id}, but this run is {run_id} (started from the "
                f"same checkpoint); refusing to replay another run's {len(contents.records)} steps. "
                f"{DELETE_ADVICE}, or resume that run from its own trainer.default_local_dir.")
        note = f"{len(contents.records)} step records"
        if contents.torn:
            with open(path, "r+b") as f:
                f.truncate(contents.good_bytes)
                f.flush()
                os.fsync(f.fileno())
            note += ", and a torn last record (a kill during its write) dropped"
        return cls(path, base, contents.run_id), contents.records, note

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


def new_run_id() -> str:
    return uuid.uuid4().hex


def set_aside(path: Path) -> Path:
    """Rename the file at `path` to an unused name beside it (`<name>.set-aside-<UTC time>-<tag>`);
    returns that name. Nothing is deleted."""
    kept = path.with_name(f"{path.name}.set-aside-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:6]}")
    os.rename(path, kept)
    fsync_directory(path.parent)
    return kept


def _frame(header: dict, arrays: list[np.ndarray]) -> bytes:
    header["arrays"] = [[array.dtype.str, int(array.shape[0])] for array in arrays]
    header_bytes = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    blob = b"".join(np.ascontiguousarray(array).tobytes() for array in arrays)
    digest = hashlib.sha256(header_bytes)
    digest.update(blob)
    sizes = SIZES.pack(MAGIC, len(header_bytes), len(blob))
    return sizes + struct.pack("<I", zlib.crc32(sizes)) + digest.digest() + header_bytes + blob


# ---- reading ---------------------------------------------------------------------------------
def read_log(path: str | os.PathLike) -> LogContents:
    """Every intact record of the log, and whether a torn tail follows them; CheckpointError
    for a file that is not a log of this format, or holds a damaged record anywhere."""
    path = Path(path)
    data = path.read_bytes()
    if data[:len(MAGIC)] in OLDER_MAGICS:
        raise CheckpointError(f"experience log {path}: format version {OLDER_MAGICS[data[:len(MAGIC)]]} (an earlier "
                              f"exgrpo-verl), this code reads {FORMAT_VERSION}. {DELETE_ADVICE}.")
    if not data.startswith(MAGIC):
        raise CheckpointError(f"experience log {path}: does not start with an {FORMAT_NAME} header. {DELETE_ADVICE}.")
    frames, offset, torn = [], 0, False
    while offset < len(data):
        if _ends_inside(data, offset):
            torn = True
            break
        header, blob, offset = _read_frame(path, data, offset, len(frames))
        frames.append((header, blob))
    first = frames[0][0] if frames else {}
    if first.get("kind") != "base" or first.get("format") != FORMAT_NAME or first.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"experience log {path}: does not start with an {FORMAT_NAME} version {FORMAT_VERSION} "
                              f"header. {DELETE_ADVICE}.")
    records = [_decode_step(header, blob) for header, blob in frames[1:]]
    return LogContents(str(first["base"]), str(first["run_id"]), records, offset, torn)


def _ends_inside(data: bytes, offset: int) -> bool:
    """Whether the file ends inside the record at `offset` (a torn tail): a frame whose lengths
    pass their CRC and reach past the end of the file, or what is left is the start of a frame
    too short to hold its lengths, or zeros (blocks allocated but never written)."""
    lengths = _lengths(data, offset)
    if lengths is not None:
        return offset + FRAME.size + sum(lengths) > len(data)
    left = len(data) - offset
    cut_in_lengths = left < LENGTHS.size and MAGIC.startswith(data[offset:offset + len(MAGIC)])
    return cut_in_lengths or data.count(0, offset) == left


def _lengths(data: bytes, offset: int) -> tuple[int, int] | None:
    """(header bytes, blob bytes) of the frame at `offset`, or None unless its marker, lengths
    and their CRC are all there and agree."""
    if offset + LENGTHS.size > len(data):
        return None
    magic, header_size, blob_size, crc = LENGTHS.unpack_from(data, offset)
    return (header_size, blob_size) if magic == MAGIC and crc == zlib.crc32(data[offset:offset + SIZES.size]) else None


def _read_frame(path: Path, data: bytes, offset: int, index: int):
    """(header, blob, next offset) of the record at `offset`, which the file does not end
    inside; CheckpointError naming it if it is damaged."""
    lengths = _lengths(data, offset)
    if lengths is None:
        why = "its length fields fail their CRC" if data.startswith(MAGIC, offset) else "no record marker where it starts"
    else:
        end = offset + FRAME.size
        body_end = end + sum(lengths)
        digest = hashlib.sha256(data[end:end + lengths[0]])
        digest.update(data[end + lengths[0]:body_end])
        if digest.digest() == FRAME.unpack_from(data, offset)[-1]:
            return json.loads(data[end:end + lengths[0]]), data[end + lengths[0]:body_end], body_end
        why = "its contents fail their SHA-256"
    what = "the log's first record (its header)" if index == 0 else f"record {index}"
    raise CheckpointError(
        f"experience log {path}: {what}, at byte {offset}, is damaged ({why}). A kill leaves only a record the file "
        f"ends inside, so this is damage, not a torn write, and the log is not applied. {DELETE_ADVICE} since.")


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
                               "storable": [[ref(r.token_ids), ref(r.log_probs), r.entropy_mean, r.reward] for r in g.storable],
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
                                           [StorableRollout(array(r[0]), array(r[1]), *r[2:]) for r in g["storable"]],
                                           array(g["prompt_ids"]), g["payload"]) for g in args["groups"]]
        operations.append(Operation(name, args))
    return StepRecord(int(header["step"]), operations, header["context"], header["buffer_sha256"])
