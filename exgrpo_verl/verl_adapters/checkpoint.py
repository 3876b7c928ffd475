"""ExGRPO's state inside verl's checkpoint folder `global_step_N/exgrpo/`.

    experience/            the experience buffer (ExperienceBuffer.save: npy + JSON, versioned,
                           its own manifest of SHA-256s)
    trainer_state.json     the phase (replay started?), fresh rows fetched but not yet trained
                           on, and the settings the run had (RESUME_RULES say which may change)
    data_fingerprint.npz   each training question id with a hash of its prompt and ground truth
    manifest.json          written last: the id of the run that saved it, and size and SHA-256
                           of the three files above (for the buffer: of its manifest, which
                           covers the rest)

Written before verl writes `latest_checkpointed_iteration.txt`, so a checkpoint that verl
resumes from always has its ExGRPO state. Safe formats only (no pickle).

Resume trusts only what we wrote: every file is checked against the manifest before it is
parsed; a run whose training data gives any saved question id a different prompt or ground
truth is refused (the buffer's accuracies and retired set would apply to other questions);
a setting changed since the save is accepted (and said) or refused by RESUME_RULES; and every
file verl unpickles on resume (`torch.load(weights_only=False)`: unpickling runs code), its
data-loader state and every rank's model, optimizer and extra-state shards, is first read here
with `weights_only=True` and its tensors memory-mapped, not read (`check_verl_files`), so a
file carrying code is refused before verl opens it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exgrpo_verl.config import ExGRPOConfig
from exgrpo_verl.experience import CheckpointError, ExperienceBuffer, ExperienceConfig
from exgrpo_verl.experience.journal import new_run_id

STATE_DIR = "exgrpo"
STATE_VERSION = 3
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
    settings: dict[str, Any] = field(default_factory=dict)  # run_settings() of the run that saved it
    run_id: str = ""  # the run that saved it (kept in manifest.json)


@dataclass(frozen=True)
class ResumeRule:
    """What a resume does with a setting matching `pattern` (fnmatch) whose value differs from
    the checkpoint's: accept it (`allowed`, said in one line) or refuse the resume; `why` says why."""

    pattern: str
    allowed: bool
    why: str


# The first matching row rules; a setting no row matches is refused (UNRULED). A new setting
# that may change on resume needs a row here.
RESUME_RULES = (
    ResumeRule("actor_rollout_ref.rollout.n", False, "the buffer's buckets and stored groups are counts out of K"),
    ResumeRule("exgrpo.strategy", False, "the strategy decides what the buffer holds (successes, failures, a frozen set)"),
    ResumeRule("exgrpo.strategy_settings.*", False, "they decide which stored rows join which groups"),
    ResumeRule("exgrpo.replay_ratio", True, "the share of experience questions in later steps; 0 pauses replay"),
    ResumeRule("exgrpo.start_solve_rate", True, "it only decides when replay starts"),
    ResumeRule("exgrpo.collect_during_warmup", True, "it decides what later steps store"),
    ResumeRule("exgrpo.store_from_switch_step", True, "it decides what later steps store"),
    ResumeRule("exgrpo.sampler_poll_interval_s", True, "how often later steps poll for rollouts"),
    ResumeRule("exgrpo.max_grad_norm", True, "it applies to later updates"),
    ResumeRule("exgrpo.experience_log*", True, "it applies to the steps after the resume"),
    ResumeRule("exgrpo.loss.*", True, "the loss applies to later updates"),
    ResumeRule("exgrpo.reward.*", True, "the reward guard keeps no state between steps"),
    ResumeRule("exgrpo.experience.bucket_mu", True, "the bucket weights apply to later draws"),
    ResumeRule("exgrpo.experience.bucket_sigma", True, "the bucket weights apply to later draws"),
    ResumeRule("exgrpo.experience.question_sampling", True, "it applies to later draws"),
    ResumeRule("exgrpo.experience.selection_metric", True, "it applies to later replays"),
    ResumeRule("exgrpo.experience.max_*", True, "caps apply from the next update (a lower one evicts then)"),
    ResumeRule("exgrpo.experience.zero_accuracy_policy", True, "it applies to later results"),
    ResumeRule("exgrpo.experience.seed", True, "no effect: the buffer's random state is restored from the checkpoint"),
)
UNRULED = ResumeRule("*", False, "no resume rule allows changing it (exgrpo_verl.verl_adapters.checkpoint.RESUME_RULES)")


def run_settings(settings: ExGRPOConfig, group_size: int) -> dict[str, Any]:
    """The settings a resume compares, by config key, as JSON gives them back: every `exgrpo.`
    value with its default filled in, and K (`actor_rollout_ref.rollout.n`)."""
    values = dataclasses.asdict(settings) | {"experience": settings.experience_config(group_size).to_dict()}
    del values["experience"]["group_size"]  # it is K
    flat = {"actor_rollout_ref.rollout.n": group_size, **_flattened("exgrpo", values)}
    return json.loads(json.dumps(flat, default=str))


def _flattened(prefix: str, node: dict) -> dict[str, Any]:
    """{"a": {"b": 1}} under prefix "p" -> {"p.a.b": 1}."""
    flat = {}
    for key, value in node.items():
        flat |= _flattened(f"{prefix}.{key}", value) if isinstance(value, dict) else {f"{prefix}.{key}": value}
    return flat


def setting_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(accepted, refused): one line per setting whose value differs between the checkpoint
    (`saved`) and this run (`current`), sorted into the two by the first RESUME_RULES row whose
    pattern matches its key."""
    accepted, refused = [], []
    for key in sorted(set(saved) | set(current)):
        before, after = saved.get(key, "(not set)"), current.get(key, "(not set)")
        if before != after:
            rule = next((r for r in RESUME_RULES if fnmatch.fnmatchcase(key, r.pattern)), UNRULED)
            (accepted if rule.allowed else refused).append(f"{key} {before!r} -> {after!r} ({rule.why})")
    return accepted, refused


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
    fields = {key: value for key, value in asdict(state).items() if key != "run_id"}
    _write_atomically(folder / "trainer_state.json", json.dumps({"version": STATE_VERSION, **fields}).encode())
    _write_atomically(folder / "data_fingerprint.npz", _npz_bytes(ids=fingerprint.ids, digests=fingerprint.digests))
    manifest = {"version": STATE_VERSION, "run_id": state.run_id,
                "files": {name: _entry(folder / name) for name in STATE_FILES}}
    _write_atomically(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return folder


def load_state(folder: str | os.PathLike, experience_config: ExperienceConfig, fingerprint: DataFingerprint,
               settings: dict[str, Any]) -> tuple[ExperienceBuffer, TrainerState, list[str]]:
    """Read what `save_state` wrote, for a run with `settings` (run_settings): (buffer, state,
    the accepted setting changes, one line each). Every problem, and a setting change
    RESUME_RULES refuse, raises CheckpointError naming the file (or setting) and the fix."""
    folder = Path(folder) / STATE_DIR
    remove_leftovers(folder)
    run_id = _verify_manifest(folder)
    state_file = folder / "trainer_state.json"
    raw = json.loads(state_file.read_text())
    try:
        state = TrainerState(
            replay_started=bool(raw["replay_started"]),
            fresh_carry=[int(p) for p in raw["fresh_carry"]],
            settings=dict(raw["settings"]),
            run_id=run_id,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{state_file}: malformed field ({error}); the checkpoint is corrupt: {START_ANEW}") from error
    accepted, refused = setting_changes(state.settings, settings)
    if refused:
        raise CheckpointError(
            f"{folder}: this run changes settings a resume must keep: {'; '.join(refused)}. Resume with the values the "
            "checkpoint was saved with, or start anew (trainer.resume_mode=disable, or a new trainer.default_local_dir)"
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
    return buffer, state, accepted


def resumed_run_id(folder: str | os.PathLike, checkpoint_root: str | os.PathLike, state: TrainerState) -> str:
    """The run a resume from `folder` continues: the one that saved it when it lies in this run's
    `trainer.default_local_dir` (the same run going on), else a new one (a new run started from
    another run's checkpoint, whose experience log it must not replay)."""
    return state.run_id if Path(folder).resolve().parent == Path(checkpoint_root).resolve() else new_run_id()


def _verify_manifest(folder: Path) -> str:
    """Check every state file against the manifest; returns the run id it records."""
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
    if not isinstance(manifest.get("run_id"), str):
        raise CheckpointError(f"{manifest_file}: no run id; the checkpoint is corrupt: {START_ANEW}")
    return manifest["run_id"]


def state_digest(folder: str | os.PathLike) -> str | None:
    """SHA-256 of a checkpoint's state manifest: it names every state file by SHA-256, so equal
    digests mean equal state (None when the folder has no ExGRPO state)."""
    manifest = Path(folder) / STATE_DIR / MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def _entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def check_verl_files(folder: str | os.PathLike) -> None:
    """Refuse a checkpoint with a pickled file holding anything but tensors and plain values,
    before verl unpickles it: every `*.pt` under `folder` (verl's data-loader state `data.pt`
    and each rank's `{model,optim,extra_state}_world_size_W_rank_R.pt`).

    Each is read as verl reads it, but with torch's `weights_only` unpickler (a fixed list of
    tensor, container and plain-value types, plus FSDP2's DTensor and the numpy arrays of verl's
    RNG state) and its tensors memory-mapped, not read: the cost is the pickle stream, not the
    shard's size."""
    import torch
    import torch.distributed.tensor  # noqa: F401  (registers DTensor and its mesh with the weights_only unpickler)

    mesh_log = logging.getLogger("torch.distributed.device_mesh")
    level = mesh_log.level
    mesh_log.setLevel(logging.ERROR)  # "unpickling of the DeviceMesh before the PGs were created": expected here
    try:
        for path in sorted(Path(folder).rglob("*.pt")):
            try:
                with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
                    torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # weights_only's refusal (an UnpicklingError) or a damaged file
                restart = "delete it to restart the data order, or " if path.name == "data.pt" else ""
                raise CheckpointError(
                    f"{path}: holds something other than tensors and plain values (or is damaged), so it is not "
                    f"loaded: verl unpickles it, which could run code ({_refusal(error)}); "
                    f"{restart}{START_ANEW}"
                ) from None
    finally:
        mesh_log.setLevel(level)


def _refusal(error: Exception) -> str:
    """What torch's weights_only unpickler refused (its message opens with advice on loading the
    file unsafely), or the error's first line."""
    text = str(error)
    _, found, reason = text.partition("WeightsUnpickler error:")
    line = next((line for line in reason.splitlines() if line.strip()), "") if found else text.splitlines()[0]
    return line.split(" Please use", 1)[0].strip()[:200]


def _numpy_array_globals() -> list:
    """What a pickled numpy array of plain values (verl's numpy RNG state) names: the array,
    its dtype and dtype class, and the rebuild function under numpy 2's and numpy 1's path."""
    reconstruct = np._core.multiarray._reconstruct
    dtype_classes = {type(np.dtype(code)) for code in "?bhilqBHILQefdFD"}
    return [np.ndarray, np.dtype, *dtype_classes, reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct")]


_NUMPY_ARRAY_GLOBALS = _numpy_array_globals()


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
