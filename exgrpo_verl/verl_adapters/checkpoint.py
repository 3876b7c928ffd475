"""ExGRPO's state inside verl's checkpoint folder `global_step_N/exgrpo/`.

    experience/            the experience buffer (ExperienceBuffer.save: npy + JSON, versioned,
                           its own manifest of SHA-256s)
    trainer_state.json     the phase (replay started?), fresh rows fetched but not yet trained
                           on, and what the state was saved with (K), for a mismatch check
    data_fingerprint.npz   each training question id with a hash of its prompt and ground truth
    manifest.json          written last: size and SHA-256 of the three files above (for the
                           buffer: of its manifest, which covers the rest)

Written before verl writes `latest_checkpointed_iteration.txt`, so a checkpoint that verl
resumes from always has its ExGRPO state. Safe formats only (no pickle).

Resume trusts only what we wrote: every file is checked against the manifest before it is
parsed; a run whose training data gives any saved question id a different prompt or ground
truth is refused (the buffer's accuracies and retired set would apply to other questions);
and verl's data-loader state `data.pt`, which verl reads with `torch.load(weights_only=False)`
(unpickling runs code), is first read here with `weights_only=True`, which accepts only
tensors and plain containers, so a file carrying code is refused before verl opens it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from exgrpo_verl.experience import CheckpointError, ExperienceBuffer, ExperienceConfig

STATE_DIR = "exgrpo"
STATE_VERSION = 2
STATE_FILES = ("trainer_state.json", "data_fingerprint.npz", "experience/manifest.json")
MANIFEST = "manifest.json"
EXPERIENCE_DIR = "experience"
# A kill can leave behind: the buffer's staging folder `.experience.tmp-*` or an earlier buffer
# moved aside `.experience.old-*` (persistence.write_checkpoint), our files' `.<name>.tmp-*`.
STAGED, SET_ASIDE = ".*.tmp-*", f".{EXPERIENCE_DIR}.old-*"
START_ANEW = "resume from an earlier global_step_N (trainer.resume_mode=resume_path) or start anew"


@dataclass
class TrainerState:
    replay_started: bool = False
    fresh_carry: list[int] = field(default_factory=list)  # question ids fetched, not yet trained on
    group_size: int = 0


@dataclass(frozen=True)
class DataFingerprint:
    """Training question ids (sorted) and a 64-bit hash of each one's prompt and ground truth."""

    ids: np.ndarray  # int64
    digests: np.ndarray  # uint64

    def differences(self, saved: "DataFingerprint") -> tuple[list[int], list[int]]:
        """(ids of `saved` missing here, ids whose prompt or ground truth differ)."""
        if len(self.ids) == 0:
            return saved.ids.tolist(), []
        position = np.searchsorted(self.ids, saved.ids).clip(max=len(self.ids) - 1)
        present = self.ids[position] == saved.ids
        changed = present & (self.digests[position] != saved.digests)
        return saved.ids[~present].tolist(), saved.ids[changed].tolist()


def data_fingerprint(ids, prompts, ground_truths) -> DataFingerprint:
    """The fingerprint of a training set given column-wise (question id, prompt messages, ground truth)."""
    digests = [_digest64(json.dumps([_plain(prompt), _plain(truth)], sort_keys=True, default=str))
               for prompt, truth in zip(prompts, ground_truths)]
    order = np.argsort(np.asarray(ids, dtype=np.int64), kind="stable")
    return DataFingerprint(np.asarray(ids, dtype=np.int64)[order], np.asarray(digests, dtype=np.uint64)[order])


def _digest64(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _plain(value):
    """Nested lists/dicts of plain values (parquet gives numpy arrays for lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def save_state(folder: str | os.PathLike, buffer: ExperienceBuffer, state: TrainerState,
               fingerprint: DataFingerprint) -> Path:
    folder = Path(folder) / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)
    buffer.save(folder / EXPERIENCE_DIR)
    _write_atomically(folder / "trainer_state.json", json.dumps({"version": STATE_VERSION, **asdict(state)}).encode())
    _write_atomically(folder / "data_fingerprint.npz", _npz_bytes(ids=fingerprint.ids, digests=fingerprint.digests))
    manifest = {"version": STATE_VERSION, "files": {name: _entry(folder / name) for name in STATE_FILES}}
    _write_atomically(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return folder


def load_state(folder: str | os.PathLike, experience_config: ExperienceConfig,
               fingerprint: DataFingerprint) -> tuple[ExperienceBuffer, TrainerState]:
    """Read what `save_state` wrote; every problem raises CheckpointError naming the file and the fix."""
    folder = Path(folder) / STATE_DIR
    remove_leftovers(folder)
    _verify_manifest(folder)
    state_file = folder / "trainer_state.json"
    raw = json.loads(state_file.read_text())
    try:
        state = TrainerState(
            replay_started=bool(raw["replay_started"]),
            fresh_carry=[int(p) for p in raw["fresh_carry"]],
            group_size=int(raw["group_size"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{state_file}: malformed field ({error}); the checkpoint is corrupt: {START_ANEW}") from error
    if state.group_size != experience_config.group_size:
        raise CheckpointError(
            f"{state_file}: saved with K={state.group_size} rollouts per question, but this run has "
            f"actor_rollout_ref.rollout.n={experience_config.group_size}; resume with the same n"
        )
    with np.load(folder / "data_fingerprint.npz", allow_pickle=False) as saved:
        missing, changed = fingerprint.differences(DataFingerprint(saved["ids"], saved["digests"]))
    if missing or changed:
        raise CheckpointError(
            f"{folder}: the checkpoint was made on other training data: question ids {changed[:5]} have another "
            f"prompt or ground truth in data.train_files, ids {missing[:5]} are missing from it ({len(changed)} "
            f"changed, {len(missing)} missing). Resume with the data.train_files it was made with, or start anew "
            "(trainer.resume_mode=disable, or a new trainer.default_local_dir)"
        )
    buffer = ExperienceBuffer.load(folder / EXPERIENCE_DIR, experience_config)
    return buffer, state


def _verify_manifest(folder: Path) -> None:
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise CheckpointError(
            f"{manifest_file} is missing: the checkpoint was not written by this ExGRPO version, or its save was "
            f"interrupted; {START_ANEW}"
        )
    try:
        manifest = json.loads(manifest_file.read_text())
        version, files = manifest["version"], manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{manifest_file} is unreadable ({error}); the checkpoint is corrupt: {START_ANEW}") from None
    if version != STATE_VERSION:
        raise CheckpointError(f"{manifest_file}: format version {version!r}, this exgrpo-verl reads {STATE_VERSION}: "
                              "resume with the exgrpo-verl version that wrote it")
    for name in STATE_FILES:
        path = folder / name
        if not path.is_file() or not isinstance(files.get(name), dict) or _entry(path) != files[name]:
            raise CheckpointError(f"{path}: missing, or not the file the manifest {manifest_file} records (edited, "
                                  f"truncated or replaced); {START_ANEW}")


def state_digest(folder: str | os.PathLike) -> str | None:
    """SHA-256 of a checkpoint's state manifest: it names every state file by SHA-256, so equal
    digests mean equal state (None when the folder has no ExGRPO state)."""
    manifest = Path(folder) / STATE_DIR / MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def _entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check_dataloader_state(path: str | os.PathLike) -> None:
    """Refuse a `data.pt` holding anything but tensors and plain containers, before verl unpickles it."""
    import torch

    if not os.path.exists(path):
        return
    try:
        torch.load(path, weights_only=True)
    except Exception as error:  # weights_only's refusal (an UnpicklingError) or a damaged file
        raise CheckpointError(
            f"{path}: verl's data-loader state holds something other than tensors and plain values (or is damaged), "
            f"so it is not loaded: unpickling it could run code ({str(error).splitlines()[0][:160]}). "
            f"Delete the file to restart the data order, or {START_ANEW}"
        ) from None


def resume_folder(trainer_config) -> str | None:
    """The global_step_N folder verl's `_load_checkpoint` will resume from, found the way verl finds it."""
    mode = trainer_config.resume_mode
    if mode == "resume_path":
        return os.path.abspath(str(trainer_config.resume_from_path))
    if mode != "auto":
        return None
    root = os.path.abspath(str(trainer_config.default_local_dir))
    tracker = os.path.join(root, "latest_checkpointed_iteration.txt")
    if not os.path.exists(tracker):
        return None
    folder = os.path.join(root, f"global_step_{int(Path(tracker).read_text().strip())}")
    return folder if os.path.exists(folder) else None


def tidy(checkpoint_root: str | os.PathLike) -> list[Path]:
    """After a save: delete `global_step_N/exgrpo/` wherever verl has deleted `global_step_N/actor/`
    (verl's `max_actor_ckpt_to_keep` removes old actor folders only; a buffer can hold GBs), and
    what killed saves left in every step's state folder."""
    removed = []
    for step_folder in sorted(Path(checkpoint_root).glob("global_step_*")):
        state = step_folder / STATE_DIR
        if state.is_dir() and not (step_folder / "actor").exists():
            shutil.rmtree(state)
            removed.append(state)
        elif state.is_dir():
            removed += remove_leftovers(state)
    return removed


def remove_leftovers(state_folder: Path) -> list[Path]:
    """Delete the temporary files and folders of interrupted saves in one state folder. A save
    killed between its two renames leaves no `experience/` but the previous one set aside: that
    one is put back first."""
    experience = state_folder / EXPERIENCE_DIR
    set_aside = sorted(state_folder.glob(SET_ASIDE))
    if not experience.exists() and set_aside:
        os.rename(set_aside.pop(), experience)
    removed = set_aside + sorted(state_folder.glob(STAGED))
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def _npz_bytes(**arrays) -> bytes:
    import io

    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _write_atomically(path: Path, data: bytes) -> None:
    """Write, fsync, rename into place: the file is either the old one or the new one. Plain
    open() so the file gets the same permissions (umask) as every other state file."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fingerprint_of_rows(ids: list[int], rows, prompt_key: str) -> DataFingerprint:
    """The fingerprint of a training table (pandas or HF datasets: column access), rows in `ids` order."""
    truths = [(reward_model or {}).get("ground_truth") for reward_model in rows["reward_model"]]
    return data_fingerprint(ids, rows[prompt_key], truths)
