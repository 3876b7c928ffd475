"""A child process that answers JSON lines and is killed when a reply misses its deadline.

Two things need code run where it can be stopped: math-verify, whose SIGALRM timeouts work
only on a process's main thread (`evaluation.math_verify_worker`), and users' reward functions,
which may spin in C code that no thread-based time limit can interrupt (`reward_sandbox`). Both
run their function on the main thread of a child started with `python -m <module>` (so it never
re-imports the caller's script, and nothing is pickled), one JSON request per line on its stdin,
one JSON reply per line on its stdout. A reply later than its deadline kills the child; the next
request starts a new one. The deadline starts when the request is written, so the time a caller
waits for its turn is never counted against it. POSIX only; framework-free.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

STARTUP_TIMEOUT_S = 120.0  # interpreter start and the child's imports (math-verify takes a second or two)
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class ChildStartError(RuntimeError):
    """The child could not set itself up (its first line was an error); the message is the child's."""


def to_json(value) -> str:
    """One JSON line; numpy scalars and arrays (parquet's extra_info) become numbers and lists,
    anything else unknown its str()."""
    return json.dumps(value, default=lambda item: item.tolist() if hasattr(item, "tolist") else str(item))


class ChildProcess:
    """`python -m module *args`, started on first use, replaced after a missed deadline or an exit.

    Not thread-safe: one request at a time (callers hold a lock or own one child per thread)."""

    def __init__(self, module: str, args: tuple[str, ...] = (), startup_timeout_s: float = STARTUP_TIMEOUT_S):
        self.module, self.args, self.startup_timeout_s = module, tuple(args), startup_timeout_s
        self._process: subprocess.Popen | None = None
        self._owner_pid = 0

    def request(self, message: dict, deadline_s: float) -> dict:
        """The child's reply to `message`; TimeoutError (the child is killed) when none comes within
        deadline_s of sending it, EOFError when the child exits, ChildStartError when it cannot start."""
        process = self._running_process()
        try:
            process.stdin.write(to_json(message) + "\n")
            process.stdin.flush()
            return json.loads(self._read_line(process, deadline_s))
        except BaseException:
            self.stop()
            raise

    def _running_process(self) -> subprocess.Popen:
        # After a fork the handle belongs to the parent process: start our own child.
        if self._process is not None and self._owner_pid == os.getpid() and self._process.poll() is None:
            return self._process
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self._process = subprocess.Popen([sys.executable, "-m", self.module, *self.args], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, env=env)
        self._owner_pid = os.getpid()
        try:
            ready = json.loads(self._read_line(self._process, self.startup_timeout_s))
        except BaseException:
            self.stop()
            raise
        if "error" in ready:
            self.stop()
            raise ChildStartError(ready["error"])
        return self._process

    @staticmethod
    def _read_line(process: subprocess.Popen, deadline_s: float) -> str:
        ready, _, _ = select.select([process.stdout], [], [], deadline_s)
        if not ready:
            raise TimeoutError(f"no reply within {deadline_s} s")
        line = process.stdout.readline()
        if not line:
            raise EOFError(f"the child process exited with code {process.wait()}")
        return line

    def stop(self) -> None:
        """Kill the child (if this process started it)."""
        if self._process is not None and self._owner_pid == os.getpid():
            self._process.kill()
            self._process.wait()
        self._process = None


def serve(setup: Callable[[], Callable[[dict], dict]], die_with_parent: bool = False) -> None:
    """The child's side: `setup()` returns the request handler (its errors are sent as the first
    line, {"error": ...}); then one reply per request line until stdin closes.

    die_with_parent: ask Linux to SIGKILL this child when the thread that started it ends, so a
    child spinning in C code never outlives a killed parent (no Python-level watchdog could run)."""
    if die_with_parent and sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    protocol = sys.stdout
    sys.stdout = sys.stderr  # stray prints from libraries and user code must not corrupt the protocol
    try:
        handle = setup()
    except Exception as error:
        protocol.write(to_json({"error": f"{type(error).__name__}: {error}"}) + "\n")
        protocol.flush()
        return
    protocol.write('{"ready": true}\n')
    protocol.flush()
    for line in sys.stdin:
        protocol.write(to_json(handle(json.loads(line))) + "\n")
        protocol.flush()
