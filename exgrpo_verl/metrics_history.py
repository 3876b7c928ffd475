"""A run's metrics history that survives resume.

verl's file logger (`trainer.logger` contains `file`) opens its JSONL file with mode `wb`, so
a resumed run would erase every step before the resume. Before a run that resumes starts,
`python -m exgrpo_verl.main` moves the file aside as `<name>.part<N>.jsonl` (N = 1, 2, ...);
`read_history` reads the parts and the current file as one run, the latest row winning for a
step logged twice (the steps between the last checkpoint and a crash are run again). A run
that starts from scratch removes old parts: its history starts empty, as verl's file does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


def file_logger_path(config) -> Path | None:
    """Where verl's file logger writes for this trainer config (None when it is not on)."""
    loggers = config.trainer.get("logger") or []
    if "file" not in ([loggers] if isinstance(loggers, str) else list(loggers)):
        return None
    if os.environ.get("VERL_FILE_LOGGER_PATH"):
        return Path(os.environ["VERL_FILE_LOGGER_PATH"])
    root = Path(os.path.expanduser(os.environ.get("VERL_FILE_LOGGER_ROOT", ".")))
    return root / str(config.trainer.project_name) / f"{config.trainer.experiment_name}.jsonl"


def parts(path: Path) -> list[Path]:
    """Earlier segments of `path`, oldest first."""
    pattern = re.compile(rf"^{re.escape(path.stem)}\.part(\d+){re.escape(path.suffix)}$")
    found = [(int(m.group(1)), p) for p in path.parent.glob(f"{path.stem}.part*{path.suffix}") if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def prepare(path: Path, resuming: bool) -> None:
    """Before verl's logger truncates `path`: keep it as the next part (resume), or drop old parts (fresh run)."""
    if not resuming:
        for old in parts(path):
            old.unlink()
        return
    if path.exists() and path.stat().st_size > 0:
        previous = parts(path)
        number = int(previous[-1].stem.rsplit(".part", 1)[1]) + 1 if previous else 1
        os.replace(path, path.with_name(f"{path.stem}.part{number}{path.suffix}"))


def read_history(path: str | os.PathLike) -> list[dict]:
    """Every step's metrics of the run, in step order: {"step": n, **metrics}."""
    path = Path(path)
    by_step: dict[int, dict] = {}
    for segment in [*parts(path), path]:
        if not segment.exists():
            continue
        with open(segment) as f:
            for line in f:
                if line.endswith("\n"):  # a line being written (or torn by a kill) is skipped
                    row = json.loads(line)
                    by_step[row["step"]] = {"step": row["step"], **row["data"]}
    return [by_step[step] for step in sorted(by_step)]
