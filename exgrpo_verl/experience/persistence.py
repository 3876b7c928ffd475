"""Checkpoint files of the experience buffer: safe formats, checksums, atomic replacement.

A checkpoint is a directory (no pickle anywhere; numpy files are read with allow_pickle=False):

    manifest.json   format name and version; size and SHA-256 of every other file
    state.json      config, step, counters, RNG state, payloads
    tables.npz      per-trajectory and per-question columns, pool order, retired ids
    tokens.npy      int32 token ids of all stored responses, concatenated in collection order
    log_probs.npy   float32 behaviour log-probs, aligned with tokens.npy

The two large arrays are written piece by piece (`ArrayChunks`) and read back as read-only
memory maps, so neither saving nor loading holds a second in-memory copy of them.

Writing goes into a temporary sibling directory; every file is fsynced, the manifest is written
last, and the directory is renamed into place (a previous checkpoint there is renamed aside first
and deleted after). Reading checks the manifest, then every file's size and SHA-256, before it
parses anything, so a missing, truncated or damaged file is reported as such. This module only
moves named arrays and a JSON dict; what they mean is the buffer's business.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

FORMAT_NAME = "exgrpo-experience"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LARGE_ARRAYS = ("tokens", "log_probs")  # one .npy each: written and read without a zip layer
FILES = ("state.json", "tables.npz", "tokens.npy", "log_probs.npy")
RESUME_ADVICE = "Resume from another checkpoint, or start with a fresh buffer."


class CheckpointError(Exception):
    """An experience checkpoint cannot be written or loaded; the message says which file and why."""


class ArrayChunks(NamedTuple):
    """A 1-D array given as consecutive contiguous pieces; saved without concatenating them."""

    dtype: type
    length: int
    pieces: Iterable[np.ndarray]


def write_checkpoint(directory: str | Path, arrays: dict[str, np.ndarray | ArrayChunks], state: dict) -> None:
    """Write `arrays` (LARGE_ARRAYS as ArrayChunks, the rest as arrays) and the JSON `state`."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_replaceable(target)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        for name in LARGE_ARRAYS:
            _write_file(staging / f"{name}.npy", lambda f, chunks=arrays[name]: _write_npy_chunks(f, chunks))
        tables = {name: array for name, array in arrays.items() if name not in LARGE_ARRAYS}
        _write_file(staging / "tables.npz", lambda f: np.savez(f, **tables))
        _write_file(staging / "state.json", lambda f: f.write(json.dumps(state, allow_nan=False).encode()))
        files = {name: {"bytes": (staging / name).stat().st_size, "sha256": _sha256(staging / name)} for name in FILES}
        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "files": files}
        _write_file(staging / MANIFEST, lambda f: f.write(_canonical(manifest)))
        _fsync_directory(staging)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_checkpoint(directory: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays (LARGE_ARRAYS as read-only memory maps) and state of a verified checkpoint."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"experience checkpoint {root}: no such directory. {RESUME_ADVICE}")
    manifest = _read_manifest(root / MANIFEST)
    for name in FILES:
        _verify_file(root / name, manifest["files"][name])
    state = _parse(root / "state.json", lambda path: json.loads(path.read_bytes()))
    arrays = _parse(root / "tables.npz", _read_npz)
    for name in LARGE_ARRAYS:
        arrays[name] = _parse(root / f"{name}.npy", lambda path: np.load(path, mmap_mode="r", allow_pickle=False))
    return arrays, state


# ---- writing ---------------------------------------------------------------------------------
def _check_replaceable(target: Path) -> None:
    """Only an empty directory or an earlier checkpoint may be replaced: never someone's data."""
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or (target / MANIFEST).exists())):
        raise CheckpointError(f"experience checkpoint {target}: exists and is not an experience checkpoint "
                              f"(no {MANIFEST}); refusing to replace it. Choose a new or empty directory.")


def _write_npy_chunks(f, chunks: ArrayChunks) -> None:
    """A standard .npy file (header, then the raw values) written one piece at a time."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(chunks.dtype)), "fortran_order": False,
              "shape": (chunks.length,)}
    np.lib.format.write_array_header_1_0(f, header)
    written = 0
    for piece in chunks.pieces:
        f.write(np.ascontiguousarray(piece, dtype=chunks.dtype).data)
        written += piece.shape[0]
    if written != chunks.length:
        raise ValueError(f"ArrayChunks: pieces hold {written} values, but {chunks.length} were announced")


def _write_file(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_directory(path: Path) -> None:
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
    _fsync_directory(target.parent)
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
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"experience checkpoint file {path}: format version {manifest.get('format_version')!r}, "
                              f"but this code reads version {FORMAT_VERSION}. Load it with the exgrpo-verl version "
                              f"that wrote it, or start with a fresh buffer.")
    files = manifest.get("files")
    # We write the manifest in canonical form, so any change to its bytes shows up here.
    if raw != _canonical(manifest) or not isinstance(files, dict) or sorted(files) != sorted(FILES) or not all(
            isinstance(entry, dict) and sorted(entry) == ["bytes", "sha256"] for entry in files.values()):
        raise CheckpointError(f"experience checkpoint file {path}: damaged (not the manifest this code writes). "
                              f"{RESUME_ADVICE}")
    return manifest


def _verify_file(path: Path, entry: dict) -> None:
    if not path.is_file():
        raise CheckpointError(f"experience checkpoint file {path}: missing. {RESUME_ADVICE}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise CheckpointError(f"experience checkpoint file {path}: {size} bytes, but the manifest says "
                              f"{entry['bytes']} (truncated or overwritten). {RESUME_ADVICE}")
    if _sha256(path) != entry["sha256"]:
        raise CheckpointError(f"experience checkpoint file {path}: SHA-256 does not match the manifest "
                              f"(the file, or the manifest, is corrupt). {RESUME_ADVICE}")


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
