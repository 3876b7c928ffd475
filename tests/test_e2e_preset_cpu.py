"""The recipes' default route, `+preset=release`, through verl's real trainer on the CPU: the
release's loss aggregation, token-budget micro-batches and the grad-norm skip all pass through
verl's own worker (its metric gathering included), with replay running.

The first version of the skip reported its metric as a bare float, which verl's worker cannot
flatten: every preset run, GPU recipes included, failed its first update with "TypeError: 'float'
object is not iterable". Every update is skipped here (threshold 1e-9), so the weights must come
out exactly as they went in, while the norm verl logs is far above the threshold."""

import torch
from safetensors.torch import load_file

from exgrpo_verl.cpu_runtime.launch import cpu_run_overrides, read_metrics, run_training
from exgrpo_verl.tasks import char_hunt

STEPS = 3


def test_the_release_preset_trains_replays_and_skips_through_verls_worker(tiny_qwen2, char_hunt_files, tmp_path):
    train, val = char_hunt_files
    overrides = cpu_run_overrides(
        str(tiny_qwen2), str(train), str(val), batch_size=8, rollouts_per_question=4, total_steps=STEPS,
        output_dir=str(tmp_path), max_response_length=32, reward_path=char_hunt.__file__,
    ) + [
        "+preset=release",
        "exgrpo.start_solve_rate=0.0",  # replay from step 2 on
        "exgrpo.max_grad_norm=1e-9",  # every optimiser step skipped
        "exgrpo.sampler_poll_interval_s=0.05",
        "actor_rollout_ref.actor.optim.lr=1e-2",
        f"trainer.save_freq={STEPS}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
    ]
    log = tmp_path / "train.log"
    result = run_training(overrides, str(log), str(tmp_path / "metrics.jsonl"))
    assert result.returncode == 0, log.read_text()[-5000:]

    steps = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [row["step"] for row in steps] == list(range(1, STEPS + 1))
    assert all(row["exgrpo/update_skipped"] == 1.0 and row["actor/grad_norm"] > 1e-9 for row in steps)
    assert any(row.get("exgrpo/replayed_questions", 0) > 0 for row in steps)

    trained = load_file(tmp_path / "checkpoints" / f"global_step_{STEPS}" / "actor" / "huggingface" / "model.safetensors")
    initial = load_file(tiny_qwen2 / "model.safetensors")
    assert all(torch.equal(trained[name].float(), initial[name].float()) for name in initial)
