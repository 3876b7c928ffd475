"""What it costs to trust a checkpoint's pickled files before verl unpickles them, two ways:

    python scripts/bench_resume_check.py --gigabytes 2

writes a verl-shaped `global_step_1/` (model and optimizer shards of fp32 tensors sized like a
7B model's layers, extra state, data.pt; about --gigabytes in all) and times, on the same files:

- the check the trainer runs (`checkpoint.check_verl_files`: torch's weights_only unpickler,
  tensors memory-mapped, not read);
- a SHA-256 digest of every file (what a digest manifest checked at resume would cost),
  with the files in the page cache and evicted from it (posix_fadvise DONTNEED, per file);
- a weights_only load that reads every tensor (a "safe load" without mmap).

The byte-bound two are extrapolated to a 7B actor checkpoint by size (7.62e9 parameters: fp32
model shards, 4 bytes a parameter, and Adam's two fp32 moments, 8 bytes a parameter: 91 GB).
The check's cost follows the number of tensors, not their bytes, so it is also timed on a
checkpoint with a 7B model's tensor count (Qwen2.5-7B: 339 parameters; with Adam's step and
two moments for each) as FSDP2 DTensor shards of --ranks ranks, each tensor tiny.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from exgrpo_verl.verl_adapters import checkpoint

SEVEN_B_BYTES = 7.62e9 * 12  # fp32 model + Adam's exp_avg and exp_avg_sq
LAYER_SHAPES = [(3584, 3584), (512, 3584), (512, 3584), (3584, 3584), (18944, 3584), (18944, 3584), (3584, 18944)]


def write_checkpoint(folder: Path, gigabytes: float) -> int:
    """A verl-shaped checkpoint of about `gigabytes`: 1/3 model shard, 2/3 optimizer shard."""
    actor = folder / "actor"
    actor.mkdir(parents=True)
    model, state, size, index = {}, {}, 0, 0
    while size < gigabytes * 1e9 / 3:
        shape = LAYER_SHAPES[index % len(LAYER_SHAPES)]
        weight = torch.randn(shape)
        model[f"model.layers.{index // len(LAYER_SHAPES)}.w{index % len(LAYER_SHAPES)}"] = weight
        state[index] = {"step": torch.tensor(10.0), "exp_avg": torch.randn(shape), "exp_avg_sq": torch.rand(shape)}
        size += weight.numel() * 4
        index += 1
    torch.save(model, actor / "model_world_size_1_rank_0.pt")
    del model
    torch.save({"state": state, "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.999), "params": list(state)}]},
               actor / "optim_world_size_1_rank_0.pt")
    del state
    torch.save({"lr_scheduler": {"last_epoch": 10}, "rng": {"cpu": torch.get_rng_state()}},
               actor / "extra_state_world_size_1_rank_0.pt")
    torch.save({"_sampler_iter_yielded": 3}, folder / "data.pt")
    return sum(path.stat().st_size for path in folder.rglob("*.pt"))


def write_7b_shaped(folder: Path, ranks: int, parameters: int = 339) -> None:
    """Every rank's model, optimizer and extra-state shard of a 7B-sized FSDP2 actor, as DTensors
    of one element each: the pickle streams of the real thing, without its bytes."""
    import numpy as np
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    folder.mkdir(parents=True)
    dist.init_process_group("gloo", init_method=f"file://{folder.parent / 'pg'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        (folder / "actor").mkdir()

        def shard():
            return distribute_tensor(torch.zeros(1), mesh, [Shard(0)])

        model = {f"model.layers.{i // 12}.p{i % 12}": shard() for i in range(parameters)}
        optim = {"state": {i: {"step": torch.tensor(10.0), "exp_avg": shard(), "exp_avg_sq": shard()}
                           for i in range(parameters)},
                 "param_groups": [{"lr": 1e-6, "betas": (0.9, 0.999), "params": list(range(parameters))}]}
        extra = {"lr_scheduler": {"last_epoch": 10}, "rng": {"cpu": torch.get_rng_state(), "numpy": np.random.get_state()}}
        for rank in range(ranks):
            for name, value in (("model", model), ("optim", optim), ("extra_state", extra)):
                torch.save(value, folder / "actor" / f"{name}_world_size_{ranks}_rank_{rank}.pt")
        torch.save({"_sampler_iter_yielded": 3}, folder / "data.pt")
    finally:
        dist.destroy_process_group()


def evict(folder: Path) -> None:
    for path in folder.rglob("*.pt"):
        with open(path, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def digest_all(folder: Path) -> None:
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    for path in sorted(folder.rglob("*.pt")):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while size := f.readinto(buffer):
                digest.update(view[:size])


def safe_load_all(folder: Path) -> None:
    import torch.distributed.tensor  # noqa: F401

    for path in sorted(folder.rglob("*.pt")):
        torch.load(path, map_location="cpu", weights_only=True)


def timed(function, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    function(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="the best of this many runs of each")
    parser.add_argument("--ranks", type=int, default=8, help="ranks of the 7B-shaped checkpoint")
    parser.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temporary folder)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench_resume_check_"))
    try:
        folder = root / "global_step_1"
        total = write_checkpoint(folder, args.gigabytes)
        checkpoint.check_verl_files(root)  # imports torch.distributed.tensor, as a trainer already has
        runs = {
            "check_verl_files (weights_only, mmap)": lambda: timed(checkpoint.check_verl_files, folder),
            "SHA-256 of every file, in page cache": lambda: timed(digest_all, folder),
            "SHA-256 of every file, evicted first": lambda: (evict(folder), timed(digest_all, folder))[1],
            "weights_only load reading every tensor": lambda: timed(safe_load_all, folder),
        }
        print(f"checkpoint: {total / 1e9:.2f} GB in {len(list(folder.rglob('*.pt')))} files\n")
        print("| method | wall s (best) | CPU s | MB/s | 7B checkpoint (91 GB), extrapolated |")
        print("|---|---|---|---|---|")
        for name, run in runs.items():
            wall, cpu = min(run() for _ in range(args.repeats))
            rate = total / wall / 1e6
            at_scale = "(by tensor count: below)" if "mmap" in name else f"{SEVEN_B_BYTES / total * wall:.0f} s"
            print(f"| {name} | {wall:.3f} | {cpu:.3f} | {rate:.0f} | {at_scale} |")
        shaped = root / "shaped" / "global_step_1"
        write_7b_shaped(shaped, args.ranks)
        wall, cpu = min(timed(checkpoint.check_verl_files, shaped) for _ in range(args.repeats))
        print(f"| check_verl_files on a 7B actor's tensors ({args.ranks} ranks x 339 parameters, DTensor) | {wall:.3f} "
              f"| {cpu:.3f} | - | {wall:.3f} s |")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
