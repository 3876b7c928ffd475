# Qwen2.5-7B-Instruct, RL from the instruct model (32k context, no extension), 1 node x 8 GPUs.
# Sourced by exgrpo.sh and grpo.sh; shared settings in ../common.sh, sources in docs/recipes.md.
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

RECIPE=qwen2.5-7b-instruct
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen2.5-7B-Instruct}"
