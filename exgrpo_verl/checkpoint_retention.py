"""Checkpoint retention that survives restarts: prune whole `global_step_N` folders from disk.

verl 0.9.1 remembers the checkpoints it may delete in memory (`previous_saved_paths`, empty at
process start), so a resumed run never removes what was written before it, and only removes
`global_step_N/actor/` of its own saves. After each complete save (verl's tracker
`latest_checkpointed_iteration.txt` written) the trainer calls `prune`, which decides from what
is on disk:

    kept = the `keep` highest steps N <= latest  (latest = the step the tracker names)
    removed = every other `global_step_N` with N < latest

The latest is always kept: it is what a resume loads. Folders of steps above the latest (from
a history abandoned by `resume_mode=resume_path`) are not this run's past and are left alone,
as is anything not named `global_step_<digits>` (the best model, logs, the lock, the tracker).

Atomic with respect to a kill: a folder is first renamed to `.trash-global_step_N-<random>`
(one rename: the folder is either whole under its name or gone from the names a resume reads),
then deleted. Trash a kill left behind is deleted by the next prune and at start.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"
STEP_FOLDER = re.compile(r"^global_step_(\d+)$")
TRASH_PREFIX = ".trash-"


def steps_to_remove(steps: list[int], latest: int, keep: int) -> list[int]:
    """The steps pruned when `latest` is the newest complete checkpoint and `keep` are kept:
    every step below latest that is not among the `keep` highest steps <= latest."""
    kept = sorted((s for s in steps if s <= latest), reverse=True)[:max(keep, 1)]
    return sorted(s for s in steps if s < latest and s not in kept)


def step_folders(root: Path) -> dict[int, Path]:
    """`global_step_N` folders under `root` by N (nothing else: trash and other folders are not steps)."""
    found = {}
    for path in root.iterdir() if root.is_dir() else ():
        match = STEP_FOLDER.match(path.name)
        if match and path.is_dir():
            found[int(match.group(1))] = path
    return found


def latest_step(root: Path) -> int | None:
    """The step verl's tracker names, when its folder exists."""
    tracker = root / TRACKER
    try:
        step = int(tracker.read_text().strip())
    except (OSError, ValueError):
        return None
    return step if (root / f"global_step_{step}").is_dir() else None


def prune(root: str | os.PathLike, keep: int | None, log=print) -> list[int]:
    """Delete whole checkpoints beyond the newest `keep` (None or 0: keep all); return their steps."""
    root = Path(root)
    remove_trash(root)
    latest = latest_step(root)
    if not keep or latest is None:
        return []
    folders = step_folders(root)
    removed = steps_to_remove(sorted(folders), latest, keep)
    for step in removed:
        trash = root / f"{TRASH_PREFIX}{folders[step].name}-{uuid.uuid4().hex[:8]}"
        os.rename(folders[step], trash)  # gone from the step names first: a kill leaves trash, not half a step
        shutil.rmtree(trash)
    if removed:
        log(f"exgrpo: kept the last {keep} checkpoints (latest global_step_{latest}); removed global_step_"
            + ", global_step_".join(map(str, removed)))
    return removed


def remove_trash(root: Path) -> list[Path]:
    """Delete what a kill during an earlier prune left (renamed folders, never a step folder)."""
    trash = sorted(root.glob(f"{TRASH_PREFIX}global_step_*")) if root.is_dir() else []
    for path in trash:
        shutil.rmtree(path, ignore_errors=True)
    return trash


def keep_count(trainer_config) -> int | None:
    """How many checkpoints verl is told to keep: `max_actor_ckpt_to_keep` (None = all), 1 under
    the deprecated `remove_previous_ckpt_in_save`, as verl's `_save_checkpoint` reads them."""
    if trainer_config.get("remove_previous_ckpt_in_save", False):
        return 1
    return trainer_config.get("max_actor_ckpt_to_keep", None)
