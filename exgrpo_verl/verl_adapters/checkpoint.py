"""ExGRPO's state inside verl's checkpoint folder `global_step_N/exgrpo/`.

    experience/          the experience buffer (ExperienceBuffer.save: npy + JSON, versioned)
    trainer_state.json   the phase (replay started?), fresh rows fetched but not yet trained
                         on, and what the state was saved with (K), for a mismatch check

Written before verl writes `latest_checkpointed_iteration.txt`, so a checkpoint that verl
resumes from always has its ExGRPO state. Safe formats only (no pickle).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from exgrpo_verl.experience import CheckpointError, ExperienceBuffer, ExperienceConfig

STATE_DIR = "exgrpo"
STATE_VERSION = 1


@dataclass
class TrainerState:
    replay_started: bool = False
    fresh_carry: list[int] = field(default_factory=list)  # question ids fetched, not yet trained on
    group_size: int = 0


def save_state(folder: str | os.PathLike, buffer: ExperienceBuffer, state: TrainerState) -> Path:
    folder = Path(folder) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    buffer.save(folder / "experience")
    _write_json_atomically(folder / "trainer_state.json", {"version": STATE_VERSION, **asdict(state)})
    return folder


def load_state(folder: str | os.PathLike, experience_config: ExperienceConfig) -> tuple[ExperienceBuffer, TrainerState]:
    """Read what `save_state` wrote; every problem raises CheckpointError naming the file and the fix."""
    folder = Path(folder) / STATE_DIR
    state_file = folder / "trainer_state.json"
    if not state_file.exists():
        raise CheckpointError(
            f"{state_file} is missing: the checkpoint was not written by an ExGRPO run (or is incomplete). "
            "Resume from an ExGRPO checkpoint, or start a new run (trainer.resume_mode=disable)."
        )
    try:
        raw = json.loads(state_file.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"{state_file} is unreadable ({error}); the checkpoint is corrupt: resume from an earlier "
            "global_step_N (trainer.resume_mode=resume_path) or start anew"
        ) from error
    if raw.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"{state_file}: format version {raw.get('version')!r}, this exgrpo-verl reads {STATE_VERSION}: "
            "resume with the exgrpo-verl version that wrote it"
        )
    try:
        state = TrainerState(
            replay_started=bool(raw["replay_started"]),
            fresh_carry=[int(p) for p in raw["fresh_carry"]],
            group_size=int(raw["group_size"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"{state_file}: malformed field ({error}); the checkpoint is corrupt: resume from an earlier "
            "global_step_N (trainer.resume_mode=resume_path) or start anew"
        ) from error
    if state.group_size != experience_config.group_size:
        raise CheckpointError(
            f"{state_file}: saved with K={state.group_size} rollouts per question, but this run has "
            f"actor_rollout_ref.rollout.n={experience_config.group_size}; resume with the same n"
        )
    buffer = ExperienceBuffer.load(folder / "experience", experience_config)
    return buffer, state


def remove_orphaned_states(checkpoint_root: str | os.PathLike) -> list[Path]:
    """Delete `global_step_N/exgrpo/` wherever verl has deleted `global_step_N/actor/`.

    verl's `max_actor_ckpt_to_keep` removes old actor folders only; a buffer can hold GBs, so
    its state goes with the checkpoint it belongs to."""
    removed = []
    for step_folder in sorted(Path(checkpoint_root).glob("global_step_*")):
        state = step_folder / STATE_DIR
        if state.is_dir() and not (step_folder / "actor").exists():
            shutil.rmtree(state)
            removed.append(state)
    return removed


def _write_json_atomically(path: Path, payload: dict) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        json.dump(payload, tmp)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)
