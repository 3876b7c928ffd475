"""One training launch of the observed ExGRPO trainer (observed_trainer.py) on the CPU, for the
end-to-end tests: returns the per-step metrics and the hooks' observations."""

import json
import os
from pathlib import Path

from exgrpo_verl.cpu_runtime.launch import cpu_run_overrides, read_metrics, run_training
from exgrpo_verl.tasks import char_hunt

SUPPORT = Path(__file__).parent


def train_observed(model, train, val, out: Path, total_steps: int, resume: bool, *, batch: int, rollouts: int,
                   extra: tuple = ()):
    overrides = cpu_run_overrides(
        str(model), str(train), str(val), batch_size=batch, rollouts_per_question=rollouts, max_response_length=32,
        total_steps=total_steps, output_dir=str(out), reward_path=char_hunt.__file__,
    ) + [
        "trainer.v1.trainer_mode=exgrpo_observed",
        "exgrpo.sampler_poll_interval_s=0.05",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        *extra,
    ]
    if resume:
        overrides = [o for o in overrides if not o.startswith("trainer.resume_mode=")] + ["trainer.resume_mode=auto"]
    observe = out / "observations.jsonl"
    metrics = out / f"metrics_{total_steps}.jsonl"
    log = out / f"train_{total_steps}.log"
    # This folder first, then the caller's path, so the trainer runs the exgrpo_verl under test.
    python_path = os.pathsep.join(filter(None, [str(SUPPORT), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": python_path, "VERL_USE_EXTERNAL_MODULES": "observed_trainer", "EXGRPO_OBSERVE_PATH": str(observe)}
    result = run_training(overrides, str(log), str(metrics), extra_env=env)
    assert result.returncode == 0, log.read_text()[-6000:]
    # Replayed rows must fit TransferQueue's fields exactly (one dtype per field, jagged packing).
    assert "dtype mismatch" not in log.read_text() and "Falling back to strided layout" not in log.read_text()
    observations = [json.loads(line) for line in observe.read_text().splitlines()] if observe.exists() else []
    return read_metrics(str(metrics)), observations
