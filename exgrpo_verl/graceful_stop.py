"""A clean stop on SIGTERM (what schedulers send before a kill) for `python -m exgrpo_verl.main`.

Left alone, a SIGTERM to the driver reaches the C++ failure-signal handler that Ray installs
when the driver connects: it prints a C stack and aborts (exit 134). Instead, once Ray is up, the
driver's SIGTERM handler records the request and raises KeyboardInterrupt, the one exception
with which Ray's blocking `ray.get` returns to Python. The entry point then drops the step in
progress (it shuts Ray down: the trainer ends before that step reaches a checkpoint; the
experience log holds whole steps only, each fsynced at the end of its step, and a record torn
by the stop is cut off on resume), releases the folder lock, prints `resume_line` and exits
with 128 + SIGTERM.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from exgrpo_verl.checkpoint_retention import latest_step

EXIT_CODE = 128 + signal.SIGTERM


class SigtermStop:
    """Turns SIGTERM into a stop request; `install()` again whenever something else (Ray) took
    the signal over."""

    def __init__(self):
        self.received = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received:
            return  # a repeated SIGTERM must not interrupt the shutdown the first one started
        self.received = True
        raise KeyboardInterrupt("SIGTERM")


def resume_line(checkpoint_root: str | os.PathLike) -> str:
    """The one line a stopped run ends with: where a resume starts (verl's tracker, read from disk)."""
    root = Path(checkpoint_root).absolute()
    step = latest_step(root)
    where = (f"starts from {root}/global_step_{step} (step {step})" if step is not None
             else f"starts from step 0: no checkpoint was saved in {root} yet")
    return f"exgrpo: stopped by SIGTERM, the step in progress dropped; a resume (trainer.resume_mode=auto) {where}"
