#!/usr/bin/env bash
# Start this machine's Ray node for a run over several nodes (docs/recipes.md, "Several nodes").
#
#   bash recipes/tools/start_ray_node.sh head               # on the head node
#   bash recipes/tools/start_ray_node.sh worker <head-ip>   # on every other node
#   NNODES=<n> bash recipes/<model>/exgrpo.sh               # then, on the head node
#
# Ray's workers inherit this shell's environment, not the recipe's: export what the run needs
# first (HF_HOME, HF_TOKEN, WANDB_API_KEY, WANDB_MODE, ...). Every node needs the same install
# (this script prints its versions, compare them) and the same paths for data, models and
# checkpoints (shared storage: every node writes its FSDP shards there).
#
# Environment: PORT (6379), GPUS_PER_NODE (default: Ray counts the visible GPUs), PYTHON (python3).
set -euo pipefail

PORT="${PORT:-6379}"
PYTHON="${PYTHON:-python3}"

usage() {
    echo "usage: $0 head | worker <head-ip>" >&2
    exit 2
}

role="${1:-}"
[[ "$role" == head || "$role" == worker ]] || usage
[[ "$role" == head || -n "${2:-}" ]] || usage

# Ray's CLI from the same environment as the interpreter that runs the training.
ray_cli="$(dirname "$(command -v "$PYTHON")")/ray"
[[ -x "$ray_cli" ]] || { echo "start_ray_node: no ray next to $PYTHON; install exgrpo-verl there" >&2; exit 1; }
"$PYTHON" -c 'import exgrpo_verl, ray, verl; print(f"{__import__(\"socket\").gethostname()}: exgrpo-verl {exgrpo_verl.__version__}, verl {verl.__version__}, ray {ray.__version__}")'

gpus=()
if [[ -n "${GPUS_PER_NODE:-}" ]]; then gpus=(--num-gpus="$GPUS_PER_NODE"); fi
if [[ "$role" == head ]]; then
    "$ray_cli" start --head --port="$PORT" "${gpus[@]}"
else
    "$ray_cli" start --address="$2:$PORT" "${gpus[@]}"
fi
