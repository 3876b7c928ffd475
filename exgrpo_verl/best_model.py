"""The best-by-validation model, kept beside verl's checkpoints as the authors' release kept it.

    <trainer.default_local_dir>/best                 a symlink to the folder below (swapped atomically)
    <trainer.default_local_dir>/.best-step<N>-<hex>/
        huggingface/    the actor as a Hugging Face model (what scripts/evaluate.py loads)
        best.json       {"step": N, "score": s, "scores": {data source: score}, "rule": ...}

The score of a validation is the mean over data sources of verl's core validation metric
(`val-core/<source>/<reward or acc>/mean@<n>`), Minerva excluded, as the release's
`avg_score_stable` (mean of its per-source test scores without Minerva). A model replaces the
kept one only when its score is strictly higher, and the kept one is read from disk, so a
resumed run never replaces a better earlier best with a worse one.

The folders live outside every `global_step_*` folder, so no checkpoint retention (verl's or a
pruning of step folders) touches them. A new best is written to a fresh `.best-step<N>-<hex>`
folder (the model first, best.json last), then `best` is re-pointed in one rename, then the
previous folder is removed: a kill at any point leaves `best` pointing at a complete model.
Folders left by a kill are removed by the next `publish`.

No verl import here: the trainer saves the model (through the plugin's engine, model only)
and calls these functions.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path

BEST_LINK = "best"
RECORD = "best.json"
HF_FOLDER = "huggingface"
FOLDER_PREFIX = ".best-step"
EXCLUDED_SOURCE = "minerva"  # the release's avg_score_stable leaves Minerva out
RULE = "mean over data sources of val-core/<source>/<reward|acc>/mean@<n>, minerva excluded"


def validation_scores(val_metrics: dict) -> dict[str, float]:
    """Each data source's core validation score: verl's `val-core/<source>/<var>/mean@<n>`
    (the mean reward, or accuracy, over its samples), Minerva excluded."""
    scores = {}
    for key, value in val_metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "val-core" and parts[3].startswith("mean@"):
            if EXCLUDED_SOURCE not in parts[1].lower() and math.isfinite(float(value)):
                scores[parts[1]] = float(value)
    return scores


def read_best(checkpoint_dir: str | os.PathLike) -> dict | None:
    """The kept best's record, or None when there is none yet."""
    record = Path(checkpoint_dir) / BEST_LINK / RECORD
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{record}: unreadable best-model record ({error}); move {Path(checkpoint_dir) / BEST_LINK} "
                         "aside to start a new best") from error


def improves(scores: dict[str, float], kept: dict | None) -> bool:
    """Whether validation `scores` beat the kept best (strictly), by their mean."""
    if not scores:
        return False
    return kept is None or sum(scores.values()) / len(scores) > kept["score"]


def new_folder(checkpoint_dir: str | os.PathLike, step: int) -> Path:
    """A fresh folder for a candidate best (the model is saved into it, then `publish`)."""
    return Path(checkpoint_dir) / f"{FOLDER_PREFIX}{step}-{uuid.uuid4().hex[:8]}"


def is_best_folder(path: str | os.PathLike) -> bool:
    """Whether a save goes to a best-model folder (the engine then saves the model only)."""
    return Path(path).name.startswith(FOLDER_PREFIX)


def publish(checkpoint_dir: str | os.PathLike, folder: Path, step: int, scores: dict[str, float]) -> dict:
    """Make `folder` (holding huggingface/) the kept best: write its record, re-point `best`
    in one rename, remove every other best folder. Returns the record."""
    checkpoint_dir = Path(checkpoint_dir)
    if not (folder / HF_FOLDER / "config.json").is_file():
        raise RuntimeError(f"{folder / HF_FOLDER}: the model was not saved; the best model is left as it was")
    record = {"step": int(step), "score": sum(scores.values()) / len(scores), "scores": scores, "rule": RULE}
    _write_atomically(folder / RECORD, json.dumps(record, indent=2, sort_keys=True))
    link = checkpoint_dir / BEST_LINK
    staged_link = checkpoint_dir / f".{BEST_LINK}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(folder.name, staged_link)
    if link.exists() and not link.is_symlink():
        raise RuntimeError(f"{link} is not the best-model link this run keeps; move it aside")
    os.replace(staged_link, link)  # atomic: `best` names the old complete folder or the new one
    _fsync_dir(checkpoint_dir)
    for stale in checkpoint_dir.iterdir():
        if stale.name != folder.name and (stale.name.startswith(FOLDER_PREFIX) or stale.name.startswith(f".{BEST_LINK}.link-")):
            if stale.is_symlink() or stale.is_file():
                stale.unlink()
            else:
                shutil.rmtree(stale, ignore_errors=True)
    return record


def resolve_model(path: str) -> str:
    """A model to evaluate: a run's checkpoint folder holding `best/huggingface` gives that
    (the best-by-validation model); anything else is returned as is."""
    best = Path(path) / BEST_LINK / HF_FOLDER
    return str(best) if (best / "config.json").is_file() else path


def _write_atomically(path: Path, text: str) -> None:
    staged = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(staged, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(staged, path)


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
