"""wandb as users run it: a short ExGRPO training on the CPU with trainer.logger=[console,wandb]
and WANDB_MODE=offline, then the offline run read back from its transaction log: the run's
project and name, and the exgrpo/ metrics of every step.

The log (`offline-run-*/run-*.wandb`) is what `wandb sync` uploads: a LevelDB-style record log
of wandb's protobuf `Record`s, read here with wandb's own protobuf classes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from exgrpo_verl.cpu_runtime.launch import cpu_run_overrides, run_training
from exgrpo_verl.tasks import char_hunt

pytestmark = pytest.mark.slow  # a trainer launch with wandb offline: `make test-slow`

STEPS = 4
# wandb's transaction log: a 7-byte file header (":W&B", magic, version), then 32 KiB blocks of
# records, each with a 7-byte header (crc32, length, type); a record may span blocks.
FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_wandb_records(path: Path):
    """Every protobuf Record in an offline run's .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, _magic, _version = FILE_HEADER.unpack_from(data, 0)
    assert ident == b":W&B", f"{path} is not a wandb transaction log"
    offset, pending = FILE_HEADER.size, b""
    while offset + RECORD_HEADER.size <= len(data):
        if BLOCK - offset % BLOCK < RECORD_HEADER.size:  # too little room left: the block is padded
            offset += BLOCK - offset % BLOCK
            continue
        _crc, length, kind = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size
        chunk, offset = data[offset : offset + length], offset + length
        if kind not in (FULL, FIRST, MIDDLE, LAST):  # zeros: past what was written
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def test_offline_wandb_run_holds_the_exgrpo_metrics(tiny_qwen2, char_hunt_files, tmp_path):
    import json

    train, val = char_hunt_files
    overrides = cpu_run_overrides(
        str(tiny_qwen2), str(train), str(val), batch_size=8, rollouts_per_question=4, max_response_length=32,
        total_steps=STEPS, output_dir=str(tmp_path), reward_path=char_hunt.__file__,
    ) + [
        "trainer.logger=[console,wandb]",
        "trainer.project_name=exgrpo-test",
        "trainer.experiment_name=wandb-offline",
        "exgrpo.start_solve_rate=0.0",  # replay from step 2, so the replay metrics appear too
        "exgrpo.sampler_poll_interval_s=0.05",
        "trainer.save_freq=-1",
    ]
    log = tmp_path / "train.log"
    result = run_training(overrides, str(log), extra_env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)})
    assert result.returncode == 0, log.read_text()[-6000:]

    [run_file] = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(read_wandb_records(run_file))
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("exgrpo-test", "wandb-offline")

    history = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            # wandb keeps a key in `nested_key` (split or whole) or in `key`; the step in its own field.
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history[row.get("_step", record.history.step.num)] = row
    assert sorted(history) == list(range(1, STEPS + 1))
    for step, row in history.items():
        for key in ("exgrpo/replay_active", "exgrpo/solve_rate", "exgrpo/buffer/pool_size"):
            assert key in row, (step, key)
    assert history[STEPS]["exgrpo/replay_active"] == 1.0
    replayed = [row for row in history.values() if row.get("exgrpo/replayed_questions", 0) > 0]
    assert replayed, "no step replayed experience"
    assert all(0 < row["exgrpo/replay_shaped_weight_mean"] < 1 for row in replayed)
