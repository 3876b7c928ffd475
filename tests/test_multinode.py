"""Several nodes on Ray: a two-node cluster on this machine (ray.cluster_utils.Cluster, one CPU
"GPU" per node), ExGRPO through verl's real trainer with trainer.nnodes=2 joining it as the
recipes do (address=auto), FSDP ranks on both nodes, and a checkpoint that both ranks wrote.

The nodes are two raylets on one host, so "shared storage" is this machine's disk and the ranks
talk over loopback (gloo, not NCCL); what the test proves is verl's placement across nodes, the
per-rank batch sizing, and our components on every node's workers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytest

from exgrpo_verl.cpu_runtime.launch import cpu_env, cpu_run_overrides, read_metrics, run_training
from exgrpo_verl.tasks import char_hunt

NNODES, GPUS_PER_NODE = 2, 1
BATCH, K = 4, 4
# verl splits the B x K rows of a step over every rank (B x K / (nodes x GPUs per node) each) and
# cuts each rank's share into micro-batches of the *_per_gpu size: a size meant for one rank
# (B x K, what cpu_run_overrides sets) does not divide a share.
MICRO_BATCH_PER_GPU = BATCH * K // (NNODES * GPUS_PER_NODE)
# A single-node CPU run starts its own Ray with a fake GPU; joining a cluster must not pass
# resources (Ray refuses num_cpus / num_gpus when connecting), and the cluster size is ours.
SINGLE_NODE_ONLY = (
    "+ray_kwargs.ray_init.num_gpus", "ray_kwargs.ray_init.num_cpus", "trainer.nnodes", "trainer.n_gpus_per_node",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
)


@pytest.fixture(scope="module")
def two_node_cluster():
    """Two raylets on this machine, torn down with everything that points at them.

    Ray's Cluster writes its address to <temp dir>/ray/ray_current_cluster, where any plain
    `ray.init()` on this machine (a later test, another run) would find it and join instead of
    starting its own Ray ("When connecting to an existing cluster, num_cpus and num_gpus must
    not be provided"). The cluster therefore lives under a private RAY_TMPDIR for its whole
    life, the trainer is pointed at it by RAY_ADDRESS in its own environment only, and the
    teardown restores this process's environment."""
    import ray
    from ray.cluster_utils import Cluster

    saved = {name: os.environ.get(name) for name in ("RAY_ADDRESS", "RAY_TMPDIR")}
    private_tmp = tempfile.mkdtemp(prefix="ray2n_", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    os.environ["RAY_TMPDIR"] = private_tmp
    os.environ.pop("RAY_ADDRESS", None)
    cluster = None
    # Ray workers inherit the environment of the node that starts them (docs/recipes.md: export
    # before `ray start`); here the nodes are children of this process.
    before_nodes = dict(os.environ)
    try:
        os.environ.update(cpu_env())
        # The raylet's wait for the runtime-env agent (env-configurable, unlike the port-file wait).
        os.environ["RAY_agent_register_timeout_ms"] = "600000"
        node_args = {"num_cpus": 16, "num_gpus": GPUS_PER_NODE, "object_store_memory": 300 * 1024**2,
                     "include_dashboard": False}  # no state API needed: the GCS tables are read directly
        cluster = Cluster()
        with _nodes_that_start_on_a_busy_machine() as own_ports:
            cluster.add_node(**node_args, **own_ports())  # the head
            cluster.add_node(**node_args, **own_ports())
        cluster.wait_for_nodes(timeout=300)
        os.environ.clear()
        os.environ.update(before_nodes)
        yield cluster
    finally:
        os.environ.clear()
        os.environ.update(before_nodes)
        ray.shutdown()  # in case anything in this process joined the cluster
        if cluster is not None:
            cluster.shutdown()  # also removes the address file (read from RAY_TMPDIR, still private here)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(private_tmp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def _nodes_that_start_on_a_busy_machine():
    """Ray 2.60's raylet waits a fixed 15 s for its dashboard agent to write the agent's port
    files, and the driver a fixed 30 s for the raylet to register; an agent that imports
    slowly (a loaded machine: this one shares its 2 cores with other Ray runs) makes the raylet
    abort ("Timed out waiting for file .../dashboard_agent_listen_port_...") and the node fail
    ("The current node timed out during startup"). The raylet skips the wait for every port it
    is given: Ray passes the metrics and runtime-env ports on, not the agent's HTTP port, so that
    one is added from the agent's own command line; and the registration wait is made longer.
    Each node also gets ports of its own (52365, Ray's fixed agent port, is taken by any other
    Ray on this machine)."""
    import ray._private.services as services

    start_process, get_node = services.start_ray_process, services.get_node

    def start_ray_process(command, *args, **kwargs):
        if command and os.path.basename(command[0]) == "raylet":
            agent = next(arg for arg in command if arg.startswith("--dashboard_agent_command="))
            port = re.search(r"--listen-port=(\d+)", agent).group(1)
            command = [*command, f"--dashboard_agent_listen_port={port}"]
        return start_process(command, *args, **kwargs)

    def patient_get_node(*args, **kwargs):
        deadline = time.monotonic() + 300
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    with mock.patch.object(services, "start_ray_process", start_ray_process), mock.patch.object(services, "get_node", patient_get_node):
        yield lambda: {name: _free_port() for name in ("metrics_agent_port", "metrics_export_port", "runtime_env_agent_port", "dashboard_agent_listen_port")}


def _train(cluster, model, train, val, out: Path, total_steps: int):
    metrics, log = out / f"metrics_{total_steps}.jsonl", out / f"train_{total_steps}.log"
    overrides = [
        o for o in cpu_run_overrides(
            str(model), str(train), str(val), batch_size=BATCH, rollouts_per_question=K, max_response_length=32,
            total_steps=total_steps, output_dir=str(out), reward_path=char_hunt.__file__,
        )
        if not o.startswith(SINGLE_NODE_ONLY)
    ] + [
        f"trainer.nnodes={NNODES}",
        f"trainer.n_gpus_per_node={GPUS_PER_NODE}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={MICRO_BATCH_PER_GPU}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={MICRO_BATCH_PER_GPU}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={MICRO_BATCH_PER_GPU}",
        "++ray_kwargs.ray_init.address=auto",  # what the recipes add for NNODES > 1
        "exgrpo.start_solve_rate=0.0",  # replay from step 2: both kinds of rows cross the nodes
        "exgrpo.sampler_poll_interval_s=0.05",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        "trainer.save_freq=2",
        # The driver's TaskRunner is a Ray actor started by a node of this cluster: it has the
        # node's environment, not the launcher's (docs/recipes.md), so the file logger's path
        # travels in the job's runtime_env, as a recipe passes WANDB_API_KEY and the like.
        f"++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={metrics}",
    ]
    # RAY_ADDRESS names this cluster (Ray's rule: it wins over address=auto's search); it is set
    # in the trainer's environment only, never in this process's.
    result = run_training(overrides, str(log), str(metrics), extra_env={"RAY_ADDRESS": cluster.address}, timeout_s=2400)
    assert result.returncode == 0, log.read_text()[-6000:]
    return read_metrics(str(metrics)), log.read_text()


def _nodes_of_actors(cluster) -> dict[str, set[str]]:
    """Actor class -> the node ids its instances ran on, dead ones included (the GCS keeps them).
    The GCS names a class by its __qualname__ (verl's WorkerDict is made inside a function:
    "create_colocated_worker_cls.<locals>.WorkerDict"); the last part is kept."""
    placed: dict[str, set[str]] = {}
    for actor in cluster.global_state.actor_table(None).values():
        placed.setdefault(actor["ActorClassName"].rsplit(".", 1)[-1], set()).add(actor["Address"]["NodeID"])
    return placed


@pytest.mark.slow  # a second raylet and a trainer launch: `make test-slow`
def test_two_nodes_train_exgrpo(two_node_cluster, tiny_qwen2, char_hunt_files, tmp_path):
    cluster = two_node_cluster
    train, val = char_hunt_files
    node_ids = {node.node_id for node in cluster.list_all_nodes()}
    alive = {node["NodeID"] for node in cluster.global_state.node_table() if node["Alive"]}
    assert len(node_ids) == 2 and alive == node_ids

    steps, _ = _train(cluster, tiny_qwen2, train, val, tmp_path, total_steps=2)
    assert [row["step"] for row in steps] == [1, 2]
    # verl's workers (WorkerDict: the FSDP actor and its rollout, one per GPU) ran on both nodes.
    placed = _nodes_of_actors(cluster)
    assert placed.get("WorkerDict") == node_ids, placed
    # ExGRPO ran on the driver over both ranks' rows: its phase switch and its buffer's metrics.
    assert steps[-1]["exgrpo/replay_active"] == 1.0
    for key in ("exgrpo/buffer/pool_size", "exgrpo/buffer/retired", "exgrpo/buffer/collected_total"):
        assert key in steps[-1], (key, sorted(steps[-1]))
    assert all("actor/pg_loss" in row for row in steps)

    # Both FSDP ranks wrote their shard; the driver wrote the ExGRPO state beside them.
    checkpoint = tmp_path / "checkpoints" / "global_step_2"
    shards = sorted(p.name for p in (checkpoint / "actor").glob("model_world_size_2_rank_*.pt"))
    assert shards == ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"]
    saved_state = json.loads((checkpoint / "exgrpo" / "trainer_state.json").read_text())
    assert saved_state["replay_started"]
