"""Several nodes on Ray: a two-node cluster on this machine (ray.cluster_utils.Cluster, one CPU
"GPU" per node), ExGRPO through verl's real trainer with trainer.nnodes=2 joining it as the
recipes do (address=auto), FSDP ranks on both nodes, and a resume from the checkpoint both
ranks wrote.

The nodes are two raylets on one host, so "shared storage" is this machine's disk; what the test
proves is verl's placement across nodes and our components on every node's workers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exgrpo_verl.cpu_runtime.launch import cpu_env, cpu_run_overrides, read_metrics, run_training
from exgrpo_verl.tasks import char_hunt

BATCH, K = 4, 4
# A single-node CPU run starts its own Ray with a fake GPU; joining a cluster must not pass
# resources (Ray refuses num_cpus / num_gpus when connecting), and the cluster size is ours.
SINGLE_NODE_ONLY = ("+ray_kwargs.ray_init.num_gpus", "ray_kwargs.ray_init.num_cpus", "trainer.nnodes", "trainer.n_gpus_per_node")


@pytest.fixture(scope="module")
def two_node_cluster():
    from ray.cluster_utils import Cluster

    # Ray workers inherit the environment of the node that starts them (docs/recipes.md: export
    # before `ray start`); here the nodes are children of this process.
    saved = dict(os.environ)
    os.environ.update(cpu_env())
    try:
        node_args = {"num_cpus": 16, "num_gpus": 1, "object_store_memory": 300 * 1024**2, "include_dashboard": False}  # no state API needed
        cluster = Cluster(initialize_head=True, head_node_args=node_args)
        cluster.add_node(**node_args)
        cluster.wait_for_nodes(timeout=300)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield cluster
    cluster.shutdown()


def _train(cluster, model, train, val, out: Path, total_steps: int, resume: bool):
    overrides = [
        o for o in cpu_run_overrides(
            str(model), str(train), str(val), batch_size=BATCH, rollouts_per_question=K, max_response_length=32,
            total_steps=total_steps, output_dir=str(out), reward_path=char_hunt.__file__,
        )
        if not o.startswith(SINGLE_NODE_ONLY)
    ] + [
        "trainer.nnodes=2",
        "trainer.n_gpus_per_node=1",
        "++ray_kwargs.ray_init.address=auto",  # what the recipes add for NNODES > 1
        "exgrpo.start_solve_rate=0.0",  # replay from step 2: both kinds of rows cross the nodes
        "exgrpo.sampler_poll_interval_s=0.05",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "trainer.save_freq=2",
    ]
    if resume:
        overrides = [o for o in overrides if not o.startswith("trainer.resume_mode=")] + ["trainer.resume_mode=auto"]
    metrics, log = out / f"metrics_{total_steps}.jsonl", out / f"train_{total_steps}.log"
    # RAY_ADDRESS names this cluster (Ray's rule: it wins over address=auto's search).
    result = run_training(overrides, str(log), str(metrics), extra_env={"RAY_ADDRESS": cluster.address}, timeout_s=2400)
    assert result.returncode == 0, log.read_text()[-6000:]
    return read_metrics(str(metrics)), log.read_text()


def _nodes_of_actors(cluster) -> dict[str, set[str]]:
    """Actor class -> the node ids its instances ran on, dead ones included (the GCS keeps them)."""
    placed: dict[str, set[str]] = {}
    for actor in cluster.global_state.actor_table(None).values():
        placed.setdefault(actor["ActorClassName"], set()).add(actor["Address"]["NodeID"])
    return placed


def test_two_nodes_train_exgrpo_and_resume(two_node_cluster, tiny_qwen2, char_hunt_files, tmp_path):
    cluster = two_node_cluster
    train, val = char_hunt_files
    node_ids = {node.node_id for node in cluster.list_all_nodes()}
    assert len(node_ids) == 2

    steps, log = _train(cluster, tiny_qwen2, train, val, tmp_path, total_steps=2, resume=False)
    assert [row["step"] for row in steps] == [1, 2]
    assert steps[-1]["exgrpo/replay_active"] == 1.0
    # verl's workers (WorkerDict: the FSDP actor and its rollout, one per GPU) ran on both nodes.
    placed = _nodes_of_actors(cluster)
    assert placed.get("WorkerDict") == node_ids, placed

    # Both FSDP ranks wrote their shard; the driver wrote the ExGRPO state beside them.
    checkpoint = tmp_path / "checkpoints" / "global_step_2"
    shards = sorted(p.name for p in (checkpoint / "actor").glob("model_world_size_2_rank_*.pt"))
    assert shards == ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"]
    saved_state = json.loads((checkpoint / "exgrpo" / "trainer_state.json").read_text())

    more, log = _train(cluster, tiny_qwen2, train, val, tmp_path, total_steps=3, resume=True)
    assert [row["step"] for row in more] == [3], "the resumed run must start after the checkpoint"
    assert saved_state["replay_started"] and more[0]["exgrpo/replay_active"] == 1.0
    assert (tmp_path / "checkpoints" / "global_step_3" / "exgrpo" / "trainer_state.json").is_file()
