"""Checkpoint files of the experience buffer: safe formats, checksums, atomic replacement.

A checkpoint is a directory (no pickle anywhere; numpy files are read with allow_pickle=False):

    manifest.json   format name and version; size and SHA-256 of every other file
    state.json      config, step, counters, RNG state, payloads
    tables.npz      per-trajectory and per-question columns, pool order, retired ids
    tokens.npy      int32 token ids of all stored responses, concatenated in collection order
    log_probs.npy   float32 behaviour log-probs, aligned with tokens.npy

The two large arrays are written piece by piece (`ArrayChunks`), hashed as they are written,
and read back piece by piece straight into the caller's arrays (`ArrayFile.read_into`), hashed as
they are read: each byte crosses memory once each way, and neither direction holds a second copy.

Writing goes into a temporary sibling directory; every file is fsynced, the manifest is written
last, and the directory is renamed into place (a previous checkpoint there is renamed aside first
and deleted after). Reading checks the manifest, then every file's size and SHA-256, before it
parses anything (the large arrays: before `read_into` returns), so a missing, truncated or
damaged file is reported as such. This module only moves named arrays and a JSON dict; what they
mean is the buffer's business (checkpoint_layout.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

FORMAT_NAME = "exgrpo-experience"
FORMAT_VERSION = 2  # 2: per-question visit counts (checkpoint_layout.py); version 1 reads with zero counts
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
LARGE_ARRAYS = ("tokens", "log_probs")  # one .npy each: written and read without a zip layer
FILES = ("state.json", "tables.npz", "tokens.npy", "log_probs.npy")
_LARGE_FILES = tuple(f"{name}.npy" for name in LARGE_ARRAYS)  # hashed while read, by ArrayFile.read_into
RESUME_ADVICE = "Resume from another checkpoint, or start with a fresh buffer."
IO_CHUNK_BYTES = 1 << 22  # read and hashed in pieces this big, so the hash reads from the cache
WRITEBACK_BYTES = 1 << 25  # start the disk write of every this many bytes written


class CheckpointError(Exception):
    """An experience checkpoint cannot be written or loaded; the message says which file and why."""


class ArrayChunks(NamedTuple):
    """A 1-D array given as consecutive contiguous pieces; saved without concatenating them."""

    dtype: type
    length: int
    pieces: Iterable[np.ndarray]


class ArrayFile(NamedTuple):
    """A large array of a checkpoint (size checked, contents not yet): `read_into` reads and verifies it."""

    path: Path
    dtype: np.dtype
    shape: tuple
    data_offset: int  # where the values start, after the .npy header
    sha256: str  # of the whole file, from the manifest

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def read_into(self, destinations: Iterable[np.ndarray]) -> None:
        """Fill `destinations` (contiguous arrays of this dtype, `size` values in all) with the
        values in order, hashing as it reads; CheckpointError if the file's SHA-256 differs from
        the manifest (the destinations then hold unverified data: discard them)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            digest.update(f.read(self.data_offset))
            for destination in destinations:
                if destination.dtype != self.dtype or not destination.flags.c_contiguous:
                    raise ValueError(f"read_into: destinations must be contiguous {self.dtype} arrays")
                view = memoryview(destination).cast("B")
                for start in range(0, len(view), IO_CHUNK_BYTES):
                    piece = view[start:start + IO_CHUNK_BYTES]
                    if f.readinto(piece) != len(piece):
                        raise ValueError(f"read_into: destinations hold more than {self.size} values ({self.path})")
                    digest.update(piece)
            if f.tell() != self.data_offset + self.size * self.dtype.itemsize:
                raise ValueError(f"read_into: destinations hold fewer than {self.size} values ({self.path})")
        if digest.hexdigest() != self.sha256:
            raise CheckpointError(f"experience checkpoint file {self.path}: SHA-256 does not match the manifest "
                                  f"(the file, or the manifest, is corrupt). {RESUME_ADVICE}")


def write_checkpoint(directory: str | Path, arrays: dict[str, np.ndarray | ArrayChunks], state: dict) -> None:
    """Write `arrays` (LARGE_ARRAYS as ArrayChunks, the rest as arrays) and the JSON `state`."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(target)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        digests = {f"{name}.npy": _write_file(staging / f"{name}.npy",
                                              lambda f, chunks=arrays[name]: _write_npy_chunks(f, chunks))
                   for name in LARGE_ARRAYS}
        tables = {name: array for name, array in arrays.items() if name not in LARGE_ARRAYS}
        _write_file(staging / "tables.npz", lambda f: np.savez(f, **tables))
        _write_file(staging / "state.json", lambda f: f.write(json.dumps(state, allow_nan=False).encode()))
        files = {name: {"bytes": (staging / name).stat().st_size,
                        "sha256": digests[name] if name in digests else _sha256(staging / name)} for name in FILES}
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "files": files}
        _write_file(staging / MANIFEST, lambda f: f.write(_canonical(manifest)))
        fsync_directory(staging)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_checkpoint(directory: str | Path) -> tuple[dict[str, np.ndarray | ArrayFile], dict]:
    """The arrays and state of a verified checkpoint; LARGE_ARRAYS as `ArrayFile`s, whose size is
    verified here and whose checksum `read_into` verifies as it reads them."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"experience checkpoint {root}: no such directory. {RESUME_ADVICE}")
    manifest = _read_manifest(root / MANIFEST)
    for name in FILES:
        _verify_file(root / name, manifest["files"][name], checksum=name not in _LARGE_FILES)
    state = _parse(root / "state.json", lambda path: json.loads(path.read_bytes()))
    arrays = _parse(root / "tables.npz", _read_npz)
    for name in LARGE_ARRAYS:
        path = root / f"{name}.npy"
        arrays[name] = _parse(path, lambda path: _array_file(path, manifest["files"][path.name]["sha256"]))
    return arrays, state


# ---- writing ---------------------------------------------------------------------------------
def _check_replaceable(target: Path) -> None:
    """Only an empty directory or an earlier checkpoint may be replaced: never someone's data."""
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / MANIFEST).exists())):
        raise CheckpointError(f"experience checkpoint {target}: exists and is not an experience checkpoint "
                              f"(no {MANIFEST}); refusing to replace it. Choose a new or empty directory.")


def _write_npy_chunks(f, chunks: ArrayChunks) -> str:
    """A standard .npy file (header, then the raw values) written one piece at a time; returns its
    SHA-256, computed while writing by a second thread (hashlib and file writes release the GIL),
    so the file is not read back and hashing overlaps the writes.

    Every WRITEBACK_BYTES the written range is handed to the disk at once (posix_fadvise DONTNEED
    starts writeback of dirty pages and drops none of them), so the disk works while the rest is
    hashed and copied, instead of all at the final fsync.
    """
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(np.dtype(chunks.dtype)),
                                                  "fortran_order": False, "shape": (chunks.length,)})
    digest = hashlib.sha256(header.getvalue())
    f.write(header.getvalue())
    written, position, handed_to_disk = 0, len(header.getvalue()), 0
    with ThreadPoolExecutor(max_workers=1) as hasher:  # one worker: the pieces are hashed in order
        for piece in chunks.pieces:
            data = np.ascontiguousarray(piece, dtype=chunks.dtype).data
            hasher.submit(digest.update, data)
            f.write(data)
            written, position = written + piece.shape[0], position + data.nbytes
            if position - handed_to_disk >= WRITEBACK_BYTES and hasattr(os, "posix_fadvise"):
                f.flush()
                os.posix_fadvise(f.fileno(), handed_to_disk, position - handed_to_disk, os.POSIX_FADV_DONTNEED)
                handed_to_disk = position
    if written != chunks.length:
        raise ValueError(f"ArrayChunks: pieces hold {written} values, but {chunks.length} were announced")
    return digest.hexdigest()


def _write_file(path: Path, write):
    """Write, flush and fsync a file; returns what `write` returns."""
    with open(path, "wb") as f:
        result = write(f)
        f.flush()
        os.fsync(f.fileno())
    return result


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(staging: Path, target: Path) -> None:
    """rename() cannot replace a non-empty directory, so an old checkpoint is renamed aside first."""
    aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex}" if target.exists() else None
    if aside is not None:
        os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        if aside is not None:
            os.rename(aside, target)
        raise
    fsync_directory(target.parent)
    if aside is not None:
        shutil.rmtree(aside)


def _canonical(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True).encode() + b"\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


# ---- reading ---------------------------------------------------------------------------------
def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"experience checkpoint {path.parent}: {MANIFEST} is missing, so the checkpoint "
                              f"is incomplete (an interrupted save?) or not an experience checkpoint. {RESUME_ADVICE}")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"experience checkpoint file {path}: not valid JSON ({error}); it is damaged. "
                              f"{RESUME_ADVICE}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise CheckpointError(f"experience checkpoint file {path}: not an {FORMAT_NAME} manifest. {RESUME_ADVICE}")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"experience checkpoint file {path}: format version {manifest.get('format_version')!r}, "
                              f"but this code reads versions {', '.join(map(str, READABLE_VERSIONS))}. Load it with the exgrpo-verl version "
                              f"that wrote it, or start with a fresh buffer.")
    files = manifest.get("files")
    # We write the manifest in canonical form, so any change to its bytes shows up here.
    if raw != _canonical(manifest) or not isinstance(files, dict) or sorted(files) != sorted(FILES) or not all(
            isinstance(entry, dict) and sorted(entry) == ["bytes", "sha256"] for entry in files.values()):
        raise CheckpointError(f"experience checkpoint file {path}: damaged (not the manifest this code writes). "
                              f"{RESUME_ADVICE}")
    return manifest


def _verify_file(path: Path, entry: dict, checksum: bool = True) -> None:
    if not path.is_file():
        raise CheckpointError(f"experience checkpoint file {path}: missing. {RESUME_ADVICE}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CheckpointError(f"experience checkpoint file {path}: {size} bytes, but the manifest says "
                              f"{entry['bytes']} (truncated or overwritten). {RESUME_ADVICE}")
    if checksum and _sha256(path) != entry["sha256"]:
        raise CheckpointError(f"experience checkpoint file {path}: SHA-256 does not match the manifest "
                              f"(the file, or the manifest, is corrupt). {RESUME_ADVICE}")


def _array_file(path: Path, sha256: str) -> ArrayFile:
    """The header of a .npy file: what `ArrayFile.read_into` needs (numpy parses it without eval)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f".npy format version {version} (this code writes 1.0)")
        shape, fortran_order, dtype = read_header[version](f)
        if fortran_order or dtype.hasobject:
            raise ValueError(f"expected a C-order array of plain values, got fortran_order={fortran_order} {dtype}")
        # The hash is checked only while reading the values, so a damaged header must not get that far.
        data_offset, file_bytes = f.tell(), path.stat().st_size
        if data_offset + int(np.prod(shape)) * dtype.itemsize != file_bytes:
            raise ValueError(f"its header announces {shape} {dtype}, which does not match its {file_bytes} bytes")
        return ArrayFile(path, dtype, shape, data_offset, sha256)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as tables:
        return {name: tables[name] for name in tables.files}


def _parse(path: Path, read):
    """Files passed their checksum, so a failure here means a writer bug or a hand edit."""
    try:
        return read(path)
    except Exception as error:  # whatever numpy or json raise, the caller gets a CheckpointError
        raise CheckpointError(f"experience checkpoint file {path}: cannot be parsed ({error}). "
                              f"{RESUME_ADVICE}") from None
