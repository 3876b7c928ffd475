"""One run owns its checkpoint folder: an exclusive lock on `trainer.default_local_dir`.

Two runs writing one folder delete each other's saves and interleave one metrics file, so
`python -m exgrpo_verl.main` takes this lock before anything else touches the folder and keeps
it until the process ends. The lock is an OS file lock (`flock`) on `<folder>/.exgrpo-run.lock`:
the kernel (or the NFS server, when the holder's lease runs out) drops it when the holder dies,
so a killed run never leaves the folder locked. The file records who holds it (pid, host,
start time) for the refusal message; a clean release empties it, so a record found by a run
that got the lock is the trace of a holder that died holding it, and is reported as taken over.

The file is never deleted: a process that opened it just before a deletion could lock the
unlinked file while a third process locks a new one, and both would own the folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = ".exgrpo-run.lock"
RECORD_WAIT_S = 2.0  # a holder writes its record right after locking; wait this long for it


class FolderInUse(RuntimeError):
    """Another live run holds the folder's lock."""


@dataclass(frozen=True)
class Holder:
    pid: int | None
    host: str | None
    started: str | None

    def describe(self) -> str:
        if self.pid is None:
            return "a run that has not yet recorded its pid and host"
        return f"pid {self.pid} on host {self.host} (started {self.started})"


class RunLock:
    """The held lock of one folder; `release()` (or the process ending) frees it."""

    def __init__(self, folder: Path, fd: int | None):
        self.folder, self._fd = folder, fd

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def release(self) -> None:
        """Empty the record (a clean end: the next run reports no takeover), then unlock."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def acquire(folder: str | os.PathLike, key: str = "trainer.default_local_dir", log=print) -> RunLock:
    """Lock `folder` for this process, or raise FolderInUse naming the holder's pid and host.

    A lock left by a holder that died is free at the OS level; its record is reported with
    `log` and replaced. On a file system without file locks the run goes on unlocked, saying so."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _wait_for_record(fd)
        os.close(fd)
        raise FolderInUse(
            f"{key}={folder} is in use by another run: {holder.describe()} holds its lock {path}. "
            f"Wait for that run to end or stop it, or give this run another {key}"
        ) from None
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        os.close(fd)
        log(f"exgrpo: {path}: this file system has no file locks ({error.strerror}); {key} is not locked, "
            "so make sure no other run uses it")
        return RunLock(folder, None)
    previous = _read_record(fd)
    if previous.pid is not None:
        log(f"exgrpo: {key}={folder} was locked by {previous.describe()}, which ended without releasing it "
            "(killed?); taking it over")
    _write_record(fd)
    return RunLock(folder, fd)


def _write_record(fd: int) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)


def _read_record(fd: int) -> Holder:
    size = os.fstat(fd).st_size
    try:
        record = json.loads(os.pread(fd, size, 0)) if size else {}
        return Holder(int(record["pid"]), str(record["host"]), str(record.get("started")))
    except (ValueError, KeyError, TypeError):  # empty (released cleanly), or written by something else
        return Holder(None, None, None)


def _wait_for_record(fd: int) -> Holder:
    deadline = time.monotonic() + RECORD_WAIT_S
    while (holder := _read_record(fd)).pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder
