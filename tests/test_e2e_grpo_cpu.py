"""verl's real `main_ppo` (V1 trainer, FSDP2 actor, Ray, TransferQueue) running plain GRPO on
the CPU through our runtime: steps complete, the actor learns, the rollout follows it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from exgrpo_verl.cpu_runtime.launch import cpu_run_overrides, read_metrics, run_training
from exgrpo_verl.tasks import char_hunt

STEPS = 3
# |p_rollout - p_actor| per token after each weight sync; ~1e-4 is seen (float32 CPU
# kernels differ between the HF generate loop and the FSDP forward).
PROB_TOLERANCE = 1e-3


def test_grpo_trains_on_cpu_and_rollout_tracks_actor(tiny_qwen2, char_hunt_files, tmp_path):
    train, val = char_hunt_files
    overrides = cpu_run_overrides(
        str(tiny_qwen2), str(train), str(val), batch_size=8, total_steps=STEPS, output_dir=str(tmp_path),
        max_response_length=32, reward_path=char_hunt.__file__,
    ) + [
        "algorithm.adv_estimator=grpo",
        # A large learning rate so that a rollout left on stale weights would show.
        "actor_rollout_ref.actor.optim.lr=1e-2",
        f"trainer.save_freq={STEPS}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
    ]
    log = tmp_path / "train.log"
    metrics_path = tmp_path / "metrics.jsonl"
    result = run_training(overrides, str(log), str(metrics_path), entry_module="verl.trainer.main_ppo")
    assert result.returncode == 0, log.read_text()[-5000:]

    steps = read_metrics(str(metrics_path))
    assert [row["step"] for row in steps] == list(range(1, STEPS + 1))
    for row in steps:
        assert row["training/rollout_probs_diff_max"] < PROB_TOLERANCE, row["training/rollout_probs_diff_max"]
    # A step whose groups are all solved or all failed has zero advantages and no gradient.
    assert any(row["actor/grad_norm"] > 0 for row in steps)
    assert steps[0]["rollout_corr/training_log_ppl"] != steps[-1]["rollout_corr/training_log_ppl"]

    trained = load_file(tmp_path / "checkpoints" / f"global_step_{STEPS}" / "actor" / "huggingface" / "model.safetensors")
    initial = load_file(tiny_qwen2 / "model.safetensors")
    assert set(trained) == set(initial)
    changed = [name for name in initial if not torch.allclose(trained[name].float(), initial[name].float())]
    assert "lm_head.weight" in changed and len(changed) > len(initial) // 2
    assert json.loads((tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt").read_text()) == STEPS


@pytest.mark.slow  # a Ray start to see a worker refuse; test_cpu_runtime.py checks the same refusals in-process
def test_verl_entry_point_refuses_a_config_the_cpu_cannot_run(tiny_qwen2, char_hunt_files, tmp_path):
    train, val = char_hunt_files
    overrides = cpu_run_overrides(str(tiny_qwen2), str(train), str(val), output_dir=str(tmp_path), reward_path=char_hunt.__file__)
    overrides = [o for o in overrides if not o.startswith("actor_rollout_ref.actor.strategy=")] + ["actor_rollout_ref.actor.strategy=fsdp"]
    log = tmp_path / "train.log"
    result = run_training(overrides + ["algorithm.adv_estimator=grpo"], str(log), entry_module="verl.trainer.main_ppo")
    assert result.returncode != 0
    assert "actor_rollout_ref.actor.strategy=fsdp: FSDP1 cannot start without a GPU" in log.read_text()
